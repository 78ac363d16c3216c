# Turns the JSON of longctx-cuda-attn-bench and of sdpa-baseline.py into the markdown table of
# bench/results/cuda-attn-h100.md (prefill TFLOP/s beside cuDNN and FlashAttention-2, decode GB/s against the copy
# bandwidth). Used by scripts/cuda-attn-bench.sh.
import argparse, datetime, json, os, subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--ours", required=True)
ap.add_argument("--peers")
ap.add_argument("--gpu")
ap.add_argument("--bench-log")
ap.add_argument("--test-rc", default="?")
args = ap.parse_args()

ours = json.load(open(args.ours))
peers = json.load(open(args.peers)) if args.peers and os.path.exists(args.peers) else []
gpu = open(args.gpu).read().strip().splitlines()[-1] if args.gpu and os.path.exists(args.gpu) else "?"
dev_line = ""
if args.bench_log and os.path.exists(args.bench_log):
    dev_line = next((l.strip() for l in open(args.bench_log) if l.startswith("device:")), "")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "?"

def peer(kind, backend, **kw):
    for r in peers:
        if r.get("kind") == kind and r.get("backend") == backend and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None

def fmt(v, nd=0):
    return "-" if v is None else f"{v:.{nd}f}"

copy = next((r["GBps"] for r in ours if r["kind"] == "copy"), None)
tcopy = next((r["GBps"] for r in peers if r.get("kind") == "copy"), None)
out = []
out.append("# CUDA dense attention kernels on the H100: ours against cuDNN / FlashAttention-2 (torch SDPA)\n")
out.append(f"- GPU (nvidia-smi: name, driver, memory, max SM clock): {gpu}")
out.append(f"- {dev_line}")
out.append(f"- commit {commit}, run {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
           f"CUDA tests (test-cuda-attn) exit code {args.test_rc}")
out.append("- command: `scripts/cuda-attn-bench.sh` (runs `build-cuda/tests/test-cuda-attn`, "
           "`build-cuda/bench/cuda/longctx-cuda-attn-bench --json ...`, `python3 bench/cuda/sdpa-baseline.py`)")
out.append("- shapes: 32 query heads, 8 KV heads, head_dim 128, bf16; ours reads K/V from the paged cache "
           "(64-token pages, shuffled page table), torch gets contiguous K/V expanded to 32 heads for prefill")
out.append(f"- copy bandwidth (device-to-device, read + write): cudaMemcpy {fmt(copy)} GB/s, torch copy_ {fmt(tcopy)} GB/s\n")

out.append("## Causal prefill, TFLOP/s (4 * N^2/2 * 128 * 32 FLOPs; median)\n")
out.append("| N | ours mma.sync | ours wgmma basic | ours wgmma overlap | ours wgmma (overlap + ping-pong) | cuDNN | FA2 | "
           "ours (wgmma, the default) / cuDNN | spot-check nmse (ours) |")
out.append("|--:|--:|--:|--:|--:|--:|--:|--:|--|")
ns = sorted({r["N"] for r in ours if r["kind"] == "prefill"})
for n in ns:
    rows = {r["kernel"]: r for r in ours if r["kind"] == "prefill" and r["N"] == n}
    mma, wb, wo, wg = rows.get("mma_sync"), rows.get("wgmma_basic"), rows.get("wgmma_overlap"), rows.get("wgmma")
    cud, fa = peer("prefill", "cudnn", N=n), peer("prefill", "flash", N=n)
    ratio = f"{wg['tflops'] / cud['tflops']:.2f}x" if cud and "tflops" in cud and wg else "-"
    nm = ", ".join(f"{k} {r['nmse']:.1e}" for k, r in rows.items() if r.get("nmse", -1) >= 0) or "-"
    out.append(f"| {n} | {fmt(mma and mma['tflops'], 1)} | {fmt(wb and wb['tflops'], 1)} | {fmt(wo and wo['tflops'], 1)} | "
               f"{fmt(wg and wg['tflops'], 1)} | "
               f"{fmt(cud and cud.get('tflops'), 1)} | {fmt(fa and fa.get('tflops'), 1)} | {ratio} | {nm} |")

out.append("\n## Decode (one query token per sequence), GB/s of K and V read (L2 flushed; median)\n")
out.append("| N | batch | ours | ours / copy BW | splits | FA2 | cuDNN | mem-efficient |")
out.append("|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in [r for r in ours if r["kind"] == "decode"]:
    n, b = r["N"], r["B"]
    p = {be: peer("decode", be, N=n, B=b) for be in ("flash", "cudnn", "efficient")}
    pct = f"{100 * r['GBps'] / copy:.0f}%" if copy else "-"
    out.append(f"| {n} | {b} | {r['GBps']:.0f} | {pct} | {r['n_split']} | " +
               " | ".join(fmt(p[be] and p[be].get("GBps")) for be in ("flash", "cudnn", "efficient")) + " |")
print("\n".join(out))
