#!/usr/bin/env python3
# `longctx serve` against a real client: starts the server on a free loopback port with the default model, runs
# chat and completion calls through the `openai` Python package (streaming and not, usage, stop sequences, seeds,
# per-request methods), then sends bad input over raw HTTP (malformed JSON, wrong types, unknown fields, prompts
# over the context, max_tokens over the limit, unknown methods, oversized bodies, wrong HTTP methods, a request
# over the KV memory, a client that disconnects mid-stream) and checks that each gets its 4xx error object and
# that the server keeps serving; finally SIGTERM must end it with exit code 0.
#
# The `openai` package comes from a venv under $LONGCTX_CACHE (scripts/setup.sh makes it); when that is missing
# the test makes it itself (python3 -m venv + pip install openai). Usage: test-serve-openai.py --longctx PATH
import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

VENV_MARK = "LONGCTX_TEST_IN_VENV"


def cache_dir():
    return os.environ.get("LONGCTX_CACHE") or os.path.join(os.environ.get("HOME", "/root"), ".cache", "longctx")


def ensure_openai():
    try:
        import openai  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get(VENV_MARK):
        sys.exit("test-serve-openai: the venv's python cannot import openai")
    venv = os.path.join(cache_dir(), "venv-openai")
    py = os.path.join(venv, "bin", "python3")
    if not os.path.exists(py) or subprocess.run([py, "-c", "import openai"], capture_output=True).returncode != 0:
        print(f"test-serve-openai: installing the openai package into {venv}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "openai>=1.0"], check=True)
    os.environ[VENV_MARK] = "1"
    os.execv(py, [py] + sys.argv)


ensure_openai()
import openai  # noqa: E402

FAILURES = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, exe, port, extra):
        self.port = port
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"longctx-serve-{port}.log"), "w+")
        args = [exe, "serve", "--host", "127.0.0.1", "--port", str(port)] + extra
        print("starting: " + " ".join(args), flush=True)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                return False
            try:
                st, _, _ = self.raw("GET", "/health")
                if st == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def raw(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r.getheader("Content-Type", ""), data

    def tail(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]


def error_of(data):
    try:
        j = json.loads(data)
        return j.get("error") if isinstance(j, dict) else None
    except ValueError:
        return None


def expect_error(srv, status, body, what, path="/v1/completions", method="POST", param=None):
    st, ctype, data = srv.raw(method, path, body)
    err = error_of(data)
    good = st == status and err is not None and bool(err.get("message")) and "type" in err
    if param is not None and err is not None:
        good = good and err.get("param") == param
    check(good, f"{what}: HTTP {st} (want {status}), error {json.dumps(err)[:200] if err else data[:200]!r}")


def sse_events(data):
    out = []
    for block in data.decode("utf-8", "replace").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--longctx", required=True)
    ap.add_argument("--model", default="")
    a = ap.parse_args()

    port = free_port()
    # -c 1024 with 8 MiB of KV memory (SmolLM2: 23040 bytes a token, so about 364 tokens for both slots);
    # -ub 32 makes a prompt of a few hundred tokens long enough for prompt_progress events.
    extra = ["-c", "1024", "-np", "2", "-ub", "32", "-t", "2", "-n", "16", "--kv-memory", "8M", "--max-body", "64K"]
    if a.model:
        extra += ["-m", a.model]
    srv = Server(a.longctx, port, extra)
    try:
        if not srv.wait_healthy(120):
            print(srv.tail())
            sys.exit("test-serve-openai: the server did not become healthy")
        run_checks(srv)
        # Still alive after all of that.
        check(srv.proc.poll() is None, "the server is still running after the bad requests")
        st, _, _ = srv.raw("GET", "/health")
        check(st == 200, "GET /health after the bad requests")
    finally:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGTERM)
            try:
                rc = srv.proc.wait(timeout=20)
                check(rc == 0, f"SIGTERM ends the server with exit code 0 (got {rc})")
            except subprocess.TimeoutExpired:
                srv.proc.kill()
                check(False, "SIGTERM ends the server within 20 s")
        else:
            check(False, f"the server exited by itself with code {srv.proc.returncode}")
    if FAILURES:
        print("\nserver log (tail):\n" + srv.tail())
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all checks passed")


def run_checks(srv):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="none", max_retries=0, timeout=60)

    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) == 1, f"GET /v1/models lists one model: {ids}")
    model = ids[0]

    msgs = [{"role": "user", "content": "Name three colours."}]
    # Chat, not streamed.
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
    text = r.choices[0].message.content
    check(isinstance(text, str) and len(text) > 0, f"chat: reply {text!r}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"chat: finish_reason {r.choices[0].finish_reason}")
    check(r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 8, f"chat: usage {r.usage}")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "chat: total_tokens")

    # Chat, streamed: the same greedy text, the role first, usage last.
    stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    parts, roles, finish, usage = [], [], None, None
    for ch in stream:
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(parts) == text, f"chat stream: text {''.join(parts)!r} equals the unstreamed {text!r}")
    check(roles[:1] == ["assistant"], f"chat stream: role {roles}")
    check(finish == r.choices[0].finish_reason, f"chat stream: finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"chat stream: usage {usage}")

    # Completion, not streamed and streamed.
    prompt = "The capital of France is"
    c1 = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    ctext = c1.choices[0].text
    check(len(ctext) > 0 and c1.usage.completion_tokens <= 8, f"completion: {ctext!r}, usage {c1.usage}")
    sparts = []
    for ch in client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, stream=True):
        for c in ch.choices:
            sparts.append(c.text)
    check("".join(sparts) == ctext, f"completion stream: {''.join(sparts)!r} equals {ctext!r}")

    # Stop sequences: cut at the first occurrence, finish_reason stop.
    if len(ctext.strip()) >= 4:
        stop = ctext.strip()[2:4]
        c2 = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, stop=[stop])
        want = ctext[: ctext.find(stop)]
        check(c2.choices[0].text == want and c2.choices[0].finish_reason == "stop",
              f"stop {stop!r}: {c2.choices[0].text!r} (want {want!r}), {c2.choices[0].finish_reason}")
    else:
        check(False, f"completion too short for a stop-sequence check: {ctext!r}")

    # Seeds: the same seed samples the same text at temperature 1.
    s1 = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    s2 = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    check(s1.choices[0].text == s2.choices[0].text, f"seed 7 twice: {s1.choices[0].text!r}")

    # Several requests at once: -np 2 slots decode in one batched step, the rest wait in the queue, and the
    # greedy texts are those of the same requests alone.
    def metric(name):
        st, _, data = srv.raw("GET", "/metrics")
        mm = re.search(rb"^" + name.encode() + rb" (\S+)$", data, re.M)
        return float(mm.group(1)) if mm else 0.0

    tok0, steps0 = metric("longctx_decode_tokens_total"), metric("longctx_decode_steps_total")
    calls = [lambda: client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
             .choices[0].message.content,
             lambda: client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0).choices[0].text]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(calls[i % 2]) for i in range(4)]
        outs = [f.result() for f in futs]
    check(outs == [text, ctext, text, ctext], f"4 concurrent requests on 2 slots: {outs}")
    dtok, dsteps = metric("longctx_decode_tokens_total") - tok0, metric("longctx_decode_steps_total") - steps0
    check(dsteps > 0 and dtok / dsteps > 1.2, f"decode steps were batched: {dtok:.0f} tokens in {dsteps:.0f} steps")

    # A burst of 16 at once on 2 slots: every one is served, and afterwards nothing is left held (no slot, no
    # queue entry, no KV byte, no reservation).
    def one(i):
        return client.completions.create(model=model, prompt=f"{i} plus {i} is", max_tokens=3, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        burst = list(pool.map(one, range(16)))
    check(all(b.usage.completion_tokens >= 1 for b in burst), "a burst of 16 concurrent requests is served")
    gauges = {}
    for _ in range(50):
        gauges = {g: metric(g) for g in ["longctx_requests_processing", "longctx_requests_queued",
                                         "longctx_kv_bytes_in_use", "longctx_kv_bytes_reserved"]}
        if not any(gauges.values()):
            break
        time.sleep(0.1)
    check(not any(gauges.values()), f"nothing held after the burst: {gauges}")

    # Per-request methods through extra body fields.
    m = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0,
                                  extra_body={"kv": "streaming", "kv_budget": 64, "decode": "topk"})
    check(len(m.choices[0].text) > 0, f"kv streaming + decode topk: {m.choices[0].text!r}")

    # The openai client surfaces our errors as its exceptions.
    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=100000)
        check(False, "max_tokens 100000 accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "max_tokens" in str(e), f"openai client: BadRequestError {str(e)[:120]}")
    try:
        client.completions.create(model="gpt-4", prompt=prompt, max_tokens=2)
        check(False, "model gpt-4 accepted")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"openai client: NotFoundError {str(e)[:120]}")

    # prompt_progress events for a prompt of several -ub chunks, [DONE] last.
    long_prompt = "one two three four five six seven eight nine ten " * 12
    st, ctype, data = srv.raw("POST", "/v1/completions",
                              {"prompt": long_prompt, "max_tokens": 2, "temperature": 0, "stream": True})
    ev = sse_events(data)
    prog = [json.loads(e)["prompt_progress"] for e in ev if e != "[DONE]" and "prompt_progress" in json.loads(e)]
    check(st == 200 and "text/event-stream" in ctype, f"stream: HTTP {st}, {ctype}")
    check(len(prog) >= 2 and prog[-1]["processed"] == prog[-1]["total"], f"prompt_progress events: {prog}")
    check(ev and ev[-1] == "[DONE]", "stream ends with data: [DONE]")

    # Bad input: each gets its status and an error object.
    expect_error(srv, 400, "{\"prompt\": ", "malformed JSON")
    expect_error(srv, 400, "[1, 2]", "a body that is not an object")
    expect_error(srv, 400, {"prompt": "hi", "max_tokens": "5"}, "max_tokens as a string", param="max_tokens")
    expect_error(srv, 400, {"prompt": 5}, "prompt as a number", param="prompt")
    expect_error(srv, 400, {"messages": "hi"}, "messages as a string", path="/v1/chat/completions", param="messages")
    expect_error(srv, 400, {"prompt": "hi", "max_token": 5}, "unknown field", param="max_token")
    expect_error(srv, 400, {"messages": [{"role": "user", "content": "hi", "mood": 1}]}, "unknown message field",
                 path="/v1/chat/completions", param="messages[0].mood")
    expect_error(srv, 400, {"prompt": "word " * 1500, "max_tokens": 4}, "prompt over the context", param="prompt")
    expect_error(srv, 400, {"prompt": "hi", "max_tokens": 5000}, "max_tokens over the limit", param="max_tokens")
    expect_error(srv, 400, {"prompt": "hi", "max_tokens": 1024}, "prompt + max_tokens over -c", param="max_tokens")
    expect_error(srv, 400, {"prompt": "hi", "prefill": "magic"}, "unknown prefill method", param="prefill")
    expect_error(srv, 400, {"prompt": "hi", "kv": "zip"}, "unknown KV policy", param="kv")
    expect_error(srv, 422, {"prompt": "hi", "n": 2}, "n = 2 (unsupported)", param="n")
    expect_error(srv, 400, {"prompt": "hi", "max_tokens": 600}, "prompt + max_tokens over --kv-memory")
    expect_error(srv, 413, json.dumps({"prompt": "x" * 100000}), "a body over --max-body")
    expect_error(srv, 405, None, "GET on /v1/completions", method="GET")
    expect_error(srv, 404, None, "an unknown route", path="/v1/nothing", method="GET")
    expect_error(srv, 404, {"prompt": "hi", "model": "gpt-4"}, "a model that is not served", param="model")

    # A client that disconnects mid-stream: the server cancels the request and keeps serving.
    body = json.dumps({"prompt": "Count: one, two, three,", "max_tokens": 300, "temperature": 0, "stream": True})
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    got = b""
    while b"data: " not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    check(b"data: " in got, "disconnect: the stream had started")
    cancelled = 0
    for _ in range(100):
        st, _, data = srv.raw("GET", "/metrics")
        mm = re.search(rb"^longctx_requests_cancelled_total (\S+)$", data, re.M)
        cancelled = float(mm.group(1)) if mm else 0
        if cancelled >= 1:
            break
        time.sleep(0.1)
    check(cancelled >= 1, f"disconnect: the request was cancelled (longctx_requests_cancelled_total {cancelled})")
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0)
    check(len(r.choices[0].message.content) > 0, "a request after the disconnect is served")

    # Metrics in the Prometheus text format.
    st, ctype, data = srv.raw("GET", "/metrics")
    text = data.decode()
    check(st == 200 and ctype.startswith("text/plain"), f"GET /metrics: HTTP {st}, {ctype}")
    for name in ["longctx_requests_total", "longctx_prompt_tokens_total", "longctx_generated_tokens_total",
                 "longctx_prefill_tokens_per_second", "longctx_decode_tokens_per_second", "longctx_kv_bytes_in_use",
                 "longctx_kv_bytes_capacity", "longctx_requests_queued"]:
        check(re.search(rf"^{name}(\{{[^}}]*\}})? \S+$", text, re.M) is not None, f"metric {name}")
    gen = re.search(r"^longctx_generated_tokens_total (\S+)$", text, re.M)
    check(gen is not None and float(gen.group(1)) > 0, "generated tokens counted")
    check(re.search(r'^longctx_requests_total\{endpoint="/v1/completions",code="400"\} [1-9]', text, re.M)
          is not None, "400s counted by endpoint")
    check("/v1/nothing" not in text and re.search(r'^longctx_requests_total\{endpoint="other",code="404"\} [1-9]',
                                                   text, re.M) is not None, "unknown paths count as endpoint other")


if __name__ == "__main__":
    main()
