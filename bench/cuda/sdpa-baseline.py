# Copy of the project tool shared/tools/sdpa_baseline.py, kept here so that scripts/cuda-attn-bench.sh runs on a
# GPU machine that has only this checkout.
# Dense-attention baselines on the GPU machine: torch SDPA (FlashAttention-2 and cuDNN back ends),
# causal prefill at long contexts and one-token decode over long KV, bf16, Llama-3-8B head shapes.
# Run on a GPU machine: python3 sdpa_baseline.py  (writes sdpa_baseline.json into $OUT when set, else here)
import torch, time, json, sys
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
dev = "cuda"
H, HKV, D = 32, 8, 128
res = []
def bench(fn, iters=5, warm=2):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts)//2]
for N in [8192, 32768, 131072]:
    q = torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16)  # GQA expanded (SDPA needs same heads for flash)
    v = torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16)
    flops = 4 * N * N * D * H / 2  # causal
    for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel([be]):
                ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), iters=3 if N > 50000 else 5)
            res.append(dict(kind="prefill", backend=name, N=N, ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1)))
        except Exception as ex:
            res.append(dict(kind="prefill", backend=name, N=N, err=str(ex)[:120]))
        print(res[-1], flush=True)
    del q, k, v
    torch.cuda.empty_cache()
# decode: one query token per sequence against N cached tokens, GQA 32/8, batch B
for N in [32768, 131072]:
    for B in [1, 16]:
        k = torch.randn(B, HKV, N, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(B, HKV, N, D, device=dev, dtype=torch.bfloat16)
        q = torch.randn(B, H, 1, D, device=dev, dtype=torch.bfloat16)
        byts = 2 * B * HKV * N * D * 2
        for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            try:
                with sdpa_kernel([be]):
                    ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True), iters=10)
                res.append(dict(kind="decode", backend=name, N=N, B=B, ms=round(ms, 4), GBps=round(byts / ms / 1e6, 0)))
            except Exception as ex:
                res.append(dict(kind="decode", backend=name, N=N, B=B, err=str(ex)[:120]))
            print(res[-1], flush=True)
        del k, v, q
        torch.cuda.empty_cache()
# copy bandwidth ceiling
x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device=dev).normal_(); y = torch.empty_like(x)
ms = bench(lambda: y.copy_(x), iters=10)
res.append(dict(kind="copy", GBps=round(2 * x.numel() * 2 / ms / 1e6, 0))); print(res[-1])
import os
open(os.path.join(os.environ.get("OUT", "."), "sdpa_baseline.json"), "w").write(json.dumps(res, indent=1))
