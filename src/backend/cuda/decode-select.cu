// Sparse decode selection on the GPU (decode-select.cuh). Scores: one kernel per method writes per-head scores
// [n_seq][n_head][n_items] and each head's best eligible score (atomicMax of an order-preserving key). Top-k per
// list (sequence, entry), five kernels over 1024-item chunks: (1) group scores (decode_group_scores()) as 32-bit
// order keys plus a 256-bin histogram of their top 8 bits; (2) the coarse bin holding the k-th key, and a 256-bin
// histogram of the next 8 bits of the keys in it ((2) and (3): 4 chunks a block); (3) the 16-bit bin holding the
// k-th key: keys above it are counted per chunk, keys in it appended as candidates (key << 32 | ~position, so that
// ties go to the lower position and every candidate is distinct); (4) one block per list: the exact k-th candidate (rank counting when few, else a
// radix select; over all keys of the bin when the candidates overflow; for token lists, the last block of (3) of
// each list does it: cand_select_kernel); (5) ordered compaction: each chunk writes its selected positions at the
// prefix of the chunks before it, so the plan's indices come out ascending.
// Loki, one selection per KV head: at batch 1 all of it in one cooperative kernel (loki_fused_kernel); above, its
// scores and (1) in one persistent kernel that keeps the per-head scores in L2 (loki_score_keys_kernel).
#include "backend/cuda/decode-select.cuh"
#include "backend/cuda/cuda-common.cuh"

#include <algorithm>
#include <cmath>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_fp16.h>

namespace lc::cuda {

decode_select_workspace::~decode_select_workspace() {
    cudaFree(scores);
    cudaFree(keys);
    cudaFree(zeroed);
    cudaFree(cand);
    cudaFree(chunk);
    cudaFree(info);
    cudaFree(hist);
    cudaFree(qrot);
}

namespace {

constexpr int     chunk_items = 1024; // items per block of the top-k kernels
constexpr int     n_hist      = 512;   // per list: histogram of the keys' top 8 bits (coarse), then of the next 8
                                         // bits of the keys in the chosen coarse bin (fine)
constexpr int64_t cand_cap    = 16384;
constexpr int     max_chunks  = 8192; // chunks per list the select kernel counts in shared memory (8M items)

template <typename T> T * grow(T *& p, size_t & cap, size_t n) {
    if (n > cap) {
        LC_CUDA_CHECK(cudaFree(p));
        LC_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
        cap = n;
    }
    return p;
}

// Per-sequence selection parameters (decode_select_args, host values) as the kernels see them.
struct sel_cfg {
    int     n_sink, n_local, page; // page: tokens per item (1: tokens; Quest: its metadata page)
    double  frac;
    int64_t tokens;
};

// One sequence's items, eligible range, budget and plan ranges, computed as the CPU methods do (decode_dense_part,
// decode_budget::keys, Quest's page exclusion).
struct seq_info {
    int n_items;
    int e0, e1; // eligible items
    int k;      // items to select: min(budget, eligible)
    int nr;
    int rb[2], re[2]; // plan ranges (tokens), sorted, disjoint
};

__host__ __device__ inline int64_t budget_keys(const sel_cfg & c, int64_t T) {
    if (T <= 0) return 0;
    const int64_t k = c.tokens > 0 ? c.tokens : int64_t(ceil(c.frac * double(T)));
    return k < 1 ? 1 : (k > T ? T : k);
}

__host__ __device__ inline seq_info seq_info_of(int T, const sel_cfg & c) {
    seq_info  si{};
    const int P  = c.page;
    const int s  = min(max(c.n_sink, 0), T);
    const int l0 = max(T - max(c.n_local, 0), 0);
    si.n_items   = P == 1 ? T : T / P;
    // Plan ranges: the sinks [0, s) and one range ending at T (the local window, and Quest's newest incomplete page
    // [n_items * P, T)), merged when they touch; at most 2, written with constant indices (registers, not memory).
    si.nr = 0;
    if (l0 <= s) {
        if (T > 0) si.rb[0] = 0, si.re[0] = T, si.nr = 1;
        si.e0 = si.e1 = 0;
    } else {
        if (P == 1) {
            si.e0 = s;
            si.e1 = l0;
        } else {
            si.e0 = min(s / P, si.n_items);
            si.e1 = min((l0 + P - 1) / P, si.n_items);
        }
        int eb = l0; // begin of the range ending at T (T: none)
        if (P > 1 && si.n_items * P < eb) eb = si.n_items * P;
        if (s > 0 && eb <= s) {
            si.rb[0] = 0, si.re[0] = T, si.nr = 1;
        } else {
            if (s > 0) si.rb[0] = 0, si.re[0] = s, si.nr = 1;
            if (eb < T) {
                if (si.nr == 0) si.rb[0] = eb, si.re[0] = T;
                else si.rb[1] = eb, si.re[1] = T;
                ++si.nr;
            }
        }
    }
    const int     n_el = max(0, si.e1 - si.e0);
    const int64_t kk   = budget_keys(c, T);
    const int64_t ki   = P == 1 ? kk : (kk + P - 1) / P;
    si.k               = int(ki < int64_t(n_el) ? ki : int64_t(n_el));
    return si;
}

// Tokens of item i outside the plan ranges (1 for token lists; up to P for a page).
__device__ __forceinline__ int item_weight(const seq_info & si, int P, int i) {
    if (P == 1) return 1;
    int w = P;
#pragma unroll
    for (int r = 0; r < 2; ++r)
        if (r < si.nr) w -= max(0, min(si.re[r], (i + 1) * P) - max(si.rb[r], i * P));
    return w;
}

__device__ __forceinline__ bool in_ranges(const seq_info & si, int t) {
    bool in = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) in |= r < si.nr && t >= si.rb[r] && t < si.re[r];
    return in;
}

// Order-preserving key of a float: larger float, larger key; NaN -> 1 (below -inf), 0 is left for "not eligible".
__device__ __forceinline__ uint32_t sel_key(float f) {
    if (f != f) return 1u;
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
// Order key of a head maximum (NaN never enters) and back; 0: no eligible score.
__device__ __forceinline__ float key_float(uint32_t k) {
    return (k & 0x80000000u) ? __uint_as_float(k & 0x7fffffffu) : __uint_as_float(~k);
}
__device__ __forceinline__ uint64_t comp_key(uint32_t key, int i) {
    return (uint64_t(key) << 32) | uint64_t(~uint32_t(i));
}

// Block-wide maximum per head of eligible scores into head_max (order keys): smem[g] must be 0 on entry and the
// caller's threads must all call this.
__device__ __forceinline__ void head_max_flush(uint32_t * smem, int G, uint32_t * head_max) {
    __syncthreads();
    if (threadIdx.x < G && smem[threadIdx.x] != 0) atomicMax(head_max + threadIdx.x, smem[threadIdx.x]);
}

// ---- scores ----

// Block (1024-token chunk, KV head, sequence): Loki scores of the G query heads of the KV head. The block stages
// P[:, :d] and q in shared memory and forms q' = q P[:, :d] in the CPU's summation order; each thread then scores
// 4 tokens (d_pad / 8 loads of 16 bytes each per token, 512 contiguous bytes per warp and chunk of 8 dims).
constexpr int loki_chunk = 1024;

// Block (KV head, sequence): q' = q P[:, :d] of the G query heads, summed in the CPU's order -> qrot
// [n_seq][n_head][d_pad] f32 (P and q staged in shared memory).
__global__ void __launch_bounds__(256)
    loki_query_kernel(const uint16_t * __restrict__ q, int n_head, int n_head_kv, int D,
                      const float * __restrict__ proj, int d_pad, float * __restrict__ qrot) {
    extern __shared__ float lsm[]; // P_g [D][d_pad], then q [G][D]
    const int               hk = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
    const int               G  = n_head / n_head_kv;
    float *                 Ps = lsm;
    float *                 qs = lsm + D * d_pad;
    const float *           P  = proj + size_t(hk) * D * d_pad;
    for (int o = tid; o < D * d_pad; o += 256) Ps[o] = P[o];
    for (int o = tid; o < G * D; o += 256) qs[o] = __uint_as_float(uint32_t(q[(size_t(b) * n_head + hk * G) * D + o]) << 16);
    __syncthreads();
    for (int o = tid; o < G * d_pad; o += 256) {
        const int g = o / d_pad, j = o % d_pad;
        float     y = 0.f;
        for (int i = 0; i < D; ++i) y = fmaf(qs[g * D + i], Ps[i * d_pad + j], y);
        qrot[(size_t(b) * n_head + hk * G + g) * d_pad + j] = y;
    }
}

// 16-byte load that L2 keeps only until other lines need the room (createpolicy evict_first): a stream read once.
__device__ __forceinline__ uint4 ldg_evict_first(const void * p) {
    uint4    v;
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(pol));
    return v;
}

// One block of 256 threads: the scores of chunk `chunk` (1024 tokens) of KV head hk of sequence b (qd, smax: the
// block's shared memory). EVICT_FIRST: the low-rank keys are read with L2 evict-first (scores stay in L2).
template <int G, bool EVICT_FIRST>
__device__ __forceinline__ void loki_score_chunk(int chunk, int hk, int b, const float * __restrict__ qrot, int n_head,
                                                 int n_head_kv, const __half * __restrict__ lk, int d_pad,
                                                 const int32_t * __restrict__ pages, int64_t pages_stride,
                                                 const int32_t * __restrict__ n_kv, sel_cfg cfg,
                                                 float * __restrict__ scores, int64_t stride,
                                                 uint32_t * __restrict__ head_max, float (&qd)[G][128],
                                                 uint32_t (&smax)[8]) {
    const int tid = threadIdx.x;
    const int T   = n_kv[b];
    if (tid < 8) smax[tid] = 0;
    for (int o = tid; o < G * d_pad; o += 256) qd[o / d_pad][o % d_pad] = qrot[(size_t(b) * n_head + hk * G) * d_pad + o];
    __syncthreads();
    const seq_info si   = seq_info_of(T, cfg);
    const int      nc   = d_pad / 8;
    const size_t   pelm = size_t(d_pad) * kv_page_tokens; // fp16 per (page, KV head)
    float          mx[8];
#pragma unroll
    for (int g = 0; g < 8; ++g) mx[g] = -INFINITY;
    constexpr int NT = loki_chunk / 256; // tokens per thread, all rows' loads of a chunk of 8 dims in flight
    const int     t0 = chunk * loki_chunk + tid;
    const __half * base[NT];
#pragma unroll
    for (int u = 0; u < NT; ++u) {
        const int t = min(t0 + u * 256, max(T - 1, 0)); // past the end: a duplicate row, not stored
        base[u]     = lk + (size_t(pages[size_t(b) * pages_stride + t / kv_page_tokens]) * n_head_kv + hk) * pelm +
                  size_t(t % kv_page_tokens) * 8;
    }
    float acc[NT][8];
#pragma unroll
    for (int u = 0; u < NT; ++u)
#pragma unroll
        for (int g = 0; g < 8; ++g) acc[u][g] = 0.f;
    if (t0 < T) {
#pragma unroll 2
        for (int cc = 0; cc < nc; ++cc) {
            uint4 v[NT];
#pragma unroll
            for (int u = 0; u < NT; ++u) {
                const __half * p = base[u] + size_t(cc) * kv_page_tokens * 8;
                v[u]             = EVICT_FIRST ? ldg_evict_first(p) : __ldg(reinterpret_cast<const uint4 *>(p));
            }
#pragma unroll
            for (int u = 0; u < NT; ++u) {
                const __half2 * h = reinterpret_cast<const __half2 *>(&v[u]);
                float           kf[8];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float2 f = __half22float2(h[j]);
                    kf[2 * j] = f.x, kf[2 * j + 1] = f.y;
                }
#pragma unroll
                for (int g = 0; g < 8; ++g) {
                    if (g < G) {
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[u][g] = fmaf(kf[j], qd[g][cc * 8 + j], acc[u][g]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int u = 0; u < NT; ++u) {
        const int  t  = t0 + u * 256;
        const bool ok = t < T;
        const bool el = ok && t >= si.e0 && t < si.e1;
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            if (g < G) {
                if (ok) scores[(size_t(b) * n_head + hk * G + g) * stride + t] = acc[u][g];
                if (el && acc[u][g] == acc[u][g]) mx[g] = fmaxf(mx[g], acc[u][g]);
            }
        }
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
        if (g < G) {
            float m = mx[g];
            for (int o = 16; o >= 1; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            if ((tid & 31) == 0 && m != -INFINITY) atomicMax(&smax[g], sel_key(m));
        }
    }
    head_max_flush(smax, G, head_max + size_t(b) * n_head + hk * G);
}

// Block (1024-token chunk, KV head, sequence): Loki scores of the G query heads of the KV head from q' (qrot);
// each thread scores 4 tokens (d_pad / 8 loads of 16 bytes per token, 512 contiguous bytes per warp and chunk of
// 8 dims).
template <int G>
__global__ void __launch_bounds__(256, 3)
    loki_score_kernel(const float * __restrict__ qrot, int n_head, int n_head_kv, const __half * __restrict__ lk,
                      int d_pad, const int32_t * __restrict__ pages, int64_t pages_stride,
                      const int32_t * __restrict__ n_kv, sel_cfg cfg, float * __restrict__ scores, int64_t stride,
                      uint32_t * __restrict__ head_max) {
    __shared__ float    qd[G][128];
    __shared__ uint32_t smax[8];
    loki_score_chunk<G, false>(blockIdx.x, blockIdx.y, blockIdx.z, qrot, n_head, n_head_kv, lk, d_pad, pages,
                               pages_stride, n_kv, cfg, scores, stride, head_max, qd, smax);
}

// Block (64-token page, KV head, sequence): rotated keys of the page, y[j] = sum_i k_i P[i][j] in the CPU's order.
__global__ void __launch_bounds__(256)
    loki_take_in_kernel(const uint16_t * __restrict__ k_pool, int n_head_kv, int D, const int32_t * __restrict__ pages,
                        int64_t pages_stride, const int32_t * __restrict__ n_kv, int p_first,
                        const float * __restrict__ proj, int d_pad, __half * __restrict__ lk) {
    extern __shared__ float kx[]; // [64][D + 1]
    const int hk = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int p  = p_first + blockIdx.x;
    if (p * kv_page_tokens >= n_kv[b]) return;
    const int32_t    phys = pages[size_t(b) * pages_stride + p];
    const uint16_t * kp   = k_pool + (size_t(phys) * n_head_kv + hk) * kv_page_tokens * D;
    for (int o = tid; o < kv_page_tokens * D; o += 256)
        kx[(o / D) * (D + 1) + o % D] = __uint_as_float(uint32_t(kp[o]) << 16);
    __syncthreads();
    const float * P   = proj + size_t(hk) * D * d_pad;
    __half *      dst = lk + (size_t(phys) * n_head_kv + hk) * size_t(d_pad) * kv_page_tokens;
    for (int o = tid; o < kv_page_tokens * d_pad; o += 256) {
        const int tt = o / d_pad, j = o % d_pad;
        float     y  = 0.f;
        for (int i = 0; i < D; ++i) y = fmaf(kx[tt * (D + 1) + i], P[size_t(i) * d_pad + j], y);
        dst[size_t(j / 8) * kv_page_tokens * 8 + tt * 8 + j % 8] = __float2half_rn(y);
    }
}

// Block (64-token page, KV head, sequence): channel max and min of each full metadata page of P tokens.
__global__ void __launch_bounds__(256)
    quest_take_in_kernel(const uint16_t * __restrict__ k_pool, int n_head_kv, int D, const int32_t * __restrict__ pages,
                         int64_t pages_stride, const int32_t * __restrict__ n_kv, int p_first, int P,
                         uint16_t * __restrict__ bounds) {
    const int hk = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    const int p  = p_first + blockIdx.x;
    const int T  = n_kv[b];
    if (p * kv_page_tokens >= T) return;
    const int32_t    phys = pages[size_t(b) * pages_stride + p];
    const uint16_t * kp   = k_pool + (size_t(phys) * n_head_kv + hk) * kv_page_tokens * D;
    const int        n_mp = kv_page_tokens / P;
    uint16_t *       dst  = bounds + (size_t(phys) * n_head_kv + hk) * n_mp * 2 * D;
    for (int o = tid; o < n_mp * D; o += 256) {
        const int mp = o / D, d = o % D;
        if (p * kv_page_tokens + (mp + 1) * P > T) continue; // not full yet
        float hi = -INFINITY, lo = INFINITY;
        for (int t = mp * P; t < (mp + 1) * P; ++t) {
            const float x = __uint_as_float(uint32_t(kp[size_t(t) * D + d]) << 16);
            hi            = fmaxf(hi, x);
            lo            = fminf(lo, x);
        }
        dst[(size_t(mp) * 2) * D + d]     = uint16_t(__float_as_uint(hi) >> 16); // exact: bf16 values
        dst[(size_t(mp) * 2 + 1) * D + d] = uint16_t(__float_as_uint(lo) >> 16);
    }
}

// Block (64 metadata pages, KV head, sequence): D / 8 threads per page, the G query heads' upper bounds.
constexpr int quest_chunk = 64;
template <int D>
__global__ void __launch_bounds__(128)
    quest_score_kernel(const uint16_t * __restrict__ q, int n_head, int n_head_kv, const uint16_t * __restrict__ bounds,
                       int P, const int32_t * __restrict__ pages, int64_t pages_stride, const int32_t * __restrict__ n_kv,
                       sel_cfg cfg, float * __restrict__ scores, int64_t stride, uint32_t * __restrict__ head_max) {
    constexpr int TPR = D / 8, PPP = 128 / TPR;
    __shared__ uint32_t smax[8];
    const int           hk = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, c = tid % TPR, r = tid / TPR;
    const int           G  = n_head / n_head_kv;
    if (tid < 8) smax[tid] = 0;
    __syncthreads();
    float qf[8][8];
#pragma unroll
    for (int g = 0; g < 8; ++g)
#pragma unroll
        for (int j = 0; j < 8; ++j)
            qf[g][j] = g < G ? __uint_as_float(uint32_t(q[(size_t(b) * n_head + hk * G + g) * D + c * 8 + j]) << 16) : 0.f;
    const seq_info si   = seq_info_of(n_kv[b], cfg);
    const int      n_mp = kv_page_tokens / P;
    float          mx[8];
#pragma unroll
    for (int g = 0; g < 8; ++g) mx[g] = -INFINITY;
    for (int it = 0; it < quest_chunk / PPP; ++it) {
        const int  i  = blockIdx.x * quest_chunk + it * PPP + r;
        const bool ok = i < si.n_items;
        float      u[8];
#pragma unroll
        for (int g = 0; g < 8; ++g) u[g] = 0.f;
        if (ok) {
            const int        p    = i / n_mp, mp = i % n_mp;
            const uint16_t * src  = bounds + ((size_t(pages[size_t(b) * pages_stride + p]) * n_head_kv + hk) * n_mp + mp) * 2 * D;
            const uint4      hv   = *reinterpret_cast<const uint4 *>(src + c * 8);
            const uint4      lv   = *reinterpret_cast<const uint4 *>(src + D + c * 8);
            const uint32_t   hw[4] = {hv.x, hv.y, hv.z, hv.w}, lw[4] = {lv.x, lv.y, lv.z, lv.w};
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float h = (j & 1) ? bf16_hi(hw[j / 2]) : bf16_lo(hw[j / 2]);
                const float l = (j & 1) ? bf16_hi(lw[j / 2]) : bf16_lo(lw[j / 2]);
#pragma unroll
                for (int g = 0; g < 8; ++g)
                    if (g < G) u[g] += fmaxf(qf[g][j] * h, qf[g][j] * l);
            }
        }
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            if (g < G) {
#pragma unroll
                for (int o = TPR / 2; o >= 1; o >>= 1) u[g] += __shfl_xor_sync(0xffffffffu, u[g], o);
                if (ok && c == 0) {
                    scores[(size_t(b) * n_head + hk * G + g) * stride + i] = u[g];
                    if (i >= si.e0 && i < si.e1 && u[g] == u[g]) mx[g] = fmaxf(mx[g], u[g]);
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
        if (g < G) {
            float m = mx[g];
            for (int o = 16; o >= 1; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            if ((tid & 31) == 0 && m != -INFINITY) atomicMax(&smax[g], sel_key(m));
        }
    }
    head_max_flush(smax, G, head_max + size_t(b) * n_head + hk * G);
}

// Block (512 tokens, KV head, sequence): exact scores scale * q . k of the G query heads, D / 8 threads per row.
constexpr int topk_chunk = 512;
template <int D>
__global__ void __launch_bounds__(128)
    topk_score_kernel(const uint16_t * __restrict__ q, int n_head, int n_head_kv, const uint16_t * __restrict__ k_pool,
                      const int32_t * __restrict__ pages, int64_t pages_stride, const int32_t * __restrict__ n_kv,
                      float scale, sel_cfg cfg, float * __restrict__ scores, int64_t stride,
                      uint32_t * __restrict__ head_max) {
    constexpr int TPR = D / 8, RPP = 128 / TPR;
    __shared__ uint32_t smax[8];
    const int           hk = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, c = tid % TPR, r = tid / TPR;
    const int           G  = n_head / n_head_kv;
    if (tid < 8) smax[tid] = 0;
    __syncthreads();
    float qf[8][8];
#pragma unroll
    for (int g = 0; g < 8; ++g)
#pragma unroll
        for (int j = 0; j < 8; ++j)
            qf[g][j] = g < G ? scale * __uint_as_float(uint32_t(q[(size_t(b) * n_head + hk * G + g) * D + c * 8 + j]) << 16)
                             : 0.f;
    const int      T  = n_kv[b];
    const seq_info si = seq_info_of(T, cfg);
    float          mx[8];
#pragma unroll
    for (int g = 0; g < 8; ++g) mx[g] = -INFINITY;
    constexpr int NR = 4; // rows in flight per thread
    for (int it = 0; it < topk_chunk / (RPP * NR); ++it) {
        uint4 kv[NR];
        int   tt[NR];
#pragma unroll
        for (int u = 0; u < NR; ++u) {
            tt[u]       = blockIdx.x * topk_chunk + (it * NR + u) * RPP + r;
            const int t = min(tt[u], T - 1);
            kv[u]       = *reinterpret_cast<const uint4 *>(
                k_pool + ((size_t(pages[size_t(b) * pages_stride + t / kv_page_tokens]) * n_head_kv + hk) * kv_page_tokens +
                          t % kv_page_tokens) * D + c * 8);
        }
#pragma unroll
        for (int u = 0; u < NR; ++u) {
            const int      t    = tt[u];
            const bool     ok   = t < T;
            const uint32_t w[4] = {kv[u].x, kv[u].y, kv[u].z, kv[u].w};
            float          s[8];
#pragma unroll
            for (int g = 0; g < 8; ++g) s[g] = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float k = (j & 1) ? bf16_hi(w[j / 2]) : bf16_lo(w[j / 2]);
#pragma unroll
                for (int g = 0; g < 8; ++g)
                    if (g < G) s[g] = fmaf(qf[g][j], k, s[g]);
            }
#pragma unroll
            for (int g = 0; g < 8; ++g) {
                if (g < G) {
#pragma unroll
                    for (int o = TPR / 2; o >= 1; o >>= 1) s[g] += __shfl_xor_sync(0xffffffffu, s[g], o);
                    if (ok && c == 0) {
                        scores[(size_t(b) * n_head + hk * G + g) * stride + t] = s[g];
                        if (t >= si.e0 && t < si.e1 && s[g] == s[g]) mx[g] = fmaxf(mx[g], s[g]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
        if (g < G) {
            float m = mx[g];
            for (int o = 16; o >= 1; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            if ((tid & 31) == 0 && m != -INFINITY) atomicMax(&smax[g], sel_key(m));
        }
    }
    head_max_flush(smax, G, head_max + size_t(b) * n_head + hk * G);
}

// Block (4096 items, head, sequence): each head's best eligible score of given scores (decode_topk_plan_gpu).
__global__ void __launch_bounds__(256)
    head_max_kernel(const float * __restrict__ scores, int64_t stride, int n_head, const int32_t * __restrict__ n_kv,
                    sel_cfg cfg, uint32_t * __restrict__ head_max) {
    __shared__ uint32_t smax[1];
    const int           h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    if (tid == 0) smax[0] = 0;
    __syncthreads();
    const seq_info si = seq_info_of(n_kv[b], cfg);
    const float *  s  = scores + (size_t(b) * n_head + h) * stride;
    float          m  = -INFINITY;
    for (int j = 0; j < chunk_items / 256; ++j) {
        const int i = blockIdx.x * chunk_items + j * 256 + tid;
        if (i >= si.e0 && i < si.e1 && s[i] == s[i]) m = fmaxf(m, s[i]);
    }
    for (int o = 16; o >= 1; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((tid & 31) == 0 && m != -INFINITY) atomicMax(&smax[0], sel_key(m));
    __syncthreads();
    if (tid == 0 && smax[0] != 0) atomicMax(head_max + size_t(b) * n_head + h, smax[0]);
}

// ---- top-k ----

// (1) Block (chunk, entry, sequence): selection keys of the chunk's items and the list's histogram of their top
// 8 bits (shared memory, one atomic per distinct bin of a warp, then one global atomic per bin). Items are strided across the block (coalesced), each
// thread's 16 loads issued before they are used.
constexpr int per_thread = chunk_items / 256;
// One block of 256 threads: chunk `chunk` of entry e of sequence b (hm, coarse: the block's shared memory). Scores
// and head maxima are read through L2 (__ldcg: written by other blocks of the same launch in the fused use).
__device__ __forceinline__ void group_keys_chunk(int chunk, int e, int n_entry, int b, const float * __restrict__ scores,
                                                 int64_t stride, int n_head, int group, const int32_t * __restrict__ n_kv,
                                                 sel_cfg cfg, const uint32_t * head_max, uint32_t * __restrict__ keys,
                                                 uint32_t * __restrict__ hist, float (&hm)[8], uint32_t (&coarse)[256]) {
    const int    tid = threadIdx.x, lane = tid & 31;
    const size_t list = size_t(b) * n_entry + e;
    coarse[tid]       = 0;
    if (tid < group) {
        const uint32_t k = __ldcg(head_max + size_t(b) * n_head + e * group + tid);
        hm[tid]          = k == 0 ? -INFINITY : key_float(k);
    }
    __syncthreads();
    const seq_info si   = seq_info_of(n_kv[b], cfg);
    const float *  s0   = scores + (size_t(b) * n_head + e * group) * stride;
    uint32_t *     kl   = keys + list * stride;
    const int      base = chunk * chunk_items + tid;
    float          v[per_thread];
    if (group == 1) {
#pragma unroll
        for (int j = 0; j < per_thread; ++j) {
            const int i = base + j * 256;
            v[j]        = i >= si.e0 && i < si.e1 ? __ldcg(s0 + i) : 0.f;
        }
    } else {
#pragma unroll
        for (int j = 0; j < per_thread; ++j) v[j] = -INFINITY;
        for (int g = 0; g < group; ++g) {
            const float m = hm[g];
            if (!(m > -INFINITY)) continue;
#pragma unroll
            for (int j = 0; j < per_thread; ++j) {
                const int i = base + j * 256;
                if (i >= si.e0 && i < si.e1) {
                    const float x = __ldcg(s0 + size_t(g) * stride + i) - m;
                    v[j]          = x > v[j] ? x : v[j]; // NaN compares false: ignored
                }
            }
        }
    }
    uint32_t * hl = hist + list * n_hist;
#pragma unroll
    for (int j = 0; j < per_thread; ++j) {
        const int  i   = base + j * 256;
        const bool el  = i >= si.e0 && i < si.e1;
        const uint32_t key = el ? sel_key(v[j]) : 0u;
        if (i < si.n_items) kl[i] = key;
        const int      cb     = el ? int(key >> 24) : -1;
        const unsigned cpeers = __match_any_sync(0xffffffffu, cb);
        if (cb >= 0 && lane == __ffs(cpeers) - 1) atomicAdd(&coarse[cb], uint32_t(__popc(cpeers)));
    }
    __syncthreads();
    if (coarse[tid] != 0) atomicAdd(hl + tid, coarse[tid]);
}

__global__ void __launch_bounds__(256)
    group_keys_kernel(const float * __restrict__ scores, int64_t stride, int n_head, int group,
                      const int32_t * __restrict__ n_kv, sel_cfg cfg, const uint32_t * __restrict__ head_max,
                      uint32_t * __restrict__ keys, uint32_t * __restrict__ hist) {
    __shared__ float    hm[8];
    __shared__ uint32_t coarse[256];
    group_keys_chunk(blockIdx.x, blockIdx.y, gridDim.y, blockIdx.z, scores, stride, n_head, group, n_kv, cfg, head_max,
                     keys, hist, hm, coarse);
}

// Warp 0 of a block: the digit of a 256-bin histogram (highest first) holding the need-th largest item, and the
// count above it (digit 0 when fewer are counted, which the callers rule out). Lane l holds bins 255 - 8l - j
// (j = 0..7) in registers: one round of loads, no reloads while searching.
__device__ __forceinline__ void warp_load256(const uint32_t * h, uint32_t (&v)[8]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = __ldcg(h + 255 - 8 * lane - j);
}
__device__ __forceinline__ void warp_pick256_regs(const uint32_t (&v)[8], int need, int & digit, int & above) {
    const int lane = threadIdx.x & 31;
    int       sum  = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) sum += int(v[j]);
    int incl = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int x = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += x;
    }
    const int excl = incl - sum;
    int       d = -1, cum = 0;
    if ((excl < need && incl >= need) || (lane == 31 && incl < need)) {
        cum       = excl;
        d         = 255 - 8 * lane;
        bool done = false;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (!done) {
                const int hd = int(v[j]);
                if (cum + hd >= need || d == 0) {
                    done = true;
                } else {
                    cum += hd;
                    --d;
                }
            }
        }
    }
    const unsigned m   = __ballot_sync(0xffffffffu, d >= 0);
    const int      src = __ffs(m) - 1;
    digit              = __shfl_sync(0xffffffffu, d, src);
    above              = __shfl_sync(0xffffffffu, cum, src);
}
__device__ __forceinline__ void warp_pick256(const uint32_t * h, int need, int & digit, int & above) {
    uint32_t v[8];
    warp_load256(h, v);
    warp_pick256_regs(v, need, digit, above);
}

// (2) Block (chunk, entry, sequence): the coarse bin holding the k-th largest key (every block finds the same),
// and the histogram of bits 23..16 of the keys in it -> the list's fine histogram (one shared-memory histogram per
// warp, then one global atomic per bin).
constexpr int fc_chunks = 4; // chunks per block of fine_kernel and cand_kernel: one histogram pick for 4096 keys
// One block of 256 threads: chunks blk * fc_chunks .. + fc_chunks - 1 of list `list` (fine_w, s_cbin: the block's
// shared memory). Keys and the histogram are read through L2 (written by other blocks of the same launch in the
// one-launch pipeline).
__device__ __forceinline__ void fine_chunk(int blk, size_t list, const seq_info & si, const uint32_t * __restrict__ keys,
                                           int64_t stride, uint32_t * __restrict__ hist, uint32_t (&fine_w)[8][256],
                                           int & s_cbin) {
    const int tid = threadIdx.x;
    if (si.k == 0) return;
    const uint32_t * kl   = keys + list * stride; // the chunks' keys load while the bin is picked
    const int        base = blk * fc_chunks * chunk_items + tid;
    uint32_t         key[fc_chunks * per_thread];
#pragma unroll
    for (int j = 0; j < fc_chunks * per_thread; ++j)
        key[j] = base + j * 256 < si.n_items ? __ldcg(kl + base + j * 256) : 0u;
#pragma unroll
    for (int w = 0; w < 8; ++w) fine_w[w][tid] = 0;
    if (tid < 32) {
        int cb, ca;
        warp_pick256(hist + list * n_hist, si.k, cb, ca);
        if (tid == 0) s_cbin = cb;
    }
    __syncthreads();
    const int        cbin = s_cbin;
#pragma unroll
    for (int j = 0; j < fc_chunks * per_thread; ++j) // one histogram per warp: no contention between warps
        if (key[j] != 0 && int(key[j] >> 24) == cbin) atomicAdd(&fine_w[tid / 32][(key[j] >> 16) & 255u], 1u);
    __syncthreads();
    uint32_t f = 0;
#pragma unroll
    for (int w = 0; w < 8; ++w) f += fine_w[w][tid];
    if (f != 0) atomicAdd(hist + list * n_hist + 256 + tid, f);
}
__global__ void __launch_bounds__(256)
    fine_kernel(const uint32_t * __restrict__ keys, int64_t stride, const int32_t * __restrict__ n_kv, sel_cfg cfg,
                uint32_t * __restrict__ hist) {
    __shared__ uint32_t fine_w[8][256];
    __shared__ int      s_cbin;
    const size_t        list = size_t(blockIdx.z) * gridDim.y + blockIdx.y;
    fine_chunk(blockIdx.x, list, seq_info_of(n_kv[blockIdx.z], cfg), keys, stride, hist, fine_w, s_cbin);
}

// The 16-bit bin holding the k-th largest key and the count above it, from the coarse and fine histograms hl
// (warp 0 computes, the block gets it through shared memory).
__device__ __forceinline__ void pick16(const uint32_t * hl, int k, int * s_pick, int & bin, int & above) {
    if (threadIdx.x < 32) { // both histograms loaded at once
        uint32_t vc[8], vf[8];
        warp_load256(hl, vc);
        warp_load256(hl + 256, vf);
        int cbin, cabove;
        warp_pick256_regs(vc, k, cbin, cabove);
        int d, a;
        warp_pick256_regs(vf, k - cabove, d, a);
        if (threadIdx.x == 0) {
            s_pick[0] = cbin * 256 + d;
            s_pick[1] = cabove + a;
        }
    }
    __syncthreads();
    bin   = s_pick[0];
    above = s_pick[1];
}

// (3) Block (chunk, entry, sequence): tokens of keys above the bin -> chunk_cnt; keys in it -> candidates (gathered
// in shared memory, one global atomic per block). One block of 256 threads: chunks blk * fc_chunks .. of list
// `list`; returns the bin and the count above it (bin_out, above_out) to the block.
struct cand_smem {
    uint64_t sc[fc_chunks * chunk_items];
    int      s_nc, s_base, wsum[fc_chunks][8], s_pick[2];
};
__device__ __forceinline__ void cand_chunk(int blk, size_t list, const seq_info & si, const sel_cfg & cfg,
                                           const uint32_t * __restrict__ keys, int64_t stride,
                                           const uint32_t * __restrict__ hist, uint64_t * __restrict__ cand,
                                           uint32_t * __restrict__ cand_count, int32_t * __restrict__ chunk_cnt,
                                           int n_chunks, cand_smem & cs, int & bin_out, int & above_out) {
    const int tid = threadIdx.x, lane = tid & 31;
    const int c0  = blk * fc_chunks;
    if (si.k == 0) {
        if (tid < fc_chunks && c0 + tid < n_chunks) chunk_cnt[list * n_chunks + c0 + tid] = 0;
        return;
    }
    const uint32_t * kl   = keys + list * stride; // the chunks' keys load while the bin is picked
    const int        base = c0 * chunk_items + tid;
    uint32_t         key[fc_chunks * per_thread];
#pragma unroll
    for (int j = 0; j < fc_chunks * per_thread; ++j)
        key[j] = base + j * 256 < si.n_items ? __ldcg(kl + base + j * 256) : 0u;
    if (tid == 0) cs.s_nc = 0;
    int bin, above;
    pick16(hist + list * n_hist, si.k, cs.s_pick, bin, above);
#pragma unroll
    for (int c = 0; c < fc_chunks; ++c) {
        int w = 0;
#pragma unroll
        for (int jj = 0; jj < per_thread; ++jj) {
            const int j  = c * per_thread + jj;
            const int i  = base + j * 256;
            const int kb = int(key[j] >> 16);
            if (key[j] != 0 && kb > bin) w += item_weight(si, cfg.page, i);
            const bool     is_c = key[j] != 0 && kb == bin;
            const unsigned m    = __ballot_sync(0xffffffffu, is_c);
            if (m != 0) { // gathered in shared memory, then one global atomic per block
                const int leader = __ffs(m) - 1;
                int       pos    = 0;
                if (lane == leader) pos = atomicAdd(&cs.s_nc, __popc(m));
                pos = __shfl_sync(0xffffffffu, pos, leader);
                if (is_c) cs.sc[pos + __popc(m & ((1u << lane) - 1u))] = comp_key(key[j], i);
            }
        }
        for (int o = 16; o >= 1; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (lane == 0) cs.wsum[c][tid / 32] = w;
    }
    __syncthreads();
    if (tid < fc_chunks && c0 + tid < n_chunks) {
        int t = 0;
        for (int i = 0; i < 8; ++i) t += cs.wsum[tid][i];
        chunk_cnt[list * n_chunks + c0 + tid] = t;
    }
    if (tid == 0) cs.s_base = cs.s_nc > 0 ? int(atomicAdd(cand_count + list, uint32_t(cs.s_nc))) : 0;
    __syncthreads();
    for (int i = tid; i < cs.s_nc; i += 256)
        if (cs.s_base + i < cand_cap) cand[list * cand_cap + cs.s_base + i] = cs.sc[i];
    bin_out   = bin;
    above_out = above;
}
__global__ void __launch_bounds__(256)
    cand_kernel(const uint32_t * __restrict__ keys, int64_t stride, const int32_t * __restrict__ n_kv, sel_cfg cfg,
                const uint32_t * __restrict__ hist, uint64_t * __restrict__ cand, uint32_t * __restrict__ cand_count,
                int32_t * __restrict__ chunk_cnt, int n_chunks) {
    __shared__ cand_smem cs;
    const size_t         list = size_t(blockIdx.z) * gridDim.y + blockIdx.y;
    int                  bin, above;
    cand_chunk(blockIdx.x, list, seq_info_of(n_kv[blockIdx.z], cfg), cfg, keys, stride, hist, cand, cand_count,
               chunk_cnt, n_chunks, cs, bin, above);
}

// (4) Block per list: exact threshold (composite key of the k-th largest) among the candidates, candidate tokens
// added to chunk_cnt, threshold -> info[list][2..3].
constexpr int sel_threads = 1024;
constexpr int smem_items  = 1024; // candidates the select kernel keeps in shared memory
__global__ void __launch_bounds__(sel_threads)
    select_kernel(const uint32_t * __restrict__ keys, int64_t stride, const int32_t * __restrict__ n_kv, sel_cfg cfg,
                  int n_entry, uint32_t * __restrict__ hist, const uint64_t * __restrict__ cand,
                  const uint32_t * __restrict__ cand_count,
                  int32_t * __restrict__ chunk_cnt, int n_chunks, uint32_t * __restrict__ info) {
    __shared__ uint32_t h256[256];
    __shared__ int      cnt[max_chunks];
    __shared__ uint64_t s_prefix;
    __shared__ int      s_need, s_match, s_n, s_pick[2];
    __shared__ uint64_t s_items[smem_items];
    const size_t        list = blockIdx.x;
    const int           b    = int(list / n_entry), tid = threadIdx.x, lane = tid & 31;
    const seq_info      si   = seq_info_of(n_kv[b], cfg);
    if (si.k == 0) return;
    int bin, above;
    pick16(hist + list * n_hist, si.k, s_pick, bin, above);
    __syncthreads();
    if (tid < n_hist) hist[list * n_hist + tid] = 0; // both histograms, cleared for the next call
    if (tid == 0) {
        info[list * 4]     = uint32_t(bin);
        info[list * 4 + 1] = uint32_t(above);
    }
    const uint32_t   n_c      = cand_count[list];
    const bool       overflow = n_c > uint32_t(cand_cap);
    const uint64_t * cl       = cand + list * cand_cap;
    const uint32_t * kl       = keys + list * stride;
    // fn(composite, valid) for every candidate, called by all threads the same number of times (warp intrinsics
    // inside): from the shared-memory copy, the candidate list, or all keys of the bin when the list overflowed.
    bool in_smem = false;
    auto for_each = [&](auto fn) {
        constexpr int U = 4; // items per thread loaded before any is used
        const int     n = in_smem ? s_n : overflow ? si.n_items : int(n_c);
        for (int base = 0; base < n; base += U * sel_threads) {
            uint64_t c[U];
            bool     ok[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int i = base + u * sel_threads + tid;
                ok[u]       = i < n;
                c[u]        = 0;
                if (ok[u]) {
                    if (in_smem) {
                        c[u] = s_items[i];
                    } else if (!overflow) {
                        c[u] = cl[i];
                    } else {
                        const uint32_t key = kl[i];
                        ok[u]              = key != 0 && int(key >> 16) == bin;
                        c[u]               = comp_key(key, i);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) fn(c[u], ok[u]);
        }
    };
    const bool all_in_smem = !overflow && n_c <= uint32_t(smem_items);
    if (all_in_smem) {
        for (int i = tid; i < int(n_c); i += sel_threads) s_items[i] = cl[i];
        if (tid == 0) s_n = int(n_c);
        __syncthreads();
        in_smem = true;
    }
    uint64_t prefix;
    if (all_in_smem) { // few candidates (all distinct): the need-th largest is the one with need - 1 above it
        const int need = si.k - above;
        if (tid < int(n_c)) {
            const uint64_t c = s_items[tid];
            int            r = 0;
#pragma unroll 8
            for (int j = 0; j < int(n_c); ++j) r += s_items[j] > c;
            if (r == need - 1) s_prefix = c;
        }
        __syncthreads();
        prefix = s_prefix;
    } else {
        uint64_t mask = uint64_t(0xffff) << 48;
        int      need = si.k - above;
        prefix        = uint64_t(bin) << 48;
        for (int sh = 40; sh >= 0; sh -= 8) {
            for (int i = tid; i < 256; i += sel_threads) h256[i] = 0;
            __syncthreads();
            for_each([&](uint64_t c, bool ok) {
                const int      d     = ok && (c & mask) == prefix ? int((c >> sh) & 255u) : -1;
                const unsigned peers = __match_any_sync(0xffffffffu, d);
                if (d >= 0 && lane == __ffs(peers) - 1) atomicAdd(&h256[d], uint32_t(__popc(peers)));
            });
            __syncthreads();
            if (tid < 32) { // warp 0: lane l sums digits 255 - 8l .. 248 - 8l, a suffix scan finds the digit
                int sum = 0;
#pragma unroll
                for (int j = 0; j < 8; ++j) sum += int(h256[255 - 8 * lane - j]);
                int incl = sum;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int x = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o) incl += x;
                }
                const int excl = incl - sum;
                // the k-th largest lies in this lane's digits; with too few counted (cannot happen), digit 0
                if ((excl < need && incl >= need) || (lane == 31 && incl < need)) {
                    int cum = excl, d = 255 - 8 * lane;
                    for (int j = 0; j < 8; ++j, --d) {
                        if (cum + int(h256[d]) >= need || d == 0) break;
                        cum += int(h256[d]);
                    }
                    s_prefix = prefix | (uint64_t(d) << sh);
                    s_need   = need - cum;
                    s_match  = int(h256[d]);
                }
            }
            __syncthreads();
            prefix = s_prefix;
            need   = s_need;
            mask |= uint64_t(255u) << sh;
            if (sh == 0) break;
            if (!in_smem && s_match <= smem_items) { // few left: copy them to shared memory for the remaining passes
                if (tid == 0) s_n = 0;
                __syncthreads();
                for_each([&](uint64_t c, bool ok) {
                    const bool     take = ok && (c & mask) == prefix;
                    const unsigned m    = __ballot_sync(0xffffffffu, take);
                    int            pos  = 0;
                    if (m != 0 && lane == __ffs(m) - 1) pos = atomicAdd(&s_n, __popc(m));
                    pos = __shfl_sync(0xffffffffu, pos, m != 0 ? __ffs(m) - 1 : 0);
                    if (take) s_items[pos + __popc(m & ((1u << lane) - 1u))] = c;
                });
                __syncthreads();
                in_smem = true;
            }
            __syncthreads();
        }
    }
    // prefix: the composite key of the k-th largest item; every candidate >= it is selected.
    in_smem = all_in_smem;
    for (int i = tid; i < n_chunks && i < max_chunks; i += sel_threads) cnt[i] = 0;
    __syncthreads();
    for_each([&](uint64_t c, bool ok) {
        const bool     take  = ok && c >= prefix;
        const int      i     = int(~uint32_t(c));
        const int      w     = take ? item_weight(si, cfg.page, i) : 0;
        const int      ch    = take ? min(i / chunk_items, max_chunks - 1) : -1;
        const bool     full  = w == cfg.page; // the common weight: counted once per warp
        const unsigned peers = __match_any_sync(0xffffffffu, full ? ch : -2 - lane);
        if (take && w != 0) {
            if (!full) atomicAdd(&cnt[ch], w);
            else if (lane == __ffs(peers) - 1) atomicAdd(&cnt[ch], __popc(peers) * w);
        }
    });
    __syncthreads();
    for (int i = tid; i < n_chunks && i < max_chunks; i += sel_threads)
        if (cnt[i] != 0) chunk_cnt[list * n_chunks + i] += cnt[i];
    if (tid == 0) {
        info[list * 4 + 2] = uint32_t(prefix >> 32);
        info[list * 4 + 3] = uint32_t(prefix);
    }
}

// (5) Block (chunk, entry, sequence): the chunk's selected tokens, ascending, at the prefix of the chunks before
// it; block 0 also writes the list's ranges and index count. One block of 256 threads: chunk `chunk` of list `list`.
// PIPE (inside the one-launch pipeline): chunk counts and threshold read through L2 (written by other blocks of the
// launch; else through the read-only path, which the blocks of a list share in L1: with L2 loads the write
// kernel ran at 97 us against 45 at 128k batch 16 under Nsight Compute), and the chunk's keys dropped from L2 once
// read (no write-back; nothing reads them after this).
using wr_red_t  = cub::BlockReduce<int, 256>;
using wr_scan_t = cub::BlockScan<int, 256>;
struct write_smem {
    typename wr_red_t::TempStorage  red;
    typename wr_scan_t::TempStorage scan;
    int                             s_off;
};
template <typename T> __device__ __forceinline__ T ld_list(const T * p, bool l2) { return l2 ? __ldcg(p) : __ldg(p); }
template <bool PIPE>
__device__ __forceinline__ void write_chunk(int chunk, size_t list, const seq_info & si, const sel_cfg & cfg,
                                            uint32_t * __restrict__ keys, int64_t stride,
                                            const int32_t * __restrict__ chunk_cnt, int n_chunks,
                                            const uint32_t * __restrict__ info, int32_t * __restrict__ ranges,
                                            int32_t * __restrict__ n_ranges, int32_t * __restrict__ idx,
                                            int32_t * __restrict__ n_idx, int64_t idx_stride, write_smem & sm) {
    const int       tid   = threadIdx.x;
    const bool      valid = si.k > 0;
    const int32_t * cc    = chunk_cnt + list * n_chunks;
    // the chunk's keys and the threshold load while the offsets are summed
    const int        i0 = chunk * chunk_items + tid * per_thread;
    uint32_t *       kl = keys + list * stride;
    uint32_t         key[per_thread];
    if (valid && stride % 4 == 0 && i0 + per_thread <= si.n_items) { // one 16-byte load
        static_assert(per_thread == 4, "one uint4 of keys per thread");
        const uint4 kv = __ldcg(reinterpret_cast<const uint4 *>(kl + i0));
        key[0] = kv.x, key[1] = kv.y, key[2] = kv.z, key[3] = kv.w;
    } else {
#pragma unroll
        for (int j = 0; j < per_thread; ++j) key[j] = valid && i0 + j < si.n_items ? __ldcg(kl + i0 + j) : 0u;
    }
    const int      bin = valid ? int(ld_list(info + list * 4, PIPE)) : 0;
    const uint64_t thr =
        valid ? (uint64_t(ld_list(info + list * 4 + 2, PIPE)) << 32) | ld_list(info + list * 4 + 3, PIPE) : 0;
    int off = 0, total = 0; // tokens of the chunks before this one, of all chunks
    if (valid)
        for (int i = tid; i < n_chunks; i += 256) {
            const int x = ld_list(cc + i, PIPE);
            total += x;
            off += i < chunk ? x : 0;
        }
    off = wr_red_t(sm.red).Sum(off);
    __syncthreads();
    total = wr_red_t(sm.red).Sum(total);
    if (tid == 0) {
        sm.s_off = off;
        if (chunk == 0) {
            n_idx[list]    = total;
            n_ranges[list] = si.nr;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                if (r < si.nr) {
                    ranges[(list * decode_plan_max_ranges + r) * 2]     = si.rb[r];
                    ranges[(list * decode_plan_max_ranges + r) * 2 + 1] = si.re[r];
                }
            }
        }
    }
    __syncthreads();
    if (!valid) return;
    uint32_t sel = 0; // bit j: item i0 + j selected
    int      w   = 0;
#pragma unroll
    for (int j = 0; j < per_thread; ++j) {
        const int kb = int(key[j] >> 16);
        if (key[j] != 0 && (kb > bin || (kb == bin && comp_key(key[j], i0 + j) >= thr))) {
            sel |= 1u << j;
            w += item_weight(si, cfg.page, i0 + j);
        }
    }
    int pos;
    wr_scan_t(sm.scan).ExclusiveSum(w, pos);
    int32_t * out = idx + list * idx_stride + sm.s_off + pos;
    for (int j = 0; j < per_thread; ++j) {
        if (!(sel >> j & 1u)) continue;
        const int i = i0 + j;
        if (cfg.page == 1) {
            *out++ = i;
        } else {
            for (int t = i * cfg.page; t < (i + 1) * cfg.page; ++t)
                if (!in_ranges(si, t)) *out++ = t;
        }
    }
    if constexpr (PIPE) { // whole lines of this chunk's keys (every thread's loads are done)
        __syncthreads();
        const int64_t n = stride - int64_t(chunk) * chunk_items < chunk_items ? stride - int64_t(chunk) * chunk_items
                                                                             : chunk_items;
        const uintptr_t b = (reinterpret_cast<uintptr_t>(kl + int64_t(chunk) * chunk_items) + 127) & ~uintptr_t(127);
        const uintptr_t e = reinterpret_cast<uintptr_t>(kl + int64_t(chunk) * chunk_items + n) & ~uintptr_t(127);
        for (uintptr_t ad = b + uintptr_t(tid) * 128; ad < e; ad += 256 * 128)
            asm volatile("discard.global.L2 [%0], 128;" ::"l"(ad) : "memory");
    }
}
__global__ void __launch_bounds__(256)
    write_kernel(uint32_t * __restrict__ keys, int64_t stride, const int32_t * __restrict__ n_kv, sel_cfg cfg,
                 const int32_t * __restrict__ chunk_cnt, int n_chunks, const uint32_t * __restrict__ info,
                 int32_t * __restrict__ ranges, int32_t * __restrict__ n_ranges, int32_t * __restrict__ idx,
                 int32_t * __restrict__ n_idx, int64_t idx_stride) {
    __shared__ write_smem sm;
    const size_t          list = size_t(blockIdx.z) * gridDim.y + blockIdx.y;
    write_chunk<false>(blockIdx.x, list, seq_info_of(n_kv[blockIdx.z], cfg), cfg, keys, stride, chunk_cnt, n_chunks,
                       info, ranges, n_ranges, idx, n_idx, idx_stride, sm);
}

// ---- Loki in one kernel (one selection per KV head, few lists: batch 1) ----
//
// Block of fz_threads per ticket = (list, piece of nt * fz_threads tokens), every ticket resident at once (cooperative
// launch); the blocks of a list wait for each other on a per-list counter, so the per-head scores never leave the
// chip: (1) scores of the G heads (shared memory) and their maxima; barrier; (2) group keys (as group_keys_kernel)
// and the coarse histogram; barrier; (3) fine histogram (fine_kernel); barrier; (4) keys above the 16-bit bin
// counted, keys in it appended as candidates (cand_kernel); the last block to arrive finds the threshold
// (select_kernel); (5) every block writes its selected tokens ascending (write_kernel). One launch instead of six.
constexpr int fz_threads    = 512;
constexpr int fz_nt         = 8;                  // tokens per thread, at most (4 or 8)
constexpr int fz_piece      = fz_threads * fz_nt; // tokens per ticket, at most
constexpr int fz_max_pieces = 1024;               // pieces per list the threshold pass counts in shared memory

__device__ __forceinline__ uint32_t ld_acquire_u32(const uint32_t * p) {
    uint32_t v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// The block's global writes are made visible (barrier, then one fence by thread 0, which is cumulative: the
// pattern of a cooperative-groups grid barrier), then the block counts itself in; returns the old count (thread 0).
__device__ __forceinline__ uint32_t list_arrive(uint32_t * ctr) {
    __syncthreads();
    uint32_t old = 0;
    if (threadIdx.x == 0) {
        __threadfence();
        old = atomicAdd(ctr, 1u);
    }
    return old;
}
__device__ __forceinline__ void list_wait(const uint32_t * ctr, uint32_t target) {
    if (threadIdx.x == 0) {
        while (ld_acquire_u32(ctr) < target) __nanosleep(32);
        __threadfence();
    }
    __syncthreads();
}

// Shared memory of the one-kernel threshold pass.
struct fz_select_smem {
    uint64_t           items[smem_items];
    int                cnt[fz_max_pieces];
    uint32_t           h256[256];
    unsigned long long ext;
    uint64_t           prefix;
    int                need, match, n;
};

// select_kernel's threshold pass for one list by one block of NTH threads, over pieces of piece_tokens; reads
// what other blocks of this launch wrote through L2 (__ldcg).
template <int NTH>
__device__ __noinline__ void fz_select(const uint32_t * kl, int bin, int above, uint32_t * hl, const uint64_t * cl,
                                       uint32_t n_c, const seq_info & si, int32_t * cc, int n_pieces, int piece_tokens,
                                       uint32_t * il, fz_select_smem & sm) {
    const int tid = threadIdx.x, lane = tid & 31;
    for (int i = tid; i < n_hist; i += NTH) hl[i] = 0; // both histograms, cleared for the next call
    if (tid == 0) {
        il[0] = uint32_t(bin);
        il[1] = uint32_t(above);
    }
    const bool overflow = n_c > uint32_t(cand_cap);
    bool       in_smem  = false;
    auto       for_each = [&](auto fn) {
        constexpr int U = 4;
        const int     n = in_smem ? sm.n : overflow ? si.n_items : int(n_c);
        for (int base = 0; base < n; base += U * NTH) {
            uint64_t c[U];
            bool     ok[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int i = base + u * NTH + tid;
                ok[u]       = i < n;
                c[u]        = 0;
                if (ok[u]) {
                    if (in_smem) {
                        c[u] = sm.items[i];
                    } else if (!overflow) {
                        c[u] = __ldcg(reinterpret_cast<const unsigned long long *>(cl) + i);
                    } else {
                        const uint32_t key = __ldcg(kl + i);
                        ok[u]              = key != 0 && int(key >> 16) == bin;
                        c[u]               = comp_key(key, i);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) fn(c[u], ok[u]);
        }
    };
    const bool all_in_smem = !overflow && n_c <= uint32_t(smem_items);
    if (all_in_smem) {
        for (int i = tid; i < int(n_c); i += NTH)
            sm.items[i] = __ldcg(reinterpret_cast<const unsigned long long *>(cl) + i);
        if (tid == 0) sm.n = int(n_c);
        __syncthreads();
        in_smem = true;
    }
    // Radix select on the candidates' composite keys below the 16-bit bin, 8 bits a pass; it stops as soon as the
    // items under the prefix are all taken (threshold: their minimum) or one is needed (their maximum), usually
    // after the two passes over the key's low 16 bits (composite keys are distinct).
    uint64_t prefix;
    {
        uint64_t mask = uint64_t(0xffff) << 48;
        int      need = si.k - above;
        prefix        = uint64_t(bin) << 48;
        for (int sh = 40; sh >= 0; sh -= 8) {
            for (int i = tid; i < 256; i += NTH) sm.h256[i] = 0;
            __syncthreads();
            for_each([&](uint64_t c, bool ok) {
                const int      d     = ok && (c & mask) == prefix ? int((c >> sh) & 255u) : -1;
                const unsigned peers = __match_any_sync(0xffffffffu, d);
                if (d >= 0 && lane == __ffs(peers) - 1) atomicAdd(&sm.h256[d], uint32_t(__popc(peers)));
            });
            __syncthreads();
            if (tid < 32) {
                int sum = 0;
#pragma unroll
                for (int j = 0; j < 8; ++j) sum += int(sm.h256[255 - 8 * lane - j]);
                int incl = sum;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int x = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o) incl += x;
                }
                const int excl = incl - sum;
                if ((excl < need && incl >= need) || (lane == 31 && incl < need)) {
                    int cum = excl, d = 255 - 8 * lane;
                    for (int j = 0; j < 8; ++j, --d) {
                        if (cum + int(sm.h256[d]) >= need || d == 0) break;
                        cum += int(sm.h256[d]);
                    }
                    sm.prefix = prefix | (uint64_t(d) << sh);
                    sm.need   = need - cum;
                    sm.match  = int(sm.h256[d]);
                }
            }
            __syncthreads();
            prefix = sm.prefix;
            need   = sm.need;
            mask |= uint64_t(255u) << sh;
            if (sh == 0) break;
            const int match = sm.match;
            if (need == 1 || need == match) { // the largest, or the smallest, of the items under the prefix
                __syncthreads();
                if (tid == 0) sm.ext = need == 1 ? 0ull : ~0ull;
                __syncthreads();
                const bool hi = need == 1;
                for_each([&](uint64_t c, bool ok) {
                    if (ok && (c & mask) == prefix) {
                        if (hi)
                            atomicMax(&sm.ext, static_cast<unsigned long long>(c));
                        else
                            atomicMin(&sm.ext, static_cast<unsigned long long>(c));
                    }
                });
                __syncthreads();
                prefix = sm.ext;
                break;
            }
            if (!in_smem && match <= smem_items) {
                if (tid == 0) sm.n = 0;
                __syncthreads();
                for_each([&](uint64_t c, bool ok) {
                    const bool     take = ok && (c & mask) == prefix;
                    const unsigned m    = __ballot_sync(0xffffffffu, take);
                    int            pos  = 0;
                    if (m != 0 && lane == __ffs(m) - 1) pos = atomicAdd(&sm.n, __popc(m));
                    pos = __shfl_sync(0xffffffffu, pos, m != 0 ? __ffs(m) - 1 : 0);
                    if (take) sm.items[pos + __popc(m & ((1u << lane) - 1u))] = c;
                });
                __syncthreads();
                in_smem = true;
            }
            __syncthreads();
        }
    }
    in_smem = all_in_smem;
    for (int i = tid; i < n_pieces; i += NTH) sm.cnt[i] = 0;
    __syncthreads();
    for_each([&](uint64_t c, bool ok) {
        const bool     take  = ok && c >= prefix;
        const int      ch    = take ? int(~uint32_t(c)) / piece_tokens : -1;
        const unsigned peers = __match_any_sync(0xffffffffu, ch);
        if (take && lane == __ffs(peers) - 1) atomicAdd(&sm.cnt[ch], __popc(peers));
    });
    __syncthreads();
    for (int i = tid; i < n_pieces; i += NTH)
        if (sm.cnt[i] != 0) cc[i] = __ldcg(cc + i) + sm.cnt[i];
    if (tid == 0) {
        il[2] = uint32_t(prefix >> 32);
        il[3] = uint32_t(prefix);
    }
}

template <int G>
__global__ void __launch_bounds__(fz_threads, 2)
    loki_fused_kernel(const uint16_t * __restrict__ q, int n_head, int n_head_kv, int D,
                      const float * __restrict__ proj, const __half * __restrict__ lk, int d_pad,
                      const int32_t * __restrict__ pages, int64_t pages_stride, const int32_t * __restrict__ n_kv,
                      sel_cfg cfg, int nt, int n_pieces, int n_tickets, uint32_t * head_max, uint32_t * bar,
                      uint32_t * keys, int64_t stride, uint32_t * hist, uint64_t * cand, uint32_t * cand_count,
                      int32_t * chunk_cnt, uint32_t * info, int32_t * ranges, int32_t * n_ranges, int32_t * idx,
                      int32_t * n_idx, int64_t idx_stride) {
    using scan_t = cub::BlockScan<int, fz_threads>;
    using red_t  = cub::BlockReduce<int, fz_threads>;
    extern __shared__ float sacc[]; // [G][fz_piece] scores of the ticket's tokens (first P[:, :d] and q)
    __shared__ float        qd[G][128];
    __shared__ uint32_t     smax[8];
    __shared__ float        hm[8];
    __shared__ uint32_t     hist_w[8][256]; // coarse, then fine histogram; one per 2 warps
    __shared__ union {
        typename scan_t::TempStorage scan;
        typename red_t::TempStorage  red;
    } cub_tmp;
    __shared__ fz_select_smem sel;
    __shared__ int            s_cbin, s_cabove, s_last, s_off, wsum[fz_threads / 32], s_pick[2];
    const int                 tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
    const int                 nc   = d_pad / 8;
    const size_t              pelm = size_t(d_pad) * kv_page_tokens;
    for (int ticket = blockIdx.x; ticket < n_tickets; ticket += gridDim.x) {
        const int      list = ticket / n_pieces, piece = ticket % n_pieces;
        const int      b = list / n_head_kv, hk = list % n_head_kv;
        const int      T    = n_kv[b];
        const seq_info si   = seq_info_of(T, cfg);
        uint32_t *     lbar = bar + list;
        if (si.k == 0) { // nothing to select: the plan is the dense part (written here or by write_kernel)
            if (piece == 0 && tid == 0) {
                n_idx[list]    = 0;
                n_ranges[list] = si.nr;
                for (int r = 0; r < si.nr; ++r) {
                    ranges[(list * decode_plan_max_ranges + r) * 2]     = si.rb[r];
                    ranges[(list * decode_plan_max_ranges + r) * 2 + 1] = si.re[r];
                }
            }
            continue;
        }
        __syncthreads(); // the previous ticket's shared memory is free
        if (tid < 8) smax[tid] = 0;
        for (int o = tid; o < 8 * 256; o += fz_threads) (&hist_w[0][0])[o] = 0;
        { // q' = q P[:, :d] of the G heads in the CPU's summation order (as loki_query_kernel)
            float *       Ps = sacc;
            float *       qs = sacc + D * d_pad;
            const float * P  = proj + size_t(hk) * D * d_pad;
            for (int o = tid; o < D * d_pad; o += fz_threads) Ps[o] = P[o];
            for (int o = tid; o < G * D; o += fz_threads)
                qs[o] = __uint_as_float(uint32_t(q[(size_t(b) * n_head + hk * G) * D + o]) << 16);
            __syncthreads();
            for (int o = tid; o < G * d_pad; o += fz_threads) {
                const int g = o / d_pad, j = o % d_pad;
                float     y = 0.f;
                for (int i = 0; i < D; ++i) y = fmaf(qs[g * D + i], Ps[i * d_pad + j], y);
                qd[g][j] = y;
            }
            __syncthreads();
        }
        // (1) scores, as loki_score_kernel (same summation order): tokens t0 + u * fz_threads one at a time with all
        // their 8-dim chunks in flight at once (a warp reads its 32 tokens' rows of a page's 4 KiB block together),
        // the next token's page-table entry loading meanwhile; kept in shared memory (sacc[g][u * fz_threads + tid])
        // with the G heads' maxima
        const int t0 = piece * nt * fz_threads + tid;
        float     mx[G];
#pragma unroll
        for (int g = 0; g < G; ++g) mx[g] = -INFINITY;
        const int32_t * pt = pages + size_t(b) * pages_stride;
        int             pg = __ldg(pt + min(t0, T - 1) / kv_page_tokens);
#pragma unroll 1
        for (int u = 0; u < nt; ++u) {
            const int t    = t0 + u * fz_threads;
            const int pg_u = pg;
            if (u + 1 < nt) pg = __ldg(pt + min(t + fz_threads, T - 1) / kv_page_tokens); // past the end: a duplicate
            float acc[G];
#pragma unroll
            for (int g = 0; g < G; ++g) acc[g] = 0.f;
            if (t < T) {
                const __half * base = lk + (size_t(pg_u) * n_head_kv + hk) * pelm + size_t(t % kv_page_tokens) * 8;
#pragma unroll 1
                for (int c0 = 0; c0 < nc; c0 += 4) {
                    uint4 v[4];
#pragma unroll
                    for (int c = 0; c < 4; ++c)
                        v[c] = c0 + c < nc
                                   ? __ldg(reinterpret_cast<const uint4 *>(base + size_t(c0 + c) * kv_page_tokens * 8))
                                   : make_uint4(0, 0, 0, 0);
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        if (c0 + c >= nc) break;
                        const __half2 * hv = reinterpret_cast<const __half2 *>(&v[c]);
                        float           kf[8];
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            const float2 f = __half22float2(hv[j]);
                            kf[2 * j] = f.x, kf[2 * j + 1] = f.y;
                        }
#pragma unroll
                        for (int g = 0; g < G; ++g)
#pragma unroll
                            for (int j = 0; j < 8; ++j) acc[g] = fmaf(kf[j], qd[g][(c0 + c) * 8 + j], acc[g]);
                    }
                }
            }
            const bool el = t >= si.e0 && t < si.e1;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                sacc[g * fz_piece + u * fz_threads + tid] = acc[g];
                if (el && acc[g] == acc[g]) mx[g] = fmaxf(mx[g], acc[g]);
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float m = mx[g];
            for (int o = 16; o >= 1; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            if (lane == 0 && m != -INFINITY) atomicMax(&smax[g], sel_key(m));
        }
        __syncthreads();
        if (tid < G && smax[tid] != 0) atomicMax(head_max + size_t(b) * n_head + hk * G + tid, smax[tid]);
        list_arrive(lbar);
        list_wait(lbar, uint32_t(n_pieces));
        // (2) group keys (group_keys_kernel) and the coarse histogram
        if (tid < G) {
            const uint32_t k = __ldcg(head_max + size_t(b) * n_head + hk * G + tid);
            hm[tid]          = k == 0 ? -INFINITY : key_float(k);
        }
        __syncthreads();
        uint32_t * skey = reinterpret_cast<uint32_t *>(sacc); // keys over the head-0 scores once read
        uint32_t * kl   = keys + size_t(list) * stride;
        uint32_t * hl   = hist + size_t(list) * n_hist;
#pragma unroll
        for (int u = 0; u < fz_nt; ++u) {
            if (u >= nt) break;
            const int  t  = t0 + u * fz_threads;
            const bool el = t >= si.e0 && t < si.e1;
            float      v;
            if (G == 1) {
                v = sacc[u * fz_threads + tid];
            } else {
                v = -INFINITY;
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const float m = hm[g];
                    if (!(m > -INFINITY)) continue;
                    const float x = sacc[g * fz_piece + u * fz_threads + tid] - m;
                    v             = x > v ? x : v; // NaN compares false: ignored
                }
            }
            const uint32_t ku          = el ? sel_key(v) : 0u;
            skey[u * fz_threads + tid] = ku; // after this thread's reads of the same slot
            const int      cb          = el ? int(ku >> 24) : -1;
            const unsigned cpeers      = __match_any_sync(0xffffffffu, cb);
            if (cb >= 0 && lane == __ffs(cpeers) - 1) atomicAdd(&hist_w[warp & 7][cb], uint32_t(__popc(cpeers)));
        }
        __syncthreads();
        if (tid < 256) {
            uint32_t f = 0;
#pragma unroll
            for (int w = 0; w < 8; ++w) f += hist_w[w][tid], hist_w[w][tid] = 0;
            if (f != 0) atomicAdd(hl + tid, f);
        }
        list_arrive(lbar);
        list_wait(lbar, uint32_t(2 * n_pieces));
        // (3) fine histogram of the coarse bin holding the k-th key (fine_kernel)
        if (tid < 32) {
            int cb, ca;
            warp_pick256(hl, si.k, cb, ca);
            if (tid == 0) s_cbin = cb, s_cabove = ca;
        }
        __syncthreads();
        {
            const int cbin = s_cbin;
#pragma unroll
            for (int u = 0; u < fz_nt; ++u)
                if (u < nt && skey[u * fz_threads + tid] != 0 && int(skey[u * fz_threads + tid] >> 24) == cbin)
                    atomicAdd(&hist_w[warp & 7][(skey[u * fz_threads + tid] >> 16) & 255u], 1u);
        }
        __syncthreads();
        if (tid < 256) {
            uint32_t f = 0;
#pragma unroll
            for (int w = 0; w < 8; ++w) f += hist_w[w][tid];
            if (f != 0) atomicAdd(hl + 256 + tid, f);
        }
        list_arrive(lbar);
        list_wait(lbar, uint32_t(3 * n_pieces));
        // (4) keys above the 16-bit bin counted, keys in it appended as candidates (cand_kernel); every key to
        // memory for the threshold pass's overflow case
        if (tid < 32) { // the fine bin (the coarse one is known from (3)), as pick16
            int d, a;
            warp_pick256(hl + 256, si.k - s_cabove, d, a);
            if (tid == 0) s_pick[0] = s_cbin * 256 + d, s_pick[1] = s_cabove + a;
        }
        __syncthreads();
        const int bin = s_pick[0], above = s_pick[1];
        {
            int w = 0;
#pragma unroll
            for (int u = 0; u < fz_nt; ++u) {
                if (u >= nt) break;
                const int t  = t0 + u * fz_threads;
                const int kb = int(skey[u * fz_threads + tid] >> 16);
                if (t < si.n_items) kl[t] = skey[u * fz_threads + tid];
                if (skey[u * fz_threads + tid] != 0 && kb > bin) ++w;
                const bool     is_c = skey[u * fz_threads + tid] != 0 && kb == bin;
                const unsigned m    = __ballot_sync(0xffffffffu, is_c);
                if (m != 0) {
                    const int leader = __ffs(m) - 1;
                    uint32_t  pos    = 0;
                    if (lane == leader) pos = atomicAdd(cand_count + list, uint32_t(__popc(m)));
                    pos = __shfl_sync(0xffffffffu, pos, leader) + uint32_t(__popc(m & ((1u << lane) - 1u)));
                    if (is_c && pos < uint32_t(cand_cap))
                        cand[size_t(list) * cand_cap + pos] = comp_key(skey[u * fz_threads + tid], t);
                }
            }
            for (int o = 16; o >= 1; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
            if (lane == 0) wsum[warp] = w;
            __syncthreads();
            if (tid == 0) {
                int t = 0;
                for (int i = 0; i < fz_threads / 32; ++i) t += wsum[i];
                chunk_cnt[size_t(list) * n_pieces + piece] = t;
            }
        }
        {
            const uint32_t old = list_arrive(lbar);
            if (tid == 0) s_last = old == uint32_t(4 * n_pieces - 1);
            __syncthreads();
        }
        if (s_last) { // every piece is in: this block finds the threshold
            fz_select<fz_threads>(kl, bin, above, hl, cand + size_t(list) * cand_cap, __ldcg(cand_count + list), si,
                      chunk_cnt + size_t(list) * n_pieces, n_pieces, nt * fz_threads, info + size_t(list) * 4, sel);
            list_arrive(lbar);
        }
        list_wait(lbar, uint32_t(4 * n_pieces + 1));
        // (5) this piece's selected tokens, ascending, after those of the pieces before it (write_kernel)
        const int      bin5 = int(__ldcg(info + size_t(list) * 4));
        const uint64_t thr =
            (uint64_t(__ldcg(info + size_t(list) * 4 + 2)) << 32) | __ldcg(info + size_t(list) * 4 + 3);
        int off = 0, total = 0;
        for (int i = tid; i < n_pieces; i += fz_threads) {
            const int x = __ldcg(chunk_cnt + size_t(list) * n_pieces + i);
            total += x;
            off += i < piece ? x : 0;
        }
        off = red_t(cub_tmp.red).Sum(off);
        __syncthreads();
        total = red_t(cub_tmp.red).Sum(total);
        if (tid == 0) {
            s_off = off;
            if (piece == 0) {
                n_idx[list]    = total;
                n_ranges[list] = si.nr;
                for (int r = 0; r < si.nr; ++r) {
                    ranges[(list * decode_plan_max_ranges + r) * 2]     = si.rb[r];
                    ranges[(list * decode_plan_max_ranges + r) * 2 + 1] = si.re[r];
                }
            }
        }
        __syncthreads();
        int32_t * out = idx + size_t(list) * idx_stride + s_off;
#pragma unroll
        for (int u = 0; u < fz_nt;
             ++u) { // tokens u * fz_threads + tid of the piece: one scan per u keeps them ascending
            if (u >= nt) break;
            const int  t   = t0 + u * fz_threads;
            const int  kb  = int(skey[u * fz_threads + tid] >> 16);
            const bool sel = skey[u * fz_threads + tid] != 0 &&
                             (kb > bin5 || (kb == bin5 && comp_key(skey[u * fz_threads + tid], t) >= thr));
            int pos, n_sel;
            __syncthreads();
            scan_t(cub_tmp.scan).ExclusiveSum(int(sel), pos, n_sel);
            if (sel) out[pos] = t;
            out += n_sel;
        }
    }
}

// (3) and (4) in one launch, for token lists (page 1, weight 1 per item) of at most fz_max_pieces chunks: the
// candidate kernel's blocks count themselves in per list, and the last block of a list finds its threshold
// (fz_select, the select kernel's result), so the threshold of one list overlaps the candidates of the others.
__global__ void __launch_bounds__(256)
    cand_select_kernel(uint32_t * __restrict__ keys, int64_t stride, const int32_t * __restrict__ n_kv, sel_cfg cfg,
                       uint32_t * hist, uint64_t * cand, uint32_t * cand_count, int32_t * chunk_cnt, int n_chunks,
                       uint32_t * bar, uint32_t * info) {
    __shared__ union {
        cand_smem      cand;
        fz_select_smem sel;
    } u;
    __shared__ int s_last;
    const size_t   list = size_t(blockIdx.z) * gridDim.y + blockIdx.y;
    const seq_info si   = seq_info_of(n_kv[blockIdx.z], cfg);
    int            bin = 0, above = 0;
    cand_chunk(blockIdx.x, list, si, cfg, keys, stride, hist, cand, cand_count, chunk_cnt, n_chunks, u.cand, bin, above);
    const uint32_t old = list_arrive(bar + list);
    if (threadIdx.x == 0) {
        s_last = old == gridDim.x - 1;
        __threadfence(); // acquire side: the other blocks' candidates, counts and chunk counts
    }
    __syncthreads();
    if (s_last && si.k > 0)
        fz_select<256>(keys + list * stride, bin, above, hist + list * n_hist, cand + list * cand_cap,
                       __ldcg(cand_count + list), si, chunk_cnt + list * n_chunks, n_chunks, chunk_items,
                       info + list * 4, u.sel);
}

// ---- Loki scores and group keys in one persistent launch (one selection per KV head, many lists: batch > 1) ----
//
// Tickets are handed out in order from a counter: the score chunks of list s interleaved with the group-key chunks
// of list s - lag. A key ticket waits until every score chunk of its list is in (they were handed out at least
// (lag - 1) lists earlier, to blocks that wait on nothing, so the wait ends); by then the list's scores are still in
// L2 (the low-rank keys stream through with evict-first), they are read from there and their lines are dropped
// from L2 without a write-back (discard.global.L2): the per-head scores need not make a round trip to memory.
// The keys and the coarse histogram are those of group_keys_kernel, the scores those of loki_score_kernel.

// Drops the whole 128-byte lines inside [p, p + n floats) from L2 without writing them back.
__device__ __forceinline__ void discard_lines(const float * p, int64_t n, int tid, int n_threads) {
    const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + 127) & ~uintptr_t(127);
    const uintptr_t e = reinterpret_cast<uintptr_t>(p + n) & ~uintptr_t(127);
    for (uintptr_t a = b + uintptr_t(tid) * 128; a < e; a += uintptr_t(n_threads) * 128)
        asm volatile("discard.global.L2 [%0], 128;" ::"l"(a) : "memory");
}

// One block of 256 threads: the group keys and coarse histogram of chunk `chunk` of list `list` (KV head hk of
// sequence b) from the G heads' scores, which other blocks of the launch wrote (read through L2, loaded together
// with the head maxima; group_keys_chunk's arithmetic), then the chunk's score lines dropped from L2.
template <int G>
__device__ __forceinline__ void loki_keys_chunk(int chunk, int list, int hk, int b, int n_head, const int32_t * n_kv,
                                                sel_cfg cfg, float * scores, int64_t stride, const uint32_t * head_max,
                                                uint32_t * __restrict__ keys, uint32_t * __restrict__ hist,
                                                float (&hm)[8], uint32_t (&coarse)[256]) {
    const int tid = threadIdx.x, lane = tid & 31;
    coarse[tid]   = 0;
    if (tid < G) {
        const uint32_t k = __ldcg(head_max + size_t(b) * n_head + hk * G + tid);
        hm[tid]          = k == 0 ? -INFINITY : key_float(k);
    }
    const seq_info si   = seq_info_of(n_kv[b], cfg);
    const float *  s0   = scores + (size_t(b) * n_head + hk * G) * stride;
    const int      base = chunk * chunk_items + tid;
    float          sv[G][per_thread];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int j = 0; j < per_thread; ++j) {
            const int i = base + j * 256;
            sv[g][j]    = i >= si.e0 && i < si.e1 ? __ldcg(s0 + size_t(g) * stride + i) : 0.f;
        }
    __syncthreads();
    float v[per_thread];
#pragma unroll
    for (int j = 0; j < per_thread; ++j) v[j] = -INFINITY;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float m = hm[g];
        if (!(m > -INFINITY)) continue;
#pragma unroll
        for (int j = 0; j < per_thread; ++j) {
            const float x = sv[g][j] - m;
            v[j]          = x > v[j] ? x : v[j]; // NaN compares false: ignored
        }
    }
    uint32_t * kl = keys + size_t(list) * stride;
#pragma unroll
    for (int j = 0; j < per_thread; ++j) {
        const int      i      = base + j * 256;
        const bool     el     = i >= si.e0 && i < si.e1;
        const uint32_t key    = el ? sel_key(G == 1 ? sv[0][j] : v[j]) : 0u;
        if (i < si.n_items) kl[i] = key;
        const int      cb     = el ? int(key >> 24) : -1;
        const unsigned cpeers = __match_any_sync(0xffffffffu, cb);
        if (cb >= 0 && lane == __ffs(cpeers) - 1) atomicAdd(&coarse[cb], uint32_t(__popc(cpeers)));
    }
    __syncthreads(); // also: every thread's reads of the chunk's scores are done
    if (coarse[tid] != 0) atomicAdd(hist + size_t(list) * n_hist + tid, coarse[tid]);
    const int64_t i0 = int64_t(chunk) * chunk_items;
    const int64_t n  = stride - i0 < chunk_items ? stride - i0 : chunk_items;
    for (int g = 0; g < G; ++g) discard_lines(scores + (size_t(b) * n_head + hk * G + g) * stride + i0, n, tid, 256);
}

template <int G>
__global__ void __launch_bounds__(256, 3)
    loki_score_keys_kernel(const float * __restrict__ qrot, int n_head, int n_head_kv, const __half * __restrict__ lk,
                           int d_pad, const int32_t * __restrict__ pages, int64_t pages_stride,
                           const int32_t * __restrict__ n_kv, sel_cfg cfg, float * scores, int64_t stride,
                           uint32_t * head_max, uint32_t * ctr, int n_chunks, int n_list, int lag,
                           uint32_t * __restrict__ keys, uint32_t * __restrict__ hist) {
    __shared__ float    qd[G][128];
    __shared__ uint32_t smax[8];
    __shared__ float    hm[8];
    __shared__ uint32_t coarse[256];
    __shared__ int      s_ticket[2];
    const int           tid = threadIdx.x, T = n_chunks;
    const int           n_tickets = 2 * n_list * T;
    if (tid == 0) s_ticket[0] = int(atomicAdd(ctr, 1u));
    for (int par = 0;; par ^= 1) {
        __syncthreads(); // the previous ticket's shared memory is free, this ticket's number is in
        const int id = s_ticket[par];
        if (id >= n_tickets) return;
        if (tid == 0) s_ticket[par ^ 1] = int(atomicAdd(ctr, 1u)); // the next ticket, in flight meanwhile
        bool is_key;
        int  list, chunk;
        if (id < lag * T) {
            is_key = false, list = id / T, chunk = id % T;
        } else {
            const int j  = id - lag * T;
            const int nd = (n_list - lag) * 2 * T;
            if (j < nd) {
                const int st = lag + j / (2 * T), w = j % (2 * T);
                is_key = (w & 1) != 0, chunk = w >> 1, list = is_key ? st - lag : st;
            } else {
                is_key = true, list = n_list - lag + (j - nd) / T, chunk = (j - nd) % T;
            }
        }
        const int b = list / n_head_kv, hk = list % n_head_kv;
        if (!is_key) {
            loki_score_chunk<G, true>(chunk, hk, b, qrot, n_head, n_head_kv, lk, d_pad, pages, pages_stride, n_kv, cfg,
                                      scores, stride, head_max, qd, smax);
            list_arrive(ctr + 1 + list);
        } else {
            list_wait(ctr + 1 + list, uint32_t(T));
            loki_keys_chunk<G>(chunk, list, hk, b, n_head, n_kv, cfg, scores, stride, head_max, keys, hist, hm, coarse);
        }
    }
}

// ---- Loki's whole selection in one persistent launch (decode_select_args::loki_pipe; measured slower on the H100
// than the persistent score + group-key kernel and the separate top-k kernels: bench/results/cuda-sparse-decode-h100.md) ----
//
// Tickets in rounds of L = T + T + 3 * ceil(T / 4) (T: 1024-token chunks per list); in round r, stage j works on
// list r - j * lag: (0) score chunks of 1024 tokens (loki_score_chunk), (1) group keys and coarse histogram
// (loki_keys_chunk), (2) fine histogram over 4 chunks (fine_chunk), (3) candidates over 4 chunks (cand_chunk), the
// last of which finds the list's threshold (fz_select: the select kernel's work), (4) the selected tokens of 4 chunks
// (write_chunk). Score tickets alternate with the others in a round, so the low-rank keys stream all along while
// the latency-bound steps of older lists run beside them. A stage waits on its list's counter for the stage before
// (lag rounds earlier, so the wait seldom happens); every ticket waits only on tickets handed out before it. The
// per-head scores and the keys stay in L2 between stages and are dropped from it after use (no write-back).
struct pipe_smem {
    union {
        cand_smem      cand;
        uint32_t       fine_w[8][256];
        fz_select_smem sel;
        write_smem     wr;
    } u;
    int s_last, s_cbin, s_bin, s_above;
};

template <int G>
__global__ void __launch_bounds__(256, 3)
    loki_pipe_kernel(const float * __restrict__ qrot, int n_head, int n_head_kv, const __half * __restrict__ lk,
                     int d_pad, const int32_t * __restrict__ pages, int64_t pages_stride,
                     const int32_t * __restrict__ n_kv, sel_cfg cfg, float * scores, int64_t stride,
                     uint32_t * head_max, uint32_t * ctr, int n_chunks, int n_list, int lag, uint32_t * keys,
                     uint32_t * hist, uint64_t * cand, uint32_t * cand_count, int32_t * chunk_cnt, uint32_t * info,
                     int32_t * ranges, int32_t * n_ranges, int32_t * idx, int32_t * n_idx, int64_t idx_stride) {
    __shared__ float     qd[G][128];
    __shared__ uint32_t  smax[8];
    __shared__ float     hm[8];
    __shared__ uint32_t  coarse[256];
    __shared__ int       s_ticket[2];
    __shared__ pipe_smem ps;
    const int            tid = threadIdx.x, T = n_chunks, T4 = (n_chunks + fc_chunks - 1) / fc_chunks;
    const int            n_other = T + 3 * T4, L = T + n_other;
    const int            n_tickets = (n_list + 4 * lag) * L;
    // per-list counter values: scores in, keys in, fine in, candidates in (+1: threshold found)
    const uint32_t c_s = uint32_t(T), c_k = c_s + uint32_t(T), c_f = c_k + uint32_t(T4), c_c = c_f + uint32_t(T4);
    if (tid == 0) s_ticket[0] = int(atomicAdd(ctr, 1u));
    for (int par = 0;; par ^= 1) {
        __syncthreads(); // the previous ticket's shared memory is free, this ticket's number is in
        const int id = s_ticket[par];
        if (id >= n_tickets) return;
        if (tid == 0) s_ticket[par ^ 1] = int(atomicAdd(ctr, 1u)); // the next ticket, in flight meanwhile
        const int r = id / L, w = id % L;
        int       stage, k; // k: the ticket's index within its stage's tickets of the list
        if (w < 2 * T && (w & 1) == 0) {
            stage = 0, k = w >> 1;
        } else {
            const int o = w < 2 * T ? w >> 1 : w - T; // index among the other tickets: writes, cand, fine, keys
            if (o < T4) stage = 4, k = o;
            else if (o < 2 * T4) stage = 3, k = o - T4;
            else if (o < 3 * T4) stage = 2, k = o - 2 * T4;
            else stage = 1, k = o - 3 * T4;
        }
        const int list = r - stage * lag;
        if (list < 0 || list >= n_list) continue;
        const int      b = list / n_head_kv, hk = list % n_head_kv;
        uint32_t *     lc = ctr + 1 + list;
        if (stage == 0) {
            loki_score_chunk<G, true>(k, hk, b, qrot, n_head, n_head_kv, lk, d_pad, pages, pages_stride, n_kv, cfg,
                                      scores, stride, head_max, qd, smax);
            list_arrive(lc);
        } else if (stage == 1) {
            list_wait(lc, c_s);
            loki_keys_chunk<G>(k, list, hk, b, n_head, n_kv, cfg, scores, stride, head_max, keys, hist, hm, coarse);
            list_arrive(lc);
        } else if (stage == 2) {
            list_wait(lc, c_k);
            fine_chunk(k, size_t(list), seq_info_of(n_kv[b], cfg), keys, stride, hist, ps.u.fine_w, ps.s_cbin);
            list_arrive(lc);
        } else if (stage == 3) {
            list_wait(lc, c_f);
            const seq_info si = seq_info_of(n_kv[b], cfg);
            int            bin = 0, above = 0;
            cand_chunk(k, size_t(list), si, cfg, keys, stride, hist, cand, cand_count, chunk_cnt, n_chunks, ps.u.cand,
                       bin, above);
            const uint32_t old = list_arrive(lc);
            if (tid == 0) {
                ps.s_last = old == c_c - 1;
                __threadfence(); // acquire side: the other candidate blocks' writes
            }
            __syncthreads();
            if (ps.s_last) { // every candidate block of the list is in: the threshold
                if (si.k > 0)
                    fz_select<256>(keys + size_t(list) * stride, bin, above, hist + size_t(list) * n_hist,
                                   cand + size_t(list) * cand_cap, __ldcg(cand_count + list), si,
                                   chunk_cnt + size_t(list) * n_chunks, n_chunks, chunk_items, info + size_t(list) * 4,
                                   ps.u.sel);
                list_arrive(lc);
            }
        } else {
            list_wait(lc, c_c + 1);
            const seq_info si = seq_info_of(n_kv[b], cfg);
            for (int c = k * fc_chunks; c < (k + 1) * fc_chunks && c < n_chunks; ++c) {
                write_chunk<true>(c, size_t(list), si, cfg, keys, stride, chunk_cnt, n_chunks, info, ranges, n_ranges,
                                  idx, n_idx, idx_stride, ps.u.wr);
                __syncthreads(); // the block's shared memory is reused by the next chunk
            }
        }
    }
}

// ---- host side ----

struct stage_dims {
    int     n_list, n_entry, n_chunks;
    int64_t n_items; // stride of keys and scores
    int64_t idx_stride;
};

status check_args(const decode_select_args & a, const char * who) {
    const int G = a.n_head_kv > 0 && a.n_head % a.n_head_kv == 0 ? a.n_head / a.n_head_kv : 0;
    if (G < 1 || G > 8 || a.group < 1 || G % a.group != 0 || (a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256))
        return error(status_code::UNSUPPORTED,
                     "cuda %s: n_head %d / n_head_kv %d, group %d, head_dim %d; supported: 1..8 query heads per KV "
                     "head, a group dividing them, head_dim 64, 128, 256",
                     who, a.n_head, a.n_head_kv, a.group, a.head_dim);
    if (a.n_kv_max > INT32_MAX / 2)
        return error(status_code::INVALID_ARGUMENT, "cuda %s: n_kv_max %lld too large", who, (long long)a.n_kv_max);
    return status::ok();
}

sel_cfg cfg_of(const decode_select_args & a, int page) {
    return sel_cfg{a.n_sink, a.n_local, page, a.budget_frac, a.budget_tokens};
}

// Grows the workspace and the plan for this call, clears the head maxima, histograms and candidate counts.
stage_dims stage_prepare(const decode_select_args & a, int page, decode_select_workspace & ws, decode_plan_buf & plan,
                         cudaStream_t stream) {
    stage_dims d;
    d.n_entry              = a.n_head / a.group;
    d.n_list               = a.n_seq * d.n_entry;
    d.n_items              = std::max<int64_t>(1, page == 1 ? a.n_kv_max : a.n_kv_max / page);
    d.n_chunks             = int((d.n_items + chunk_items - 1) / chunk_items);
    const sel_cfg c        = cfg_of(a, page);
    const int64_t k_max    = budget_keys(c, a.n_kv_max);
    d.idx_stride           = page == 1 ? k_max : (k_max + page - 1) / page * page;
    // zeroed: head maxima, candidate counts and the fused kernel's list counters, cleared by every call; hist:
    // cleared once here, then by the pick
    // kernel after reading it
    const size_t n_cleared = size_t(a.n_seq) * a.n_head + 3 * size_t(d.n_list) + 1;
    grow(ws.scores, ws.cap[0], size_t(a.n_seq) * a.n_head * d.n_items);
    grow(ws.keys, ws.cap[1], size_t(d.n_list) * d.n_items);
    grow(ws.zeroed, ws.cap[2], n_cleared);
    if (size_t(d.n_list) * n_hist > ws.cap[6]) {
        grow(ws.hist, ws.cap[6], size_t(d.n_list) * n_hist);
        LC_CUDA_CHECK(cudaMemset(ws.hist, 0, size_t(d.n_list) * n_hist * sizeof(uint32_t)));
    }
    grow(ws.cand, ws.cap[3], size_t(d.n_list) * cand_cap);
    grow(ws.chunk, ws.cap[4], size_t(d.n_list) * d.n_chunks);
    grow(ws.info, ws.cap[5], size_t(d.n_list) * 4);
    plan.reserve(d.n_list, d.idx_stride, false);
    LC_CUDA_CHECK(cudaMemsetAsync(ws.zeroed, 0, n_cleared * sizeof(uint32_t), stream));
    return d;
}

uint32_t * ws_head_max(decode_select_workspace & ws) { return ws.zeroed; }
uint32_t * ws_cand_count(decode_select_workspace & ws, const decode_select_args & a) {
    return ws.zeroed + size_t(a.n_seq) * a.n_head;
}
uint32_t * ws_bar(decode_select_workspace & ws, const decode_select_args & a, const stage_dims & d) {
    return ws.zeroed + size_t(a.n_seq) * a.n_head + size_t(d.n_list);
}
// The persistent score + group-key kernel's ticket counter and per-list score-chunk counts.
uint32_t * ws_ctr(decode_select_workspace & ws, const decode_select_args & a, const stage_dims & d) {
    return ws.zeroed + size_t(a.n_seq) * a.n_head + 2 * size_t(d.n_list);
}
uint32_t * ws_hist(decode_select_workspace & ws, const decode_select_args &, const stage_dims &) { return ws.hist; }

// keys_done: the keys and coarse histogram are already written (loki_score_keys_kernel).
void stage_run(const decode_select_args & a, const float * scores, int64_t stride, int page, const stage_dims & d,
               decode_select_workspace & ws, decode_plan_buf & plan, cudaStream_t stream, bool keys_done = false) {
    const sel_cfg c = cfg_of(a, page);
    const dim3    grid(unsigned(d.n_chunks), unsigned(d.n_entry), unsigned(a.n_seq));
    if (!keys_done) {
        group_keys_kernel<<<grid, 256, 0, stream>>>(scores, stride, a.n_head, a.group, a.n_kv, c, ws_head_max(ws),
                                                    ws.keys, ws_hist(ws, a, d));
        LC_CUDA_CHECK_LAUNCH();
    }
    const dim3 grid_fc(unsigned((d.n_chunks + fc_chunks - 1) / fc_chunks), unsigned(d.n_entry), unsigned(a.n_seq));
    fine_kernel<<<grid_fc, 256, 0, stream>>>(ws.keys, stride, a.n_kv, c, ws_hist(ws, a, d));
    LC_CUDA_CHECK_LAUNCH();
    if (page == 1 && d.n_chunks <= fz_max_pieces) { // threshold by each list's last candidate block
        cand_select_kernel<<<grid_fc, 256, 0, stream>>>(ws.keys, stride, a.n_kv, c, ws_hist(ws, a, d), ws.cand,
                                                        ws_cand_count(ws, a), ws.chunk, d.n_chunks, ws_bar(ws, a, d),
                                                        ws.info);
        LC_CUDA_CHECK_LAUNCH();
    } else {
        cand_kernel<<<grid_fc, 256, 0, stream>>>(ws.keys, stride, a.n_kv, c, ws_hist(ws, a, d), ws.cand,
                                                 ws_cand_count(ws, a), ws.chunk, d.n_chunks);
        LC_CUDA_CHECK_LAUNCH();
        select_kernel<<<unsigned(d.n_list), sel_threads, 0, stream>>>(ws.keys, stride, a.n_kv, c, d.n_entry,
                                                                       ws_hist(ws, a, d), ws.cand,
                                                                       ws_cand_count(ws, a), ws.chunk, d.n_chunks,
                                                                       ws.info);
        LC_CUDA_CHECK_LAUNCH();
    }
    write_kernel<<<grid, 256, 0, stream>>>(ws.keys, stride, a.n_kv, c, ws.chunk, d.n_chunks, ws.info, plan.ranges,
                                           plan.n_ranges, plan.idx, plan.n_idx, plan.idx_stride);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace

int64_t decode_select_rows_max(const decode_select_args & a, int page) {
    const sel_cfg c     = cfg_of(a, page);
    const int64_t k_max = budget_keys(c, a.n_kv_max);
    const int64_t idx   = page == 1 ? k_max : (k_max + page - 1) / page * page;
    return std::min<int64_t>(a.n_kv_max, idx + std::max(a.n_sink, 0) + std::max(a.n_local, 0) + page);
}

status decode_topk_plan_gpu(const decode_select_args & a, const float * scores, int64_t n_items_stride, int page,
                            decode_select_workspace & ws, decode_plan_buf & plan, cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_args(a, "decode_topk_plan_gpu"));
    if (page < 1 || kv_page_tokens % page != 0)
        return error(status_code::INVALID_ARGUMENT, "cuda decode_topk_plan_gpu: page %d must divide 64", page);
    if (a.n_seq <= 0) return status::ok();
    stage_dims d = stage_prepare(a, page, ws, plan, stream);
    if (n_items_stride < d.n_items)
        return error(status_code::INVALID_ARGUMENT, "cuda decode_topk_plan_gpu: score stride %lld < %lld items",
                     (long long)n_items_stride, (long long)d.n_items);
    // keys share the scores' stride here
    if (size_t(d.n_list) * n_items_stride > ws.cap[1]) grow(ws.keys, ws.cap[1], size_t(d.n_list) * n_items_stride);
    d.n_items = n_items_stride;
    head_max_kernel<<<dim3(unsigned(d.n_chunks), unsigned(a.n_head), unsigned(a.n_seq)), 256, 0, stream>>>(
        scores, n_items_stride, a.n_head, a.n_kv, cfg_of(a, page), ws_head_max(ws));
    LC_CUDA_CHECK_LAUNCH();
    stage_run(a, scores, n_items_stride, page, d, ws, plan, stream);
    return status::ok();
}

status loki_take_in_gpu(const decode_select_args & a, const loki_store_gpu & st, int64_t t0, cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_args(a, "loki_take_in_gpu"));
    if (st.d_pad < 8 || st.d_pad % 8 != 0 || st.d_pad > a.head_dim)
        return error(status_code::INVALID_ARGUMENT, "cuda loki: d_pad %d must be a multiple of 8 up to head_dim",
                     st.d_pad);
    const int64_t p_first = std::max<int64_t>(0, t0) / kv_page_tokens;
    const int64_t n_pages = (a.n_kv_max + kv_page_tokens - 1) / kv_page_tokens - p_first;
    if (a.n_seq <= 0 || n_pages <= 0) return status::ok();
    const size_t smem = size_t(kv_page_tokens) * (a.head_dim + 1) * sizeof(float);
    LC_CUDA_CHECK(cudaFuncSetAttribute(loki_take_in_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    loki_take_in_kernel<<<dim3(unsigned(n_pages), unsigned(a.n_head_kv), unsigned(a.n_seq)), 256, smem, stream>>>(
        a.k_pool, a.n_head_kv, a.head_dim, a.pages, a.pages_stride, a.n_kv, int(p_first), st.proj, st.d_pad,
        reinterpret_cast<__half *>(st.keys));
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

status loki_select_gpu(const decode_select_args & a, const loki_store_gpu & st, decode_select_workspace & ws,
                       decode_plan_buf & plan, cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_args(a, "loki_select_gpu"));
    if (st.d_pad < 8 || st.d_pad % 8 != 0 || st.d_pad > std::min(a.head_dim, 128))
        return error(status_code::INVALID_ARGUMENT, "cuda loki: d_pad %d must be a multiple of 8 up to 128", st.d_pad);
    if (a.n_seq <= 0) return status::ok();
    const stage_dims d = stage_prepare(a, 1, ws, plan, stream);
    const dim3   grid(unsigned((d.n_items + loki_chunk - 1) / loki_chunk), unsigned(a.n_head_kv), unsigned(a.n_seq));
    const int    G    = a.n_head / a.n_head_kv;
    const size_t smem = (size_t(a.head_dim) * st.d_pad + size_t(G) * a.head_dim) * sizeof(float);
    if (G <= 4 && a.group == G && !a.loki_separate) { // one selection per KV head: one kernel when it fits
        int n_sm = 0, dev = 0, per_sm = 0;
        LC_CUDA_CHECK(cudaGetDevice(&dev));
        LC_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
        using fused_fn = void (*)(const uint16_t *, int, int, int, const float *, const __half *, int, const int32_t *,
                                  int64_t, const int32_t *, sel_cfg, int, int, int, uint32_t *, uint32_t *, uint32_t *,
                                  int64_t, uint32_t *, uint64_t *, uint32_t *, int32_t *, uint32_t *, int32_t *,
                                  int32_t *, int32_t *, int32_t *, int64_t);
        constexpr fused_fn ffns[4] = {loki_fused_kernel<1>, loki_fused_kernel<2>, loki_fused_kernel<3>,
                                      loki_fused_kernel<4>};
        const fused_fn     fn      = ffns[G - 1];
        const size_t       dsmem =
            std::max<size_t>(size_t(G) * fz_piece, size_t(a.head_dim) * st.d_pad + size_t(G) * a.head_dim) *
            sizeof(float);
        LC_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dsmem)));
        LC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, fz_threads, dsmem));
        const int64_t resident = int64_t(per_sm) * n_sm;
        // Every ticket resident at once (a few long lists: batch 1), pieces of 4 tokens per thread where they fill
        // the GPU, else 8: the whole selection in this kernel. With more tickets than resident blocks the lists
        // would run in rounds in lock-step with idle memory at each barrier (measured slower than the separate
        // kernels at batch 16), so the separate kernels take them.
        for (int nt = 4; nt <= fz_nt; nt += 4) {
            const int64_t piece     = int64_t(nt) * fz_threads;
            const int64_t n_pieces  = (d.n_items + piece - 1) / piece;
            const int64_t n_tickets = n_pieces * d.n_list;
            if (n_tickets > resident || n_pieces > fz_max_pieces) continue;
            cudaLaunchConfig_t lc{};
            lc.gridDim          = dim3(unsigned(n_tickets));
            lc.blockDim         = dim3(fz_threads);
            lc.dynamicSmemBytes = dsmem;
            lc.stream           = stream;
            cudaLaunchAttribute attr{};
            attr.id              = cudaLaunchAttributeCooperative;
            attr.val.cooperative = 1;
            lc.attrs             = &attr;
            lc.numAttrs          = 1;
            LC_CUDA_CHECK(cudaLaunchKernelEx(&lc, fn, reinterpret_cast<const uint16_t *>(a.q), a.n_head, a.n_head_kv,
                                             a.head_dim, st.proj, reinterpret_cast<const __half *>(st.keys), st.d_pad,
                                             a.pages, a.pages_stride, a.n_kv, cfg_of(a, 1), nt, int(n_pieces),
                                             int(n_tickets), ws_head_max(ws), ws_bar(ws, a, d), ws.keys, d.n_items,
                                             ws_hist(ws, a, d), ws.cand, ws_cand_count(ws, a), ws.chunk, ws.info,
                                             plan.ranges, plan.n_ranges, plan.idx, plan.n_idx, plan.idx_stride));
            return status::ok();
        }
    }
    grow(ws.qrot, ws.cap[7], size_t(a.n_seq) * a.n_head * st.d_pad);
    LC_CUDA_CHECK(cudaFuncSetAttribute(loki_query_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    loki_query_kernel<<<dim3(unsigned(a.n_head_kv), unsigned(a.n_seq)), 256, smem, stream>>>(
        a.q, a.n_head, a.n_head_kv, a.head_dim, st.proj, st.d_pad, ws.qrot);
    LC_CUDA_CHECK_LAUNCH();
    if (a.group == G && !a.loki_separate && a.loki_pipe && d.n_chunks <= fz_max_pieces) {
        // per KV head: the whole selection in one persistent launch (measured slower than the path below)
        using pp_fn = void (*)(const float *, int, int, const __half *, int, const int32_t *, int64_t, const int32_t *,
                               sel_cfg, float *, int64_t, uint32_t *, uint32_t *, int, int, int, uint32_t *, uint32_t *,
                               uint64_t *, uint32_t *, int32_t *, uint32_t *, int32_t *, int32_t *, int32_t *,
                               int32_t *, int64_t);
        constexpr pp_fn pps[8] = {loki_pipe_kernel<1>, loki_pipe_kernel<2>, loki_pipe_kernel<3>,
                                  loki_pipe_kernel<4>, loki_pipe_kernel<5>, loki_pipe_kernel<6>,
                                  loki_pipe_kernel<7>, loki_pipe_kernel<8>};
        const pp_fn     fn     = pps[G - 1];
        int             n_sm = 0, dev = 0, per_sm = 0;
        LC_CUDA_CHECK(cudaGetDevice(&dev));
        LC_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
        LC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 256, 0));
        const int64_t resident = int64_t(std::max(per_sm, 1)) * n_sm;
        const int64_t T        = d.n_chunks;
        const int64_t L        = 2 * T + 3 * ((T + fc_chunks - 1) / fc_chunks);
        // lag: more than the tickets held at once (each block holds its ticket and the next) between a stage of a
        // list and the next, so that tickets seldom wait
        const int64_t lag    = (2 * resident + L - 1) / L + 1;
        const int64_t n_tick = (d.n_list + 4 * lag) * L;
        fn<<<unsigned(std::min<int64_t>(resident, n_tick)), 256, 0, stream>>>(
            ws.qrot, a.n_head, a.n_head_kv, reinterpret_cast<const __half *>(st.keys), st.d_pad, a.pages,
            a.pages_stride, a.n_kv, cfg_of(a, 1), ws.scores, d.n_items, ws_head_max(ws), ws_ctr(ws, a, d), int(T),
            d.n_list, int(lag), ws.keys, ws_hist(ws, a, d), ws.cand, ws_cand_count(ws, a), ws.chunk, ws.info,
            plan.ranges, plan.n_ranges, plan.idx, plan.n_idx, plan.idx_stride);
        LC_CUDA_CHECK_LAUNCH();
        return status::ok();
    }
    if (a.group == G && !a.loki_separate) { // per KV head: scores and group keys in one persistent launch
        using sk_fn = void (*)(const float *, int, int, const __half *, int, const int32_t *, int64_t, const int32_t *,
                               sel_cfg, float *, int64_t, uint32_t *, uint32_t *, int, int, int, uint32_t *, uint32_t *);
        constexpr sk_fn sks[8] = {loki_score_keys_kernel<1>, loki_score_keys_kernel<2>, loki_score_keys_kernel<3>,
                                  loki_score_keys_kernel<4>, loki_score_keys_kernel<5>, loki_score_keys_kernel<6>,
                                  loki_score_keys_kernel<7>, loki_score_keys_kernel<8>};
        const sk_fn     fn     = sks[G - 1];
        int             n_sm = 0, dev = 0, per_sm = 0;
        LC_CUDA_CHECK(cudaGetDevice(&dev));
        LC_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
        LC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 256, 0));
        const int64_t resident = int64_t(std::max(per_sm, 1)) * n_sm;
        const int64_t T        = (d.n_items + chunk_items - 1) / chunk_items;
        // lag: more than the resident blocks' worth of tickets between a list's last score chunk and its first key
        // chunk, so that key tickets seldom wait
        const int64_t lag      = std::min<int64_t>(d.n_list, (resident + 2 * T - 1) / (2 * T) + 1);
        const int64_t n_tick   = 2 * T * d.n_list;
        fn<<<unsigned(std::min<int64_t>(resident, n_tick)), 256, 0, stream>>>(
            ws.qrot, a.n_head, a.n_head_kv, reinterpret_cast<const __half *>(st.keys), st.d_pad, a.pages,
            a.pages_stride, a.n_kv, cfg_of(a, 1), ws.scores, d.n_items, ws_head_max(ws), ws_ctr(ws, a, d), int(T),
            d.n_list, int(lag), ws.keys, ws_hist(ws, a, d));
        LC_CUDA_CHECK_LAUNCH();
        stage_run(a, ws.scores, d.n_items, 1, d, ws, plan, stream, true);
        return status::ok();
    }
    using score_fn = void (*)(const float *, int, int, const __half *, int, const int32_t *, int64_t, const int32_t *,
                              sel_cfg, float *, int64_t, uint32_t *);
    constexpr score_fn fns[8] = {loki_score_kernel<1>, loki_score_kernel<2>, loki_score_kernel<3>,
                                 loki_score_kernel<4>, loki_score_kernel<5>, loki_score_kernel<6>,
                                 loki_score_kernel<7>, loki_score_kernel<8>};
    fns[G - 1]<<<grid, 256, 0, stream>>>(ws.qrot, a.n_head, a.n_head_kv, reinterpret_cast<const __half *>(st.keys),
                                         st.d_pad, a.pages, a.pages_stride, a.n_kv, cfg_of(a, 1), ws.scores, d.n_items,
                                         ws_head_max(ws));
    LC_CUDA_CHECK_LAUNCH();
    stage_run(a, ws.scores, d.n_items, 1, d, ws, plan, stream);
    return status::ok();
}

status quest_take_in_gpu(const decode_select_args & a, const quest_store_gpu & st, int64_t t0, cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_args(a, "quest_take_in_gpu"));
    if (st.page < 1 || kv_page_tokens % st.page != 0)
        return error(status_code::UNSUPPORTED, "cuda quest: page %d must divide 64", st.page);
    const int64_t p_first = std::max<int64_t>(0, t0) / kv_page_tokens;
    const int64_t n_pages = (a.n_kv_max + kv_page_tokens - 1) / kv_page_tokens - p_first;
    if (a.n_seq <= 0 || n_pages <= 0) return status::ok();
    quest_take_in_kernel<<<dim3(unsigned(n_pages), unsigned(a.n_head_kv), unsigned(a.n_seq)), 256, 0, stream>>>(
        a.k_pool, a.n_head_kv, a.head_dim, a.pages, a.pages_stride, a.n_kv, int(p_first), st.page, st.bounds);
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

status quest_select_gpu(const decode_select_args & a, const quest_store_gpu & st, decode_select_workspace & ws,
                        decode_plan_buf & plan, cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_args(a, "quest_select_gpu"));
    if (st.page < 1 || kv_page_tokens % st.page != 0)
        return error(status_code::UNSUPPORTED, "cuda quest: page %d must divide 64", st.page);
    if (a.n_seq <= 0) return status::ok();
    const stage_dims d = stage_prepare(a, st.page, ws, plan, stream);
    const dim3 grid(unsigned((d.n_items + quest_chunk - 1) / quest_chunk), unsigned(a.n_head_kv), unsigned(a.n_seq));
    const sel_cfg c = cfg_of(a, st.page);
    switch (a.head_dim) {
    case 64:
        quest_score_kernel<64><<<grid, 128, 0, stream>>>(a.q, a.n_head, a.n_head_kv, st.bounds, st.page, a.pages,
                                                         a.pages_stride, a.n_kv, c, ws.scores, d.n_items, ws_head_max(ws));
        break;
    case 128:
        quest_score_kernel<128><<<grid, 128, 0, stream>>>(a.q, a.n_head, a.n_head_kv, st.bounds, st.page, a.pages,
                                                          a.pages_stride, a.n_kv, c, ws.scores, d.n_items, ws_head_max(ws));
        break;
    default:
        quest_score_kernel<256><<<grid, 128, 0, stream>>>(a.q, a.n_head, a.n_head_kv, st.bounds, st.page, a.pages,
                                                          a.pages_stride, a.n_kv, c, ws.scores, d.n_items, ws_head_max(ws));
        break;
    }
    LC_CUDA_CHECK_LAUNCH();
    stage_run(a, ws.scores, d.n_items, st.page, d, ws, plan, stream);
    return status::ok();
}

status topk_select_gpu(const decode_select_args & a, decode_select_workspace & ws, decode_plan_buf & plan,
                       cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_args(a, "topk_select_gpu"));
    if (a.n_seq <= 0) return status::ok();
    const stage_dims d = stage_prepare(a, 1, ws, plan, stream);
    const dim3       grid(unsigned((d.n_items + topk_chunk - 1) / topk_chunk), unsigned(a.n_head_kv), unsigned(a.n_seq));
    const sel_cfg    c = cfg_of(a, 1);
    switch (a.head_dim) {
    case 64:
        topk_score_kernel<64><<<grid, 128, 0, stream>>>(a.q, a.n_head, a.n_head_kv, a.k_pool, a.pages, a.pages_stride,
                                                        a.n_kv, a.scale, c, ws.scores, d.n_items, ws_head_max(ws));
        break;
    case 128:
        topk_score_kernel<128><<<grid, 128, 0, stream>>>(a.q, a.n_head, a.n_head_kv, a.k_pool, a.pages, a.pages_stride,
                                                         a.n_kv, a.scale, c, ws.scores, d.n_items, ws_head_max(ws));
        break;
    default:
        topk_score_kernel<256><<<grid, 128, 0, stream>>>(a.q, a.n_head, a.n_head_kv, a.k_pool, a.pages, a.pages_stride,
                                                         a.n_kv, a.scale, c, ws.scores, d.n_items, ws_head_max(ws));
        break;
    }
    LC_CUDA_CHECK_LAUNCH();
    stage_run(a, ws.scores, d.n_items, 1, d, ws, plan, stream);
    return status::ok();
}

} // namespace lc::cuda
