// MInference index building on the GPU (vslash-index.cuh). Vertical-slash estimation: one CTA per (head, 64-key tile) computes
// the 64 x 64 score tile of the last 64 queries with mma.sync, twice: first for each row's max and sum of
// exponentials over the tile (combined per row afterwards), then for the probabilities, summed down the rows into
// the vertical scores (each key owned by one CTA) and along the 127 diagonals of the tile into the slash scores
// (shared-memory sums, then one global atomic per diagonal). Selection: one CTA per (head, vertical|slash), an 8-bit
// radix select for the k-th largest score, then an ordered compaction (so the lists come out ascending, ties to the
// lower index). Plan: per head the ascending offsets are cut into groups whose neighbours are at most L = 64 apart;
// each group is one merged key range in every full query block (L = the last block's length for a partial last
// block), and a column is covered by the block's ranges iff some selected offset lies in [p0 - c, p1 - c], read
// from a bitmap of the offsets. Block-sparse: mean-pooled K per aligned 64-key block and Q per 64-query block, one
// CTA per (query block, head) scoring its causal key blocks into shared memory and selecting the top k_b with the
// same radix select. Mixed plans (minference_index_gpu): one items kernel writes each head by its own pattern.
#include "backend/cuda/vslash-index.cuh"

#include <algorithm>
#include <cmath>
#include <vector>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include "backend/cuda/attn-prefill-impl.cuh"
#include "backend/cuda/attn-prefill.cuh"

namespace lc::cuda {

namespace {

constexpr int     n_last  = 64; // estimating queries
constexpr int64_t n_sink  = 30, n_local = 100, v_min = 30, s_min = 50;

template <typename T> T * grow(T *& p, size_t & cap, size_t n) {
    if (n > cap) {
        LC_CUDA_CHECK(cudaFree(p));
        LC_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
        cap = n;
    }
    return p;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// PASS 0: per-row tile max and sum of exp -> part[(h * n_tiles + tile) * 128 + {r, 64 + r}].
// PASS 1: probabilities with the row statistics stat[h * 128 + {r, 64 + r}] = {m, 1/l}; vertical and slash sums.
template <int D, int PASS>
__global__ void __launch_bounds__(128)
    vslash_scores_kernel(const __nv_bfloat16 * __restrict__ q, int64_t n_q, int64_t pos0, int n_head,
                         const __nv_bfloat16 * __restrict__ k_pool, const int32_t * __restrict__ pages, int n_head_kv,
                         float scale, float * __restrict__ part, const float * __restrict__ stat,
                         float * __restrict__ vertical, float * __restrict__ slash) {
    __shared__ __align__(128) uint8_t smem[2 * 64 * D * 2];
    __shared__ float                  s_v[64];
    __shared__ float                  s_s[128];
    const int                         tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int                         h = blockIdx.y, hk = h / (n_head / n_head_kv);
    const int64_t                     tile    = blockIdx.x;
    const int64_t                     n_tiles = gridDim.x;
    const int64_t                     N       = pos0 + n_q;
    const int                         nl      = int(min(int64_t(n_last), n_q));
    const int64_t                     i0      = n_q - nl;
    const int64_t                     p_first = pos0 + i0;
    const int64_t                     t0      = tile * 64;
    const uint32_t                    s_q = smem_u32(smem), s_k = s_q + 64 * D * 2;
    {
        constexpr int CPR = D / 8, RPI = 128 / CPR;
        const int     c = tid % CPR;
#pragma unroll
        for (int i = 0; i < 64 / RPI; ++i) {
            const int     r   = tid / CPR + RPI * i;
            const int64_t row = i0 + min(r, nl - 1);
            cp_async_16(s_q + tile_off<D>(r, c), q + (size_t(row) * n_head + h) * D + c * 8, r < nl ? 16 : 0);
            const int64_t key = min(t0 + r, N - 1);
            cp_async_16(s_k + tile_off<D>(r, c),
                        k_pool + size_t(pages[key >> 6]) * n_head_kv * 64 * D + size_t(hk) * 64 * D +
                            size_t(key & 63) * D + c * 8,
                        t0 + r < N ? 16 : 0);
        }
        cp_async_commit();
        cp_async_wait<0>();
    }
    if (PASS == 1 && tid < 64) s_v[tid] = 0.f;
    if (PASS == 1) s_s[tid] = 0.f;
    __syncthreads();
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(s_q + tile_off<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), a[0], a[1], a[2], a[3]);
#pragma unroll
        for (int nn = 0; nn < 4; ++nn) {
            uint32_t  b0, b1, b2, b3;
            const int key = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
            ldmatrix_x4(s_k + tile_off<D>(key, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
            mma_bf16(s[2 * nn], a, b0, b1);
            mma_bf16(s[2 * nn + 1], a, b2, b3);
        }
    }
    const int ra = warp * 16 + g, rb = ra + 8;
    // scaled and masked: row r (position p_first + r) sees keys <= its position; padding rows see none
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int     r   = e < 2 ? ra : rb;
            const int64_t key = t0 + j * 8 + 2 * t + (e & 1);
            s[j][e]           = (r < nl && key < N && key <= p_first + r) ? s[j][e] * scale : -INFINITY;
        }
    if (PASS == 0) {
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        for (int off = 1; off <= 2; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        float l0 = 0.f, l1 = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (mx0 != -INFINITY) l0 += expf(s[j][0] - mx0) + expf(s[j][1] - mx0);
            if (mx1 != -INFINITY) l1 += expf(s[j][2] - mx1) + expf(s[j][3] - mx1);
        }
        for (int off = 1; off <= 2; off <<= 1) {
            l0 += __shfl_xor_sync(0xffffffffu, l0, off);
            l1 += __shfl_xor_sync(0xffffffffu, l1, off);
        }
        if (t == 0) {
            float * pp   = part + (size_t(h) * n_tiles + tile) * 128;
            pp[ra]       = mx0;
            pp[rb]       = mx1;
            pp[64 + ra]  = l0;
            pp[64 + rb]  = l1;
        }
        return;
    }
    const float m0 = stat[h * 128 + ra], il0 = stat[h * 128 + 64 + ra];
    const float m1 = stat[h * 128 + rb], il1 = stat[h * 128 + 64 + rb];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        float p[4];
        p[0] = s[j][0] == -INFINITY ? 0.f : expf(s[j][0] - m0) * il0;
        p[1] = s[j][1] == -INFINITY ? 0.f : expf(s[j][1] - m0) * il0;
        p[2] = s[j][2] == -INFINITY ? 0.f : expf(s[j][2] - m1) * il1;
        p[3] = s[j][3] == -INFINITY ? 0.f : expf(s[j][3] - m1) * il1;
        const int k0 = j * 8 + 2 * t;
        // slash: row r, key k -> diagonal index r - k + 63
        if (p[0] != 0.f) atomicAdd(&s_s[ra - k0 + 63], p[0]);
        if (p[1] != 0.f) atomicAdd(&s_s[ra - k0 - 1 + 63], p[1]);
        if (p[2] != 0.f) atomicAdd(&s_s[rb - k0 + 63], p[2]);
        if (p[3] != 0.f) atomicAdd(&s_s[rb - k0 - 1 + 63], p[3]);
        float c0 = p[0] + p[2], c1 = p[1] + p[3];
        for (int off = 4; off <= 16; off <<= 1) {
            c0 += __shfl_xor_sync(0xffffffffu, c0, off);
            c1 += __shfl_xor_sync(0xffffffffu, c1, off);
        }
        if (g == 0) {
            atomicAdd(&s_v[k0], c0);
            atomicAdd(&s_v[k0 + 1], c1);
        }
    }
    __syncthreads();
    if (tid < 64 && t0 + tid < N) vertical[size_t(h) * N + t0 + tid] = s_v[tid];
    if (tid < 127) {
        const int64_t o = p_first - t0 + (tid - 63);
        if (o >= 0 && o < N && s_s[tid] != 0.f) atomicAdd(&slash[size_t(h) * N + o], s_s[tid]);
    }
}

// Per (head, row), one warp: m = max of the tile maxima, l = sum l_t exp(m_t - m) -> stat {m, 1/l}.
__global__ void vslash_stats_kernel(const float * __restrict__ part, int64_t n_tiles, float * __restrict__ stat) {
    const int h = blockIdx.x / 64, r = blockIdx.x % 64, lane = threadIdx.x;
    float     m = -INFINITY;
    for (int64_t i = lane; i < n_tiles; i += 32) m = fmaxf(m, part[(size_t(h) * n_tiles + i) * 128 + r]);
    for (int off = 16; off; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float l = 0.f;
    if (m != -INFINITY)
        for (int64_t i = lane; i < n_tiles; i += 32) {
            const float * pp = part + (size_t(h) * n_tiles + i) * 128;
            if (pp[r] != -INFINITY) l += pp[64 + r] * expf(pp[r] - m);
        }
    for (int off = 16; off; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
        stat[h * 128 + r]      = m;
        stat[h * 128 + 64 + r] = l > 0.f ? 1.f / l : 0.f;
    }
}

// Order-preserving key of a float (larger float, larger key); forced entries get the largest key.
__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

constexpr int sel_threads = 1024;

// The k largest of key(0..n) (order-preserving u32 keys), ties to the lower index, written ascending to out[0..k):
// an 8-bit radix select of the k-th largest key, then an ordered compaction. Every thread of the CTA
// (sel_threads) calls it.
template <typename KeyFn> __device__ void select_top_ordered(KeyFn key, int64_t n, int64_t k, int32_t * out) {
    using scan_t = cub::BlockScan<int, sel_threads>;
    __shared__ typename scan_t::TempStorage scan_tmp;
    __shared__ int                          hist[256];
    __shared__ uint32_t                     s_prefix;
    __shared__ int                          s_need;
    const int                               tid = threadIdx.x;
    uint32_t prefix = 0, mask = 0;
    int      need = int(k); // how many of the keys matching prefix are still to take
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (tid < 256) hist[tid] = 0;
        __syncthreads();
        for (int64_t i = tid; i < n; i += sel_threads) {
            const uint32_t kk = key(i);
            if ((kk & mask) == prefix) atomicAdd(&hist[(kk >> shift) & 255], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int cum = 0, d = 255;
            for (; d > 0; --d) {
                if (cum + hist[d] >= need) break;
                cum += hist[d];
            }
            s_prefix = prefix | (uint32_t(d) << shift);
            s_need   = need - cum;
        }
        __syncthreads();
        prefix = s_prefix;
        need   = s_need;
        mask |= 255u << shift;
        __syncthreads();
    }
    // prefix: the k-th largest key T; take every key > T and the first `need` keys == T in index order.
    const int64_t seg = (n + sel_threads - 1) / sel_threads;
    const int64_t lo = min(n, tid * seg), hi = min(n, lo + seg);
    int           n_eq = 0;
    for (int64_t i = lo; i < hi; ++i) n_eq += key(i) == prefix;
    int eq_base;
    scan_t(scan_tmp).ExclusiveSum(n_eq, eq_base);
    __syncthreads();
    int n_sel = 0, e = eq_base;
    for (int64_t i = lo; i < hi; ++i) {
        const uint32_t kk = key(i);
        if (kk > prefix) {
            ++n_sel;
        } else if (kk == prefix) {
            n_sel += e < need;
            ++e;
        }
    }
    int out_base;
    scan_t(scan_tmp).ExclusiveSum(n_sel, out_base);
    e = eq_base;
    for (int64_t i = lo; i < hi; ++i) {
        const uint32_t kk = key(i);
        bool           take = kk > prefix;
        if (kk == prefix) take = e++ < need;
        if (take) out[out_base++] = int32_t(i);
    }
}

// blockIdx.x: head; blockIdx.y: 0 vertical (k = v, first 30 forced), 1 slash (k = s, first 100 forced).
// spec (optional, [n_head] head_spec_dev): per-head v = a, s = b; heads of another pattern are skipped. Lists go to
// cols + h * v_stride, offsets + h * s_stride.
__global__ void __launch_bounds__(sel_threads)
    vslash_select_kernel(const float * __restrict__ vertical, const float * __restrict__ slash, int64_t n,
                         int64_t v, int64_t s, const head_spec_dev * __restrict__ spec, int64_t v_stride,
                         int64_t s_stride, int32_t * __restrict__ cols, int32_t * __restrict__ offsets) {
    const int h = blockIdx.x;
    if (spec != nullptr) {
        if (spec[h].pattern != head_spec_dev::VSLASH) return;
        v = spec[h].a;
        s = spec[h].b;
    }
    const bool    is_v     = blockIdx.y == 0;
    const float * x        = (is_v ? vertical : slash) + size_t(h) * n;
    const int64_t n_forced = min(n, is_v ? n_sink : n_local);
    select_top_ordered([&](int64_t i) { return i < n_forced ? 0xffffffffu : order_key(x[i]); }, n, is_v ? v : s,
                       is_v ? cols + size_t(h) * v_stride : offsets + size_t(h) * s_stride);
}

// Block-sparse estimate, pooling: the mean of each aligned 64-key block of K (t in [64 kb, min(64 kb + 64, N)),
// summed in key order as the CPU does): kp [n_head_kv][n_kb][D] f32. One CTA (D threads) per (kb, KV head).
__global__ void block_pool_k_kernel(const __nv_bfloat16 * __restrict__ k_pool, const int32_t * __restrict__ pages,
                                    int n_head_kv, int D, int64_t N, float * __restrict__ kp) {
    const int64_t kb = blockIdx.x, n_kb = gridDim.x;
    const int     hk = blockIdx.y, d = threadIdx.x;
    const int64_t t1 = min(N, (kb + 1) * 64);
    float         acc = 0.f;
    for (int64_t t = kb * 64; t < t1; ++t)
        acc += __bfloat162float(
            k_pool[size_t(pages[t >> 6]) * n_head_kv * 64 * D + size_t(hk) * 64 * D + size_t(t & 63) * D + d]);
    kp[(size_t(hk) * n_kb + kb) * D + d] = acc * (1.0f / float(t1 - kb * 64));
}

// Pooling of Q: the mean of each 64-query block of the call for the block-sparse heads: qp [n_head][n_qb][D].
__global__ void block_pool_q_kernel(const __nv_bfloat16 * __restrict__ q, int64_t n_q, int n_head, int D,
                                    const head_spec_dev * __restrict__ spec, float * __restrict__ qp) {
    const int64_t b = blockIdx.x, n_qb = gridDim.x;
    const int     h = blockIdx.y, d = threadIdx.x;
    if (spec[h].pattern != head_spec_dev::BLOCK) return;
    const int64_t i1  = min(n_q, (b + 1) * 64);
    float         acc = 0.f;
    for (int64_t i = b * 64; i < i1; ++i) acc += __bfloat162float(q[(size_t(i) * n_head + h) * D + d]);
    qp[(size_t(h) * n_qb + b) * D + d] = acc * (1.0f / float(i1 - b * 64));
}

// Scores Q̂ · K̂ of query block b against its causal key blocks (64 kb <= its last query), in shared memory (or,
// when score_g is given, in its row item * n_kb: long prompts), then the top k_b (spec[h].a, at least 1, at most the
// causal blocks), ascending: blocks[item * kb_stride ..], n_blocks[item], item = h * n_qb + b. One CTA per
// (b, head); heads of another pattern are skipped.
__global__ void __launch_bounds__(sel_threads)
    block_select_kernel(const float * __restrict__ qp, const float * __restrict__ kp, int64_t n_q, int64_t pos0,
                        int n_head, int n_head_kv, int D, int64_t n_kb, const head_spec_dev * __restrict__ spec,
                        int64_t kb_stride, float * __restrict__ score_g, int32_t * __restrict__ blocks,
                        int32_t * __restrict__ n_blocks) {
    extern __shared__ float score_s[];
    const int64_t           b = blockIdx.x, n_qb = gridDim.x;
    const int               h = blockIdx.y, hk = h / (n_head / n_head_kv);
    if (spec[h].pattern != head_spec_dev::BLOCK) return;
    float * score = score_g != nullptr ? score_g + (int64_t(h) * n_qb + b) * n_kb : score_s;
    const int     warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t last     = pos0 + min(n_q, (b + 1) * 64) - 1;
    const int64_t n_causal = last / 64 + 1;
    const float * qv       = qp + (size_t(h) * n_qb + b) * D;
    for (int64_t kb = warp; kb < n_causal; kb += sel_threads / 32) {
        const float * kv  = kp + (size_t(hk) * n_kb + kb) * D;
        float         acc = 0.f;
        for (int d = lane; d < D; d += 32) acc += qv[d] * kv[d];
        for (int off = 16; off; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (lane == 0) score[kb] = acc;
    }
    __syncthreads();
    const int64_t k    = min(n_causal, max(int64_t(1), int64_t(spec[h].a)));
    const int64_t item = int64_t(h) * n_qb + b;
    select_top_ordered([&](int64_t i) { return order_key(score[i]); }, n_causal, k, blocks + item * kb_stride);
    if (threadIdx.x == 0) n_blocks[item] = int32_t(k);
}

// One warp per head: cuts the ascending offsets into groups with neighbours at most L apart -> {lo, hi} pairs
// (ascending), and marks the offsets in the bitmap (when bitmap is given).
// spec (optional): per-head s = b, no groups for heads of another pattern; lists at offsets + h * s_stride.
__global__ void vslash_groups_kernel(const int32_t * __restrict__ offsets, int64_t s, const head_spec_dev * spec,
                                     int64_t s_stride, int64_t L, int32_t * __restrict__ groups,
                                     int32_t * __restrict__ n_groups, uint32_t * __restrict__ bitmap,
                                     int64_t n_words) {
    const int h = blockIdx.x, lane = threadIdx.x;
    if (spec != nullptr) {
        if (spec[h].pattern != head_spec_dev::VSLASH) {
            if (lane == 0) n_groups[h] = 0;
            return;
        }
        s = spec[h].b;
    }
    const int32_t * o  = offsets + size_t(h) * s_stride;
    int32_t *       gr = groups + size_t(h) * s_stride * 2;
    int             base = 0;
    for (int64_t i0 = 0; i0 < s; i0 += 32) {
        const int64_t  i     = i0 + lane;
        const bool     in    = i < s;
        const int32_t  oi    = in ? o[i] : 0;
        const bool     start = in && (i == 0 || int64_t(oi) - o[i - 1] > L);
        const bool     end   = in && (i == s - 1 || int64_t(o[i + 1]) - oi > L);
        const uint32_t bs    = __ballot_sync(0xffffffffu, start);
        const int      gid   = base + __popc(bs & ((2u << lane) - 1)) - 1; // starts at or before lane
        if (start) gr[2 * gid] = oi;
        if (end) gr[2 * gid + 1] = oi;
        if (in && bitmap != nullptr) atomicOr(&bitmap[size_t(h) * n_words + (oi >> 5)], 1u << (oi & 31));
        base += __popc(bs);
    }
    if (lane == 0) n_groups[h] = base;
}

// Any selected offset in [lo, hi] (hi - lo < 64)?
__device__ __forceinline__ bool any_offset(const uint32_t * bm, int64_t lo, int64_t hi) {
    for (int64_t w = lo >> 5; w <= (hi >> 5); ++w) {
        uint32_t bits = bm[w];
        if (w == (lo >> 5)) bits &= ~0u << (lo & 31);
        if (w == (hi >> 5)) bits &= (hi & 31) == 31 ? ~0u : ((2u << (hi & 31)) - 1);
        if (bits) return true;
    }
    return false;
}

// The lists a plan is built from. spec == nullptr: every head vertical-slash with v, s.
struct plan_inputs {
    const head_spec_dev * spec = nullptr;
    const int32_t *       cols = nullptr; // vertical-slash: [n_head][v_stride] columns, ascending
    int64_t               v = 0, v_stride = 0;
    const int32_t *       groups   = nullptr; // [2][n_head][s_stride][2] merged diagonal groups
    const int32_t *       n_groups = nullptr; // [2][n_head]
    int64_t               s_stride = 0;
    const uint32_t *      bitmap   = nullptr; // [n_head][n_words] selected offsets
    int64_t               n_words  = 0;
    const int32_t *       blocks   = nullptr; // block-sparse: [n_items][kb_stride] key blocks, ascending
    const int32_t *       n_blocks = nullptr; // [n_items]
    int64_t               kb_stride = 0;
};

// One warp per item (h, b). FILL 0: counts[0][item] = ranges, counts[1][item] = columns; FILL 1: writes them.
// Per head pattern (the CPU builders of attn/minference/index.h, ranges merged as prefill_head_plan::add_range
// merges them): DENSE [0, p1]; A_SHAPE [0, min(n_init, lo)) and [lo, p1] with lo = max(0, p0 - n_local + 1);
// VSLASH the offsets' groups as ranges, then the columns outside them; BLOCK [64 kb, min(64 kb + 64, p1 + 1)) per
// selected block, runs of consecutive blocks as one range.
template <bool FILL>
__global__ void plan_items_kernel(plan_inputs in, int64_t n_q, int64_t pos0, int n_head, int64_t * __restrict__ counts,
                                  prefill_plan_dev plan, int32_t * __restrict__ ranges_out,
                                  int32_t * __restrict__ cols_out) {
    const int64_t n_qblk = (n_q + 63) / 64;
    const int64_t item   = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int     lane   = threadIdx.x & 31;
    if (item >= n_qblk * n_head) return;
    const int     h       = int(item / n_qblk);
    const int64_t b       = item % n_qblk;
    const int64_t p0      = pos0 + b * 64, p1 = pos0 + min(n_q, (b + 1) * 64) - 1;
    const int     pattern = in.spec != nullptr ? in.spec[h].pattern : int(head_spec_dev::VSLASH);
    int32_t *     ro      = FILL ? ranges_out + 2 * plan.range_off[item] : nullptr;
    int64_t       n_r = 0, n_c = 0;
    if (pattern == head_spec_dev::DENSE || pattern == head_spec_dev::A_SHAPE) {
        int64_t lo = 0, sink = 0;
        if (pattern == head_spec_dev::A_SHAPE) {
            lo   = max(int64_t(0), p0 - in.spec[h].b + 1);
            sink = min(int64_t(in.spec[h].a), lo);
        }
        const bool two = sink > 0 && sink < lo;
        n_r            = two ? 2 : 1;
        if (FILL && lane == 0) {
            if (two) {
                ro[0] = 0;
                ro[1] = int32_t(sink);
                ro += 2;
            }
            ro[0] = int32_t(sink > 0 ? (two ? lo : 0) : lo);
            ro[1] = int32_t(p1 + 1);
        }
    } else if (pattern == head_spec_dev::BLOCK) {
        const int32_t * bl = in.blocks + item * in.kb_stride;
        const int       nb = in.n_blocks[item];
        for (int i0 = 0; i0 < nb; i0 += 32) {
            const int      i     = i0 + lane;
            const bool     ok    = i < nb;
            const int32_t  kb    = ok ? bl[i] : 0;
            const bool     start = ok && (i == 0 || bl[i - 1] + 1 != kb);
            const bool     end   = ok && (i == nb - 1 || bl[i + 1] != kb + 1);
            const uint32_t bs    = __ballot_sync(0xffffffffu, start);
            const int64_t  rid   = n_r + __popc(bs & ((2u << lane) - 1)) - 1; // run of the block at or before lane
            if (FILL && start) ro[2 * rid] = kb * 64;
            if (FILL && end) ro[2 * rid + 1] = int32_t(min(int64_t(kb) * 64 + 64, p1 + 1));
            n_r += __popc(bs);
        }
    } else {
        const int64_t   v    = in.spec != nullptr ? in.spec[h].a : in.v;
        const bool      last = b == n_qblk - 1 && n_q % 64 != 0;
        const int32_t * gr   = in.groups + (size_t(last ? n_head : 0) + h) * in.s_stride * 2;
        const int       ng   = in.n_groups[(last ? n_head : 0) + h];
        // groups with lo <= p1: a prefix of the ascending list
        int lo = 0, hi = ng;
        while (lo < hi) {
            const int mid = (lo + hi) / 2;
            if (gr[2 * mid] <= p1) lo = mid + 1;
            else hi = mid;
        }
        n_r = lo;
        if (FILL) {
            for (int k = lane; k < n_r; k += 32) {
                const int g   = int(n_r) - 1 - k; // descending offsets: ascending starts
                ro[2 * k]     = int32_t(max(int64_t(0), p0 - gr[2 * g + 1]));
                ro[2 * k + 1] = int32_t(p1 - gr[2 * g] + 1);
            }
        }
        const int32_t *  c  = in.cols + size_t(h) * in.v_stride;
        const uint32_t * bm = in.bitmap + size_t(h) * in.n_words;
        int32_t *        co = FILL ? cols_out + plan.col_off[item] : nullptr;
        for (int64_t i0 = 0; i0 < v; i0 += 32) {
            const int64_t  i    = i0 + lane;
            const int32_t  ci   = i < v ? c[i] : INT32_MAX;
            const bool     take = ci <= p1 && !any_offset(bm, max(int64_t(0), p0 - ci), p1 - ci);
            const uint32_t bal  = __ballot_sync(0xffffffffu, take);
            if (FILL && take) co[n_c + __popc(bal & ((1u << lane) - 1))] = ci;
            n_c += __popc(bal);
            if (__shfl_sync(0xffffffffu, ci, 31) > p1) break;
        }
    }
    if (!FILL && lane == 0) {
        counts[item]                       = n_r;
        counts[n_qblk * n_head + 1 + item] = n_c;
    }
}

template <int D>
void launch_scores(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv, float scale,
                   float * vertical, float * slash, vslash_workspace & ws, cudaStream_t stream) {
    const int64_t N       = pos0 + n_q;
    const int64_t n_tiles = (N + 63) / 64;
    float *       part    = grow(ws.part, ws.cap[0], size_t(n_head) * (n_tiles + 1) * 128);
    float *       stat    = part + size_t(n_head) * n_tiles * 128;
    const auto *  qq      = reinterpret_cast<const __nv_bfloat16 *>(q);
    const auto *  kk      = reinterpret_cast<const __nv_bfloat16 *>(kv.k_pool);
    const dim3    grid{unsigned(n_tiles), unsigned(n_head)};
    LC_CUDA_CHECK(cudaMemsetAsync(slash, 0, size_t(n_head) * N * sizeof(float), stream));
    vslash_scores_kernel<D, 0><<<grid, 128, 0, stream>>>(qq, n_q, pos0, n_head, kk, kv.pages, kv.n_head_kv, scale,
                                                         part, nullptr, nullptr, nullptr);
    LC_CUDA_CHECK_LAUNCH();
    vslash_stats_kernel<<<unsigned(n_head * 64), 32, 0, stream>>>(part, n_tiles, stat);
    LC_CUDA_CHECK_LAUNCH();
    vslash_scores_kernel<D, 1><<<grid, 128, 0, stream>>>(qq, n_q, pos0, n_head, kk, kv.pages, kv.n_head_kv, scale,
                                                         nullptr, stat, vertical, slash);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace

vslash_workspace::~vslash_workspace() {
    cudaFree(part);
    cudaFree(vertical);
    cudaFree(slash);
    cudaFree(cols);
    cudaFree(offsets);
    cudaFree(groups);
    cudaFree(n_groups);
    cudaFree(bitmap);
    cudaFree(counts);
    cudaFree(scan_tmp);
    cudaFree(spec);
    cudaFree(pooled);
    cudaFree(blocks);
    cudaFree(n_blocks);
    cudaFreeHost(spec_host);
    cudaFree(scores);
}

int64_t vslash_v_eff(int64_t v, int64_t n_keys) {
    return std::min(n_keys, std::clamp<int64_t>(v, v_min, std::max<int64_t>(n_keys, v_min)));
}
int64_t vslash_s_eff(int64_t s, int64_t n_keys) {
    return std::min(n_keys, std::clamp<int64_t>(s, s_min, std::max<int64_t>(n_keys, s_min)));
}

status vslash_estimate_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                           float scale, float * vertical, float * slash, vslash_workspace & ws, cudaStream_t stream) {
    const int D = kv.head_dim;
    if (D != 64 && D != 128) return error(status_code::UNSUPPORTED, "cuda vslash_estimate: head_dim %d", D);
    if (kv.n_head_kv <= 0 || n_head % kv.n_head_kv != 0)
        return error(status_code::UNSUPPORTED, "cuda vslash_estimate: n_head %d, n_head_kv %d", n_head, kv.n_head_kv);
    if (n_q <= 0 || kv.n_kv < pos0 + n_q)
        return error(status_code::INVALID_ARGUMENT, "cuda vslash_estimate: n_q %lld, n_kv %lld < pos0 + n_q",
                     (long long)n_q, (long long)kv.n_kv);
    if (D == 64) {
        launch_scores<64>(q, n_q, pos0, n_head, kv, scale, vertical, slash, ws, stream);
    } else {
        launch_scores<128>(q, n_q, pos0, n_head, kv, scale, vertical, slash, ws, stream);
    }
    return status::ok();
}

void vslash_select_gpu(const float * vertical, const float * slash, int64_t n_keys, int n_head, int64_t v_eff,
                       int64_t s_eff, int32_t * cols, int32_t * offsets, cudaStream_t stream) {
    vslash_select_kernel<<<dim3(unsigned(n_head), 2), sel_threads, 0, stream>>>(vertical, slash, n_keys, v_eff, s_eff,
                                                                                nullptr, v_eff, s_eff, cols, offsets);
    LC_CUDA_CHECK_LAUNCH();
}

namespace {

// Diagonal groups of the ascending offsets at offsets + h * s_stride (full blocks, then a partial last block) and
// their bitmap, into ws; spec as vslash_groups_kernel.
void build_groups(const int32_t * offsets, int64_t s, const head_spec_dev * spec, int64_t s_stride, int64_t n_q,
                  int64_t pos0, int n_head, vslash_workspace & ws, plan_inputs & in, cudaStream_t stream) {
    const int64_t N       = pos0 + n_q;
    const int64_t n_words = N / 32 + 1;
    int32_t *     groups  = grow(ws.groups, ws.cap[1], size_t(2) * n_head * s_stride * 2);
    int32_t *     n_grp   = grow(ws.n_groups, ws.cap[2], size_t(2) * n_head);
    uint32_t *    bitmap  = grow(ws.bitmap, ws.cap[3], size_t(n_head) * n_words);
    LC_CUDA_CHECK(cudaMemsetAsync(bitmap, 0, size_t(n_head) * n_words * 4, stream));
    vslash_groups_kernel<<<unsigned(n_head), 32, 0, stream>>>(offsets, s, spec, s_stride, 64, groups, n_grp, bitmap,
                                                              n_words);
    LC_CUDA_CHECK_LAUNCH();
    const int64_t L_last = n_q % 64;
    vslash_groups_kernel<<<unsigned(n_head), 32, 0, stream>>>(offsets, s, spec, s_stride, L_last == 0 ? 64 : L_last,
                                                              groups + size_t(n_head) * s_stride * 2, n_grp + n_head,
                                                              nullptr, 0);
    LC_CUDA_CHECK_LAUNCH();
    in.groups   = groups;
    in.n_groups = n_grp;
    in.s_stride = s_stride;
    in.bitmap   = bitmap;
    in.n_words  = n_words;
}

// Counts, offsets (one synchronization for the totals) and items of the plan from its lists.
void build_plan(const plan_inputs & in, int64_t n_q, int64_t pos0, int n_head, vslash_workspace & ws,
                prefill_plan_buf & plan, cudaStream_t stream) {
    const int64_t n_qblk  = (n_q + 63) / 64;
    const int64_t n_items = n_qblk * n_head;
    int64_t *     counts  = grow(ws.counts, ws.cap[4], size_t(2) * (n_items + 1));
    LC_CUDA_CHECK(cudaMemsetAsync(counts, 0, size_t(2) * (n_items + 1) * 8, stream));
    plan.reserve(n_q, pos0, n_head, 0, 0);
    const unsigned n_blk = unsigned((n_items + 7) / 8);
    plan_items_kernel<false><<<n_blk, 256, 0, stream>>>(in, n_q, pos0, n_head, counts, plan.view, nullptr, nullptr);
    LC_CUDA_CHECK_LAUNCH();
    size_t tmp = 0;
    LC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, tmp, counts, plan.range_off, int(n_items + 1), stream));
    void * tmp_p = grow(reinterpret_cast<uint8_t *&>(ws.scan_tmp), ws.scan_tmp_bytes, tmp);
    LC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp_p, tmp, counts, plan.range_off, int(n_items + 1), stream));
    LC_CUDA_CHECK(
        cub::DeviceScan::ExclusiveSum(tmp_p, tmp, counts + n_items + 1, plan.col_off, int(n_items + 1), stream));
    int64_t tot[2];
    LC_CUDA_CHECK(cudaMemcpyAsync(&tot[0], plan.range_off + n_items, 8, cudaMemcpyDeviceToHost, stream));
    LC_CUDA_CHECK(cudaMemcpyAsync(&tot[1], plan.col_off + n_items, 8, cudaMemcpyDeviceToHost, stream));
    LC_CUDA_CHECK(cudaStreamSynchronize(stream));
    plan.reserve(n_q, pos0, n_head, tot[0], tot[1]);
    plan_items_kernel<true><<<n_blk, 256, 0, stream>>>(in, n_q, pos0, n_head, counts, plan.view, plan.ranges,
                                                       plan.cols);
    LC_CUDA_CHECK_LAUNCH();
}

status check_shape(const char * what, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv) {
    const int D = kv.head_dim;
    if (D != 64 && D != 128) return error(status_code::UNSUPPORTED, "cuda %s: head_dim %d", what, D);
    if (kv.n_head_kv <= 0 || n_head % kv.n_head_kv != 0)
        return error(status_code::UNSUPPORTED, "cuda %s: n_head %d, n_head_kv %d", what, n_head, kv.n_head_kv);
    if (n_q <= 0 || kv.n_kv < pos0 + n_q)
        return error(status_code::INVALID_ARGUMENT, "cuda %s: n_q %lld, n_kv %lld < pos0 + n_q", what, (long long)n_q,
                     (long long)kv.n_kv);
    return status::ok();
}

} // namespace

void vslash_plan_gpu(const int32_t * cols, int64_t v_eff, const int32_t * offsets, int64_t s_eff, int64_t n_q,
                     int64_t pos0, int n_head, vslash_workspace & ws, prefill_plan_buf & plan, cudaStream_t stream) {
    plan_inputs in;
    in.cols     = cols;
    in.v        = v_eff;
    in.v_stride = v_eff;
    build_groups(offsets, s_eff, nullptr, s_eff, n_q, pos0, n_head, ws, in, stream);
    build_plan(in, n_q, pos0, n_head, ws, plan, stream);
}


head_spec_dev head_spec_effective(int32_t pattern, int64_t a, int64_t b, int64_t n_keys) {
    head_spec_dev h;
    h.pattern = pattern;
    if (pattern == head_spec_dev::VSLASH) {
        a = vslash_v_eff(a, n_keys);
        b = vslash_s_eff(b, n_keys);
    }
    h.a = int32_t(std::clamp<int64_t>(a, 0, INT32_MAX));
    h.b = int32_t(std::clamp<int64_t>(b, 0, INT32_MAX));
    return h;
}

namespace {

// Every head vertical-slash with v columns and s diagonals, effective for n_keys keys.
std::vector<head_spec_dev> uniform_vslash(int n_head, int64_t v, int64_t s, int64_t n_keys) {
    return std::vector<head_spec_dev>(size_t(std::max(n_head, 0)),
                                      head_spec_effective(head_spec_dev::VSLASH, v, s, n_keys));
}

} // namespace

status vslash_index_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                        float scale, int64_t v, int64_t s, vslash_workspace & ws, prefill_plan_buf & plan,
                        cudaStream_t stream) {
    const std::vector<head_spec_dev> heads = uniform_vslash(n_head, v, s, pos0 + n_q);
    return minference_index_gpu(q, n_q, pos0, n_head, kv, scale, heads.data(), ws, plan, stream);
}

status minference_index_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                            float scale, const head_spec_dev * heads, vslash_workspace & ws, prefill_plan_buf & plan,
                            cudaStream_t stream) {
    LC_RETURN_IF_ERROR(check_shape("minference_index", n_q, pos0, n_head, kv));
    const int64_t N = pos0 + n_q, n_qblk = (n_q + 63) / 64, n_kb = (N + 63) / 64;
    const int     D = kv.head_dim;
    int64_t       v_max = 0, s_max = 0, kb_max = 0;
    for (int h = 0; h < n_head; ++h) {
        const head_spec_dev & hs = heads[h];
        if (hs.pattern < head_spec_dev::DENSE || hs.pattern > head_spec_dev::BLOCK)
            return error(status_code::INVALID_ARGUMENT, "cuda minference_index: head %d has pattern %d", h,
                         int(hs.pattern));
        if (hs.pattern == head_spec_dev::VSLASH) {
            if (hs.a > N || hs.b > N || hs.a < 1 || hs.b < 1)
                return error(status_code::INVALID_ARGUMENT,
                             "cuda minference_index: head %d: v %d, s %d for %lld keys (use head_spec_effective)", h,
                             int(hs.a), int(hs.b), (long long)N);
            v_max = std::max<int64_t>(v_max, hs.a);
            s_max = std::max<int64_t>(s_max, hs.b);
        }
        if (hs.pattern == head_spec_dev::BLOCK) kb_max = std::max<int64_t>(kb_max, std::max(1, hs.a));
    }
    kb_max                = std::min(kb_max, n_kb);
    // Block-sparse scores of one query block in shared memory up to ws.block_smem_max, and within the 48 KiB a
    // launch may use without opting in (the kernel's static shared memory included), else in global scratch.
    static const size_t block_static_smem = [] {
        cudaFuncAttributes fa{};
        LC_CUDA_CHECK(cudaFuncGetAttributes(&fa, block_select_kernel));
        return fa.sharedSizeBytes;
    }();
    const size_t smem_cap = std::min(ws.block_smem_max, 48 * 1024 - std::min<size_t>(48 * 1024, block_static_smem));
    const size_t smem     = size_t(n_kb) * sizeof(float) <= smem_cap ? size_t(n_kb) * sizeof(float) : 0;
    head_spec_dev * spec  = grow(ws.spec, ws.cap[9], size_t(n_head));
    // Through pinned memory, so the copy does not wait for the stream; build_plan's synchronization below completes
    // it before a later call can overwrite the staging buffer.
    if (ws.cap[13] < size_t(n_head)) {
        LC_CUDA_CHECK(cudaFreeHost(ws.spec_host));
        LC_CUDA_CHECK(cudaMallocHost(&ws.spec_host, size_t(n_head) * sizeof(head_spec_dev)));
        ws.cap[13] = size_t(n_head);
    }
    std::copy(heads, heads + n_head, ws.spec_host);
    LC_CUDA_CHECK(
        cudaMemcpyAsync(spec, ws.spec_host, size_t(n_head) * sizeof(head_spec_dev), cudaMemcpyHostToDevice, stream));
    plan_inputs in;
    in.spec = spec;
    if (v_max > 0) {
        float *   vt = grow(ws.vertical, ws.cap[5], size_t(n_head) * N);
        float *   sl = grow(ws.slash, ws.cap[6], size_t(n_head) * N);
        int32_t * cl = grow(ws.cols, ws.cap[7], size_t(n_head) * v_max);
        int32_t * of = grow(ws.offsets, ws.cap[8], size_t(n_head) * s_max);
        LC_RETURN_IF_ERROR(vslash_estimate_gpu(q, n_q, pos0, n_head, kv, scale, vt, sl, ws, stream));
        vslash_select_kernel<<<dim3(unsigned(n_head), 2), sel_threads, 0, stream>>>(vt, sl, N, 0, 0, spec, v_max,
                                                                                    s_max, cl, of);
        LC_CUDA_CHECK_LAUNCH();
        in.cols     = cl;
        in.v_stride = v_max;
        build_groups(of, 0, spec, s_max, n_q, pos0, n_head, ws, in, stream);
    }
    if (kb_max > 0) {
        float *   kp = grow(ws.pooled, ws.cap[10], size_t(kv.n_head_kv) * n_kb * D + size_t(n_head) * n_qblk * D);
        float *   qp = kp + size_t(kv.n_head_kv) * n_kb * D;
        int32_t * bl = grow(ws.blocks, ws.cap[11], size_t(n_head) * n_qblk * kb_max);
        int32_t * nb = grow(ws.n_blocks, ws.cap[12], size_t(n_head) * n_qblk);
        block_pool_k_kernel<<<dim3(unsigned(n_kb), unsigned(kv.n_head_kv)), unsigned(D), 0, stream>>>(
            reinterpret_cast<const __nv_bfloat16 *>(kv.k_pool), kv.pages, kv.n_head_kv, D, N, kp);
        LC_CUDA_CHECK_LAUNCH();
        block_pool_q_kernel<<<dim3(unsigned(n_qblk), unsigned(n_head)), unsigned(D), 0, stream>>>(
            reinterpret_cast<const __nv_bfloat16 *>(q), n_q, n_head, D, spec, qp);
        LC_CUDA_CHECK_LAUNCH();
        float * sg = smem == 0 ? grow(ws.scores, ws.cap[14], size_t(n_head) * n_qblk * n_kb) : nullptr;
        block_select_kernel<<<dim3(unsigned(n_qblk), unsigned(n_head)), sel_threads, smem, stream>>>(
            qp, kp, n_q, pos0, n_head, kv.n_head_kv, D, n_kb, spec, kb_max, sg, bl, nb);
        LC_CUDA_CHECK_LAUNCH();
        in.blocks    = bl;
        in.n_blocks  = nb;
        in.kb_stride = kb_max;
    }
    build_plan(in, n_q, pos0, n_head, ws, plan, stream);
    return status::ok();
}

status minference_attention_gpu(const vslash_attention_args & a, const head_spec_dev * heads, vslash_workspace & ws,
                                prefill_plan_buf & plan, cudaStream_t stream, vslash_attention_info * info) {
    vslash_attention_info in;
    bool                  dense = a.dense_ratio <= 0.f;
    if (!dense) {
        LC_RETURN_IF_ERROR(minference_index_gpu(a.q, a.n_q, a.pos0, a.n_head, a.kv, a.scale, heads, ws, plan, stream));
        if (a.dense_ratio < 1.f) {
            in.steps = prefill_plan_steps_gpu(plan, stream);
            dense    = double(in.steps.sparse) > double(a.dense_ratio) * double(in.steps.dense);
        }
    }
    in.dense = dense;
    if (info != nullptr) *info = in;
    if (dense) {
        attn_prefill_args d;
        d.q      = a.q;
        d.n_q    = a.n_q;
        d.pos0   = a.pos0;
        d.n_head = a.n_head;
        d.kv     = a.kv;
        d.scale  = a.scale;
        d.o      = a.o;
        d.o_f32  = a.o_f32;
        d.lse    = a.lse;
        return attn_prefill(d, attn_prefill_kernel::AUTO, stream);
    }
    attn_sparse_prefill_args sp;
    sp.q     = a.q;
    sp.plan  = plan.view;
    sp.kv    = a.kv;
    sp.scale = a.scale;
    sp.o     = a.o;
    sp.o_f32 = a.o_f32;
    sp.lse   = a.lse;
    return attn_sparse_prefill(sp, stream);
}

status vslash_attention_gpu(const vslash_attention_args & a, vslash_workspace & ws, prefill_plan_buf & plan,
                            cudaStream_t stream, vslash_attention_info * info) {
    const std::vector<head_spec_dev> heads = uniform_vslash(a.n_head, a.v, a.s, a.pos0 + a.n_q);
    return minference_attention_gpu(a, heads.data(), ws, plan, stream, info);
}

} // namespace lc::cuda
