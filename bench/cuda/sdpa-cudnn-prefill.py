# cuDNN (and FlashAttention-2) dense causal prefill through torch SDPA at Llama-3-8B shapes (32 heads, KV expanded
# from 8 to 32 as SDPA's flash paths need, D = 128, bf16), the peer of bench/cuda/cuda-sparse-bench.cu.
# Usage on the GPU machine: python3 bench/cuda/sdpa-cudnn-prefill.py 32768 131072
import sys, torch
from torch.nn.attention import sdpa_kernel, SDPBackend
H, D = 32, 128
def bench(fn, iters):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts) // 2]
print("| N | backend | ms | TFLOP/s |\n|---|---|---|---|")
for N in [int(x) for x in sys.argv[1:]]:
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name, be in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash2", SDPBackend.FLASH_ATTENTION)]:
        try:
            with sdpa_kernel([be]):
                ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), 3)
            print(f"| {N} | {name} | {ms:.2f} | {4 * N * N * D * H / 2 / ms / 1e9:.0f} |", flush=True)
        except Exception as ex:
            print(f"| {N} | {name} | error: {str(ex)[:80]} | |", flush=True)
    del q, k, v
    torch.cuda.empty_cache()
