#!/usr/bin/env python3
# Load benchmark for `longctx serve`: starts the server on a free loopback port, then N client threads (default 32)
# send a mix of short prompts (tens of tokens) and long prompts (a few thousand tokens cut from the essays in
# /work/shared/data/pg_essays, read at run time) to /v1/chat/completions and /v1/completions, some streamed, for a
# bounded time and count. Records status, latency, time to first token (streams) and usage per request, samples the
# server's RSS every second, scrapes /metrics before and after, prints a markdown table and exits non-zero on any
# failed request. `--compare 8,1` runs the same load once per -np value and prints them side by side.
#
# Standard library only (http.client, threading). Usage:
#   bench/serve/serve-load.py --longctx build/longctx -np 8 --clients 32 --duration 180
#   bench/serve/serve-load.py --longctx build/longctx --compare 8,1 --clients 32 --duration 180
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

SHORT_PROMPTS = [
    "Name three colours and say one thing about each.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List five animals that live in the desert.",
    "Give me a short tip for writing clear emails.",
    "What does a compiler do? Keep it brief.",
    "Suggest a name for a small bakery and explain the choice.",
    "How many legs does a spider have, and why does that matter?",
    "Translate 'good morning, how are you?' into Spanish and French.",
    "Describe a rainy afternoon in a city in three sentences.",
    "What are two benefits of walking every day?",
]
LONG_ASK = "\n\nSummarise the essay excerpt above in two sentences."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs, p):
    # Nearest rank on sorted data (p in 0..100); None for no data.
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def parse_metrics(text):
    # Prometheus text -> {name{labels}: value}; a name without labels keys as itself.
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = float(parts[1])
        except ValueError:
            pass
    return out


class Server:
    def __init__(self, exe, port, flags, log_path):
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "w+")
        self.args = [exe, "serve", "--host", "127.0.0.1", "--port", str(port)] + flags
        print("starting: " + " ".join(self.args), file=sys.stderr, flush=True)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path, timeout=30):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_healthy(self, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                return False
            try:
                if self.get("/health", 5)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def metrics(self):
        st, body = self.get("/metrics")
        return parse_metrics(body.decode()) if st == 200 else {}

    def stop(self):
        # SIGTERM; the exit code is part of the result (0 expected).
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed after 30 s"
        return self.proc.returncode

    def tail(self, n=3000):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:]


class Corpus:
    # Essays read once at run time; long prompts are character windows cut at a word boundary.
    def __init__(self, path):
        self.texts = []
        for name in sorted(os.listdir(path)):
            if name.endswith(".txt"):
                with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
                    t = re.sub(r"\s+", " ", f.read())
                if len(t) > 2000:
                    self.texts.append(t)
        if not self.texts:
            sys.exit(f"serve-load: no essays (*.txt over 2000 characters) in {path}")

    def cut(self, rng, n_chars):
        t = rng.choice(self.texts)
        while len(t) < n_chars:
            t = t + " " + rng.choice(self.texts)
        start = rng.randrange(0, len(t) - n_chars + 1)
        piece = t[start:start + n_chars]
        sp = piece.find(" ")
        return piece[sp + 1:] if 0 <= sp < 40 else piece


def make_request(rng, corpus, a, model):
    # One request of the mix: (path, body, kind); kind is "short"/"long" + "-chat"/"-cmpl" + "-stream"?
    long_ = rng.random() < a.long_frac
    if long_:
        n_tok = rng.randint(a.long_min, a.long_max)
        text = corpus.cut(rng, int(n_tok * a.chars_per_token)) + LONG_ASK
    else:
        text = rng.choice(SHORT_PROMPTS)
    chat = rng.random() < 0.5
    stream = rng.random() < a.stream_frac
    body = {"model": model, "max_tokens": rng.randint(a.max_tokens_min, a.max_tokens_max), "temperature": 0}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = text if long_ else "Question: " + text + "\nAnswer:"
        path = "/v1/completions"
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    kind = ("long" if long_ else "short") + ("-chat" if chat else "-cmpl") + ("-stream" if stream else "")
    return path, body, kind


def send(port, path, body, timeout):
    # Returns a record: ok, status, error, latency_s, ttft_s (streams), prompt/completion tokens.
    rec = {"status": None, "ok": False, "error": None, "ttft_s": None, "prompt_tokens": None,
           "completion_tokens": None}
    stream = bool(body.get("stream"))
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        rec["status"] = r.status
        if r.status != 200:
            rec["error"] = r.read()[:300].decode("utf-8", "replace")
        elif not stream:
            j = json.loads(r.read())
            u = j.get("usage") or {}
            rec["prompt_tokens"], rec["completion_tokens"] = u.get("prompt_tokens"), u.get("completion_tokens")
            rec["ok"] = u.get("completion_tokens") is not None and bool(j.get("choices"))
            if not rec["ok"]:
                rec["error"] = "no usage or choices: " + json.dumps(j)[:300]
        else:
            done = False
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                j = json.loads(data)
                if "error" in j:
                    rec["error"] = json.dumps(j["error"])[:300]
                    continue
                if j.get("usage"):
                    rec["prompt_tokens"] = j["usage"].get("prompt_tokens")
                    rec["completion_tokens"] = j["usage"].get("completion_tokens")
                for ch in j.get("choices") or []:
                    piece = ch.get("text") if "text" in ch else (ch.get("delta") or {}).get("content")
                    if piece and rec["ttft_s"] is None:
                        rec["ttft_s"] = time.perf_counter() - t0
            rec["ok"] = done and rec["error"] is None and rec["completion_tokens"] is not None
            if not rec["ok"] and rec["error"] is None:
                rec["error"] = "stream ended without [DONE] or usage"
    except Exception as e:  # noqa: BLE001 - every client-side failure is a failed request
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        c.close()
    rec["latency_s"] = time.perf_counter() - t0
    return rec


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return f"{cpu}, {os.cpu_count()} CPUs; commit {commit}"


def run_load(a, n_parallel):
    port = free_port()
    flags = ["-np", str(n_parallel), "-c", str(a.ctx), "--kv-memory", a.kv_memory, "-t", str(a.threads)]
    if a.model:
        flags += ["-m", a.model]
    flags += a.server_flag
    log_path = os.path.join(a.log_dir, f"serve-load-np{n_parallel}-{port}.log")
    srv = Server(a.longctx, port, flags, log_path)
    res = {"np": n_parallel, "flags": flags, "log": log_path, "records": [], "rss": [], "load_before": loadavg()}
    try:
        if not srv.wait_healthy(180):
            print(srv.tail(), file=sys.stderr)
            sys.exit("serve-load: the server did not become healthy")
        st, body = srv.get("/v1/models")
        model = json.loads(body)["data"][0]["id"]
        corpus = Corpus(a.data)

        # Warm-up, sequential: one short and one long request of each endpoint (not in the results).
        wrng = random.Random(a.seed + 999)
        for kind_long in (False, True):
            saved = a.long_frac
            a.long_frac = 1.0 if kind_long else 0.0
            for _ in range(2):
                path, body, _ = make_request(wrng, corpus, a, model)
                w = send(port, path, body, a.timeout)
                if not w["ok"]:
                    print(f"serve-load: warm-up request failed: {w}", file=sys.stderr)
            a.long_frac = saved

        res["rss_start_kib"] = rss_kib(srv.proc.pid)
        m0 = srv.metrics()
        lock = threading.Lock()
        issued = [0]
        records = res["records"]

        def sampler():
            while not sampler_done.is_set():
                v = rss_kib(srv.proc.pid)
                if v is not None:
                    res["rss"].append((time.perf_counter() - t_start, v))
                if sampler_done.wait(1.0):
                    break

        def client(ic):
            rng = random.Random(a.seed * 1000 + ic)
            while True:
                with lock:
                    if time.perf_counter() >= t_end or issued[0] >= a.max_requests:
                        return
                    issued[0] += 1
                path, body, kind = make_request(rng, corpus, a, model)
                t_send = time.perf_counter() - t_start
                rec = send(port, path, body, a.timeout)
                rec.update({"client": ic, "kind": kind, "path": path, "t_start_s": t_send,
                            "t_end_s": time.perf_counter() - t_start, "max_tokens": body["max_tokens"]})
                with lock:
                    records.append(rec)
                if not rec["ok"]:
                    print(f"serve-load: FAILED {kind} {path}: HTTP {rec['status']} {rec['error']}",
                          file=sys.stderr, flush=True)

        sampler_done = threading.Event()
        t_start = time.perf_counter()
        t_end = t_start + a.duration
        st_thread = threading.Thread(target=sampler, daemon=True)
        st_thread.start()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
        for t in threads:
            t.start()
        last_report = time.perf_counter()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if time.perf_counter() - last_report >= a.progress:
                last_report = time.perf_counter()
                with lock:
                    n_ok = sum(1 for r in records if r["ok"])
                    n_bad = len(records) - n_ok
                v = rss_kib(srv.proc.pid)
                print(f"serve-load: np {n_parallel}: {last_report - t_start:6.0f} s, {n_ok} ok, {n_bad} failed, "
                      f"{issued[0] - len(records)} in flight, RSS {v / 1024 if v else 0:.0f} MiB",
                      file=sys.stderr, flush=True)
        t_done = time.perf_counter()
        res["wall_s"] = t_done - t_start
        res["load_s"] = a.duration
        time.sleep(1.0)  # one more RSS sample after the last request
        sampler_done.set()
        st_thread.join()
        res["rss_end_kib"] = rss_kib(srv.proc.pid)
        m1 = srv.metrics()
        res["metrics_start"], res["metrics_end"] = m0, m1
        res["server_alive"] = srv.proc.poll() is None
        res["load_after"] = loadavg()
    finally:
        res["server_exit"] = srv.stop()
        res["log_tail"] = srv.tail(2000)
    return res


def rss_at(samples, t):
    # MiB of the sample nearest to t seconds into the load.
    if not samples:
        return None
    return min(samples, key=lambda tv: abs(tv[0] - t))[1] / 1024


def summarise(res):
    recs = res["records"]
    ok = [r for r in recs if r["ok"]]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    m0, m1 = res["metrics_start"], res["metrics_end"]

    def d(name):
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    rss = [v for _, v in res["rss"]]
    # Drift: RSS over the second half of the run, a line fitted by least squares (MiB per minute).
    half = [(t, v) for t, v in res["rss"] if t >= res["wall_s"] / 2]
    slope = None
    if len(half) >= 3:
        mt = statistics.fmean(t for t, _ in half)
        mv = statistics.fmean(v for _, v in half)
        den = sum((t - mt) ** 2 for t, _ in half)
        if den > 0:
            slope = sum((t - mt) * (v - mv) for t, v in half) / den * 60 / 1024
    comp = sum(r["completion_tokens"] or 0 for r in ok)
    prompt = sum(r["prompt_tokens"] or 0 for r in ok)
    longs = [r for r in ok if r["kind"].startswith("long")]
    s = {
        "np": res["np"],
        "requests": len(recs),
        "ok": len(ok),
        "failed": len(recs) - len(ok),
        "long": len(longs),
        "streamed": sum(1 for r in ok if r["kind"].endswith("stream")),
        "long_prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] for r in longs) if longs else None,
        "wall_s": res["wall_s"],
        "lat_p50": percentile(lat, 50), "lat_p90": percentile(lat, 90), "lat_p99": percentile(lat, 99),
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "prompt_tokens": prompt, "completion_tokens": comp,
        "agg_completion_tps": comp / res["wall_s"] if res["wall_s"] > 0 else None,
        "agg_prompt_tps": prompt / res["wall_s"] if res["wall_s"] > 0 else None,
        "rss_start_mib": res["rss_start_kib"] / 1024 if res.get("rss_start_kib") else None,
        "rss_q1_mib": rss_at(res["rss"], res["wall_s"] / 4),
        "rss_peak_mib": max(rss) / 1024 if rss else None,
        "rss_end_mib": res["rss_end_kib"] / 1024 if res.get("rss_end_kib") else None,
        "rss_slope_mib_min": slope,
        "decode_tokens": d("longctx_decode_tokens_total"),
        "decode_steps": d("longctx_decode_steps_total"),
        "decode_s": d("longctx_decode_seconds_total"),
        "prefill_tokens": d("longctx_prompt_tokens_total"),
        "prefill_s": d("longctx_prefill_seconds_total"),
        "metrics_decode_tps_gauge": m1.get("longctx_decode_tokens_per_second"),
        "server_alive": res.get("server_alive"),
        "load_before": res.get("load_before"), "load_after": res.get("load_after"),
        "server_exit": res.get("server_exit"),
    }
    s["decode_tps"] = s["decode_tokens"] / s["decode_s"] if s["decode_s"] > 0 else None
    s["mean_batch"] = s["decode_tokens"] / s["decode_steps"] if s["decode_steps"] > 0 else None
    s["prefill_tps"] = s["prefill_tokens"] / s["prefill_s"] if s["prefill_s"] > 0 else None
    s["busy_s"] = s["decode_s"] + s["prefill_s"]
    return s


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


ROWS = [
    ("requests ok / failed", lambda s: f"{s['ok']} / {s['failed']}"),
    ("of which long / streamed", lambda s: f"{s['long']} / {s['streamed']}"),
    ("long prompt, mean tokens", lambda s: fmt(s["long_prompt_tokens_mean"], ".0f")),
    ("wall s (load + drain)", lambda s: fmt(s["wall_s"], ".1f")),
    ("latency p50 / p90 / p99 s",
     lambda s: f"{fmt(s['lat_p50'], '.2f')} / {fmt(s['lat_p90'], '.2f')} / {fmt(s['lat_p99'], '.2f')}"),
    ("TTFT p50 / p99 s (streams)", lambda s: f"{fmt(s['ttft_p50'], '.2f')} / {fmt(s['ttft_p99'], '.2f')}"),
    ("prompt / completion tokens", lambda s: f"{s['prompt_tokens']} / {s['completion_tokens']}"),
    ("aggregate completion tokens/s (wall)", lambda s: fmt(s["agg_completion_tps"], ".1f")),
    ("aggregate prompt tokens/s (wall)", lambda s: fmt(s["agg_prompt_tps"], ".1f")),
    ("/metrics decode tokens/s (in decode steps)", lambda s: fmt(s["decode_tps"], ".1f")),
    ("/metrics mean decode batch", lambda s: fmt(s["mean_batch"], ".2f")),
    ("/metrics prefill tokens/s", lambda s: fmt(s["prefill_tps"], ".0f")),
    ("/metrics decode s + prefill s", lambda s: f"{fmt(s['decode_s'], '.1f')} + {fmt(s['prefill_s'], '.1f')}"),
    ("RSS start (after warm-up) / at 1/4 / peak / end MiB",
     lambda s: f"{fmt(s['rss_start_mib'], '.1f')} / {fmt(s['rss_q1_mib'], '.1f')} / {fmt(s['rss_peak_mib'], '.1f')} / "
               f"{fmt(s['rss_end_mib'], '.1f')}"),
    ("RSS drift, 2nd half, MiB/min", lambda s: fmt(s["rss_slope_mib_min"], "+.2f")),
    ("server exit code after SIGTERM", lambda s: str(s["server_exit"])),
    ("load average before / after (1, 5, 15 min)", lambda s: f"{s['load_before']} / {s['load_after']}"),
]


def table(sums):
    head = "| | " + " | ".join(f"-np {s['np']}" for s in sums) + " |"
    lines = [head, "|---|" + "---:|" * len(sums)]
    for name, f in ROWS:
        lines.append(f"| {name} | " + " | ".join(f(s) for s in sums) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__ if __doc__ else "longctx serve load benchmark")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap.add_argument("--longctx", default=os.path.join(root, "build", "longctx"), help="longctx binary")
    ap.add_argument("-m", "--model", default="", help="model (default: the server's default, SmolLM2)")
    ap.add_argument("-np", "--parallel", type=int, default=8, help="server slots")
    ap.add_argument("--compare", default="", help="comma list of -np values run one after the other, e.g. 8,1")
    ap.add_argument("-c", "--ctx", type=int, default=8192, help="server -c (tokens per sequence)")
    ap.add_argument("--kv-memory", default="512M", help="server --kv-memory")
    ap.add_argument("-t", "--threads", type=int, default=2, help="server -t")
    ap.add_argument("--server-flag", action="append", default=[], help="extra server flag (repeat; e.g. -ub=256)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    ap.add_argument("--duration", type=float, default=180, help="seconds during which new requests start")
    ap.add_argument("--max-requests", type=int, default=2000, help="requests at most (count bound)")
    ap.add_argument("--timeout", type=float, default=600, help="per-request client timeout, seconds")
    ap.add_argument("--long-frac", type=float, default=0.1, help="share of long prompts")
    ap.add_argument("--long-min", type=int, default=1500, help="long prompt, fewest tokens (approximate)")
    ap.add_argument("--long-max", type=int, default=3000, help="long prompt, most tokens (approximate)")
    ap.add_argument("--chars-per-token", type=float, default=4.0, help="characters cut per wanted token")
    ap.add_argument("--stream-frac", type=float, default=0.5, help="share of streamed requests")
    ap.add_argument("--max-tokens-min", type=int, default=16)
    ap.add_argument("--max-tokens-max", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default="/work/shared/data/pg_essays", help="folder of essays (*.txt)")
    ap.add_argument("--log-dir", default=os.environ.get("TMPDIR", "/tmp"), help="server logs go here")
    ap.add_argument("--json", default="", help="write the summaries and per-request records to this file")
    ap.add_argument("--progress", type=float, default=15, help="seconds between progress lines on stderr")
    a = ap.parse_args()
    a.server_flag = [x for f in a.server_flag for x in f.split("=", 1)]
    if not os.path.exists(a.longctx):
        sys.exit(f"serve-load: no binary at {a.longctx}; build it (cmake --build build --target longctx) "
                 "or pass --longctx")

    nps = [int(x) for x in a.compare.split(",")] if a.compare else [a.parallel]
    results, sums = [], []
    for n_parallel in nps:
        res = run_load(a, n_parallel)
        results.append(res)
        sums.append(summarise(res))
        print(f"serve-load: np {n_parallel} done: {sums[-1]['ok']} ok, {sums[-1]['failed']} failed",
              file=sys.stderr, flush=True)

    print(f"machine: {machine()}")
    print(f"clients {a.clients}, duration {a.duration:.0f} s, long share {a.long_frac}, "
          f"long {a.long_min}-{a.long_max} tokens, max_tokens {a.max_tokens_min}-{a.max_tokens_max}, "
          f"stream share {a.stream_frac}, server flags: {' '.join(results[0]['flags'][2:])}\n")
    print(table(sums))
    if len(sums) > 1 and all(s["decode_tps"] for s in sums):
        base = sums[-1]
        for s in sums[:-1]:
            print(f"\n-np {s['np']} vs -np {base['np']}: /metrics decode tokens/s "
                  f"{s['decode_tps'] / base['decode_tps']:.2f}x, aggregate completion tokens/s "
                  f"{s['agg_completion_tps'] / base['agg_completion_tps']:.2f}x")

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "summaries": sums,
                       "runs": [{k: v for k, v in r.items() if k != "log_tail"} for r in results]}, f, indent=1)
    bad = [s for s in sums if s["failed"] or s["server_exit"] != 0 or not s["server_alive"]]
    for r in results:
        for rec in r["records"]:
            if not rec["ok"]:
                print(f"failed: np {r['np']} {rec['kind']} HTTP {rec['status']}: {rec['error']}", file=sys.stderr)
    if bad:
        for r in results:
            print(f"\nserver log tail (np {r['np']}, {r['log']}):\n{r['log_tail']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
