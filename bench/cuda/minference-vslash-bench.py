# MInference's own vertical-slash path beside ours and cuDNN on identical inputs: rebuilds the Q/K/V that
# longctx-cuda-sparse-bench fills on the GPU (same hash, checked against its dumped first elements), feeds
# MInference's index converter (convert_vertical_slash_indexes, csrc/vertical_slash_index.cu) and its Triton
# kernel (_triton_mixed_sparse_attention, minference/ops/pit_sparse_flash_attention_v2.py) the column and offset
# lists our bench dumped, times them and cuDNN dense (torch SDPA), checks both sparse outputs on sampled query
# blocks against fp32 references over each one's own key set, and prints the side-by-side tables.
# Usage: python3 bench/cuda/minference-vslash-bench.py --dump DIR --minference SRC [--n 32768,...] [--iters 3]
#   SRC: a checkout of github.com/microsoft/MInference (read at run time, not part of this repository).
#   MINF_CONVERTER=nvrtc (default): the converter's kernel source compiled by NVRTC through CuPy and launched with
#   its own grid (64 threads, grid heads x batch x rows/64) after torch.zeros outputs as its wrapper allocates;
#   MINF_CONVERTER=torch: its torch extension (csrc/kernels.cpp + .cu) built by torch.utils.cpp_extension.load.
import argparse, importlib, json, math, os, sys, time, types

import numpy as np
import torch

H, HKV, D = 32, 8, 128


def fill_random(n, seed, device="cuda"):
    """The bench's fill_random (sigma 1): x = u32(i) * 2654435761 ^ seed, xorshift-multiply, 24 bits -> uniform."""
    out = torch.empty(n, dtype=torch.bfloat16, device=device)
    chunk = 1 << 27
    for a in range(0, n, chunk):
        i = torch.arange(a, min(n, a + chunk), dtype=torch.int64, device=device) & 0xFFFFFFFF
        x = ((i * 2654435761) & 0xFFFFFFFF) ^ seed
        x = x ^ (x >> 15)
        x = (x * 2246822519) & 0xFFFFFFFF
        x = x ^ (x >> 13)
        u = (x & 0xFFFFFF).to(torch.float32) / 16777216.0 - 0.5
        out[a:a + i.numel()] = (u * 1.0 * 3.4641).to(torch.bfloat16)
        del i, x, u
    return out


def cuda_ms(fn, iters, warm=True):
    if warm:
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def load_minference(src):
    """MInference's Triton kernel module, imported with its package parents stubbed (their __init__ pulls in the
    whole model-patching stack) and its converter supplied as minference.cuda."""
    mode = os.environ.get("MINF_CONVERTER", "nvrtc")
    cu_path = os.path.join(src, "csrc", "vertical_slash_index.cu")
    if mode == "torch":
        from torch.utils.cpp_extension import load
        ext = load(name="minference_cuda_vs", sources=[os.path.join(src, "csrc", "kernels.cpp"), cu_path],
                   extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"], verbose=False)
        convert = ext.convert_vertical_slash_indexes
    else:
        import cupy
        text = open(cu_path).read()
        body = text[text.index("__device__ void save_blocks"):text.index("void convert_vertical_slash_indexes_64x64(")]
        try:
            mod = cupy.RawModule(code=body, options=("-std=c++17",),
                                 name_expressions=["convert_vertical_slash_indexes_kernel"])
            fn = mod.get_function("convert_vertical_slash_indexes_kernel")
        except Exception:  # NVRTC without the int max() overload
            pre = "__device__ __forceinline__ int max(int a, int b) { return a > b ? a : b; }\n"
            mod = cupy.RawModule(code=pre + body, options=("-std=c++17",),
                                 name_expressions=["convert_vertical_slash_indexes_kernel"])
            fn = mod.get_function("convert_vertical_slash_indexes_kernel")

        def convert(seqlens, v_idx, s_idx, context_size, bm, bn):
            # the wrapper convert_vertical_slash_indexes of csrc/vertical_slash_index.cu, in python
            b, nh, nnz_s = s_idx.shape
            nnz_v = v_idx.shape[2]
            rows = (context_size + bm - 1) // bm
            opt = dict(dtype=torch.int32, device=seqlens.device)
            bc = torch.zeros((b, nh, rows), **opt)
            bo = torch.zeros((b, nh, rows, nnz_s), **opt)
            cc = torch.zeros((b, nh, rows), **opt)
            ci = torch.zeros((b, nh, rows, nnz_v), **opt)
            c = cupy.from_dlpack
            fn((nh, b, (rows + 63) // 64), (64,),
               (c(seqlens), c(v_idx), c(s_idx), c(bc), c(bo), c(cc), c(ci), np.int32(nh), np.int32(rows),
                np.int32(bm), np.int32(bn), np.int32(nnz_v), np.int32(nnz_s)))
            return [bc, bo, cc, ci]

    pkg = types.ModuleType("minference")
    pkg.__path__ = [os.path.join(src, "minference")]
    ops = types.ModuleType("minference.ops")
    ops.__path__ = [os.path.join(src, "minference", "ops")]
    cu = types.ModuleType("minference.cuda")
    cu.convert_vertical_slash_indexes = convert
    sys.modules.update({"minference": pkg, "minference.ops": ops, "minference.cuda": cu})
    m = importlib.import_module("minference.ops.pit_sparse_flash_attention_v2")
    return m, convert, mode


def band_mask(offs, cols, p0, p1, n):
    """Our plan's keys for the query block [p0, p1]: per offset o the band [max(0, p0 - o), p1 - o + 1), plus the
    columns up to p1 (vslash_plan_head)."""
    mark = torch.zeros(n + 1, dtype=torch.int32, device=offs.device)
    o = offs.to(torch.int64)
    ok = p1 - o >= 0
    st = torch.clamp(p0 - o[ok], min=0)
    en = torch.clamp(p1 - o[ok] + 1, max=n)
    mark.index_add_(0, st, torch.ones_like(st, dtype=torch.int32))
    mark.index_add_(0, en, -torch.ones_like(en, dtype=torch.int32))
    m = torch.cumsum(mark, 0)[:n] > 0
    c = cols.to(torch.int64)
    m[c[c <= p1]] = True
    return m


def minf_mask(bo, nb, ci, nc, n):
    """MInference's keys for one (head, block): 64-key blocks at bo[:nb], columns ci[:nc]."""
    m = torch.zeros(n, dtype=torch.bool, device=bo.device)
    if nb > 0:
        k = (bo[:nb].to(torch.int64)[:, None] + torch.arange(64, device=bo.device)[None, :]).reshape(-1)
        m[k[k < n]] = True
    if nc > 0:
        m[ci[:nc].to(torch.int64)] = True
    return m


def ref_rows(q_rows, kh, vh, mask, p0, scale):
    """fp32 attention of the block's rows over the keys in mask, causal."""
    idx = torch.nonzero(mask).squeeze(1)
    s = (q_rows.float() @ kh[idx].float().T) * scale
    pos = torch.arange(p0, p0 + q_rows.shape[0], device=q_rows.device)
    s = s.masked_fill(idx[None, :] > pos[:, None], float("-inf"))
    return torch.softmax(s, dim=-1) @ vh[idx].float()


def nmse(a, r):
    return float(((a.double() - r.double()) ** 2).sum() / (r.double() ** 2).sum().clamp_min(1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--minference", required=True)
    ap.add_argument("--n", default="32768")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--iters-large", type=int, default=1, help="cuDNN repetitions from 512k up (no warm-up)")
    ap.add_argument("--cudnn", type=int, default=1)
    args = ap.parse_args()
    m, convert, mode = load_minference(args.minference)
    kern = m._triton_mixed_sparse_attention
    ours = {}
    with open(os.path.join(args.dump, "ours.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            ours[(r["n"], r["structure"])] = r
    res = []
    scale = 1.0 / math.sqrt(D)
    print(f"minference converter: {mode}; triton {__import__('triton').__version__}; torch {torch.__version__}; "
          f"device {torch.cuda.get_device_name()}", flush=True)
    for N in [int(x) for x in args.n.split(",")]:
        if not any(k[0] == N for k in ours):
            print(f"N={N}: no rows from our bench; skipped", flush=True)
            continue
        try:
            run_n(args, N, ours, res, kern, convert, mode)
        except Exception as ex:  # out of memory at the largest sizes: report and go on
            print(f"N={N}: failed: {type(ex).__name__}: {str(ex)[:300]}", flush=True)
        torch.cuda.empty_cache()
    print_tables(res, ours)


def run_n(args, N, ours, res, kern, convert, mode):
    scale = 1.0 / math.sqrt(D)
    if True:
        pre = os.path.join(args.dump, f"n{N}")
        pages = (N + 63) // 64
        q = fill_random(N * H * D, 1)
        kp = fill_random(pages * HKV * 64 * D, 2)
        vp = fill_random(pages * HKV * 64 * D, 3)
        for name, t in (("q", q), ("k", kp), ("v", vp)):
            want = np.fromfile(f"{pre}-head-{name}.bf16", dtype=np.uint16)
            got = t[:4096].view(torch.int16).cpu().numpy().view(np.uint16)
            if not np.array_equal(want, got):
                sys.exit(f"N={N}: rebuilt {name} differs from the bench's ({int((want != got).sum())} of 4096)")
        # [1, H, N, D] contiguous for MInference and cuDNN (its Triton kernel indexes with 32-bit offsets, so the
        # head-major layout keeps them in range); K, V repeated from 8 to 32 heads as MInference's path needs.
        qb = q.view(N, H, D).permute(1, 0, 2).contiguous().unsqueeze(0)
        kh = kp.view(pages, HKV, 64, D).permute(1, 0, 2, 3).reshape(HKV, pages * 64, D)[:, :N]
        vh = vp.view(pages, HKV, 64, D).permute(1, 0, 2, 3).reshape(HKV, pages * 64, D)[:, :N]
        kb = kh.repeat_interleave(H // HKV, dim=0).unsqueeze(0).contiguous()
        vb = vh.repeat_interleave(H // HKV, dim=0).unsqueeze(0).contiguous()
        kh, vh = kh.contiguous(), vh.contiguous()
        del kp, vp, q
        cudnn_ms = None
        if args.cudnn:
            from torch.nn.attention import sdpa_kernel, SDPBackend
            large = N >= 524288
            try:
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    f = lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
                    cudnn_ms = cuda_ms(f, args.iters_large if large else args.iters, warm=not large)
            except Exception as ex:
                print(f"N={N} cudnn: {str(ex)[:200]}", flush=True)
            torch.cuda.empty_cache()
        print(f"N={N} cudnn {cudnn_ms} ms", flush=True)
        # head chunks keep MInference's 32-bit index arithmetic in range: chunk * N * D and
        # chunk * rows * nnz_s below 2^31 (one chunk of 32 heads up to 512k tokens)
        rows = (N + 63) // 64
        for structure in ("scattered", "clustered"):
            key = (N, structure)
            if key not in ours:
                continue
            o_r = ours[key]
            ve, se = o_r["v"], o_r["s"]
            cols = torch.from_numpy(np.fromfile(f"{pre}-{structure}-cols.i32", dtype=np.int32)).cuda().view(1, H, ve)
            offs = torch.from_numpy(np.fromfile(f"{pre}-{structure}-offs.i32", dtype=np.int32)).cuda().view(1, H, se)
            chunk = H
            while chunk > 1 and (chunk * N * D > 2 ** 31 or chunk * rows * se >= 2 ** 31):
                chunk //= 2
            seqlens = torch.tensor([N], dtype=torch.int32, device="cuda")
            state = {}

            def index(h0, h1):
                # as vertical_slash_sparse_attention: int32, columns ascending, offsets descending, then convert
                v_idx = cols[:, h0:h1].to(torch.int32).sort(dim=-1, descending=False)[0]
                s_idx = offs[:, h0:h1].to(torch.int32).sort(dim=-1, descending=True)[0]
                return convert(seqlens, v_idx, s_idx, N, 64, 64)

            def run_index():
                state["idx"] = None
                state["idx"] = [index(h0, min(H, h0 + chunk)) for h0 in range(0, H, chunk)]

            def run_kernel():
                state["o"] = None  # the previous outputs go before the next are allocated
                outs = []
                for i, h0 in enumerate(range(0, H, chunk)):
                    h1 = min(H, h0 + chunk)
                    bc, bo, cc, ci = state["idx"][i]
                    outs.append(kern(qb[:, h0:h1], kb[:, h0:h1], vb[:, h0:h1], seqlens, bc, bo, cc, ci, scale, 64, 64))
                state["o"] = outs

            t0 = time.time()
            run_index()
            run_kernel()  # compiles the Triton kernel on first use
            torch.cuda.synchronize()
            first_s = time.time() - t0
            its = args.iters
            idx_ms = cuda_ms(run_index, its)
            ker_ms = cuda_ms(run_kernel, its)
            # steps (64-key blocks + column groups of 64) against the dense causal tiles, as ours counts them
            steps = 0
            for bc, bo, cc, ci in state["idx"]:
                steps += int(bc.sum()) + int(((cc + 63) // 64).sum())
            dense_tiles = H * rows * (rows + 1) // 2
            # checks on sampled query blocks: each output against fp32 over its own key set; ours vs theirs
            ob = np.fromfile(f"{pre}-{structure}-o.bf16", dtype=np.uint16)
            ob = torch.from_numpy(ob.view(np.int16)).cuda().view(torch.bfloat16).view(-1, H, D)
            nb = rows
            blocks = [0, nb // 3, 2 * nb // 3, nb - 1]
            e_ours = e_minf = e_cross = 0.0
            k_ours = k_minf = 0
            at = 0
            for b in blocks:
                p0, p1 = b * 64, min(N, b * 64 + 64) - 1
                nr = p1 - p0 + 1
                num_o = den_o = num_m = den_m = num_x = 0.0
                for h in range(H):
                    ci_ = h // chunk
                    hc = h - ci_ * chunk
                    bc, bo, cc, ci = state["idx"][ci_]
                    mo = band_mask(offs[0, h], cols[0, h], p0, p1, N)
                    mm = minf_mask(bo[0, hc, b], int(bc[0, hc, b]), ci[0, hc, b], int(cc[0, hc, b]), N)
                    k_ours += int(mo.sum())
                    k_minf += int(mm.sum())
                    qr = qb[0, h, p0:p1 + 1]
                    r_o = ref_rows(qr, kh[h // (H // HKV)], vh[h // (H // HKV)], mo, p0, scale)
                    r_m = ref_rows(qr, kh[h // (H // HKV)], vh[h // (H // HKV)], mm, p0, scale)
                    g_o = ob[at:at + nr, h].float()
                    g_m = state["o"][ci_][0, hc, p0:p1 + 1].float()
                    num_o += float(((g_o - r_o) ** 2).sum()); den_o += float((r_o ** 2).sum())
                    num_m += float(((g_m - r_m) ** 2).sum()); den_m += float((r_m ** 2).sum())
                    num_x += float(((g_m - g_o) ** 2).sum())
                e_ours = max(e_ours, num_o / den_o)
                e_minf = max(e_minf, num_m / den_m)
                e_cross = max(e_cross, num_x / den_o)
                at += nr
            r = dict(n=N, structure=structure, minf_index_ms=idx_ms, minf_kernel_ms=ker_ms,
                     minf_total_ms=idx_ms + ker_ms, minf_first_call_s=first_s, minf_steps_ratio=steps / dense_tiles,
                     head_chunk=chunk, cudnn_ms=cudnn_ms, nmse_ours_vs_ref=e_ours, nmse_minf_vs_ref=e_minf,
                     nmse_minf_vs_ours=e_cross, sampled_keys_ours=k_ours, sampled_keys_minf=k_minf,
                     converter=mode)
            res.append(r)
            print(json.dumps(r), flush=True)
            with open(os.path.join(args.dump, "minference.jsonl"), "a") as f:
                f.write(json.dumps(r) + "\n")
            del state
            torch.cuda.empty_cache()
        del qb, kb, vb, kh, vh
        torch.cuda.empty_cache()


def print_tables(res, ours):
    print("\n| N | structure | ours index ms | ours sparse kernel ms | ours sparse total ms "
          "| ours auto total ms (path) | MInference convert ms | MInference kernel ms | MInference total ms | cuDNN ms "
          "| ours sparse / MInf | ours auto / MInf | ours sparse / cuDNN | ours auto / cuDNN | MInf / cuDNN "
          "| our steps / dense | MInf steps / dense | our pair steps / dense | ours 1-block wgmma kernel ms "
          "| ours mma.sync kernel ms | ours serial paired kernel ms | MInf kernel / ours kernel |")
    print("|" + "---|" * 22)
    for r in res:
        o_r = ours[(r["n"], r["structure"])]
        idx = o_r["estimate_ms"] + o_r["select_ms"] + o_r["plan_ms"]
        sp = idx + o_r["sparse_kernel_ms"]
        au = o_r["auto_total_ms"]
        mt = r["minf_total_ms"]
        cd = r["cudnn_ms"]
        fx = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
        print(f"| {r['n']} | {r['structure']} | {idx:.2f} | {o_r['sparse_kernel_ms']:.2f} | {sp:.2f} | {au:.2f} "
              f"({'dense' if o_r['auto_dense'] else 'sparse'}) | {r['minf_index_ms']:.2f} | {r['minf_kernel_ms']:.2f} "
              f"| {mt:.2f} | {cd if cd is None else f'{cd:.2f}'} | {fx(mt, sp)} | {fx(mt, au)} | {fx(cd, sp)} "
              f"| {fx(cd, au)} | {fx(cd, mt)} | {o_r['steps_ratio']:.3f} | {r['minf_steps_ratio']:.3f} "
              f"| {o_r.get('pair_steps_ratio', 0):.3f} | {o_r.get('wgmma_1block_kernel_ms', 0):.2f} "
              f"| {o_r.get('mma_sync_kernel_ms', 0):.2f} | {o_r.get('pair_serial_kernel_ms', 0):.2f} "
              f"| {fx(r['minf_kernel_ms'], o_r['sparse_kernel_ms'])} |")
    print("\n(speed-up columns: the other's time over ours; MInf / cuDNN: cuDNN time over MInference's)")
    print("\n| N | structure | nmse ours vs fp32 over our keys | nmse MInf vs fp32 over its keys | nmse MInf vs ours "
          "| sampled keys ours | sampled keys MInf |\n|---|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['n']} | {r['structure']} | {r['nmse_ours_vs_ref']:.2e} | {r['nmse_minf_vs_ref']:.2e} "
              f"| {r['nmse_minf_vs_ours']:.2e} | {r['sampled_keys_ours']} | {r['sampled_keys_minf']} |")


if __name__ == "__main__":
    main()
