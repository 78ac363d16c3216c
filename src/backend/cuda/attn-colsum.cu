// Column sums of causal softmax probabilities (attn-colsum.cuh): the prefill pass on bf16 tensor cores with keys as
// the M dimension (wgmma on Hopper, mma.sync elsewhere: each warp owns 16 keys and sums their probabilities over the
// query tiles), and the memory-bound decode-step pass.
#include "backend/cuda/attn-colsum.cuh"

#include <algorithm>
#include <cmath>

#include <cuda.h>
#include <cudaTypedefs.h>

#include "backend/cuda/attn-prefill-impl.cuh"
#include "backend/cuda/mma-rows.cuh"

namespace lc::cuda {

namespace {

constexpr int   n_threads = 128; // 4 warps x 16 keys = one 64-key page
constexpr float log2e     = 1.4426950408889634f;

template <int D> __host__ __device__ constexpr int cs_tile_bytes() {
    return 64 * D * 2;
}
template <int D> __host__ __device__ constexpr int cs_smem_bytes() {
    return 3 * cs_tile_bytes<D>() + 2 * 64 * int(sizeof(float)); // K, Q[2], lse[2][64]
}

template <int D>
__device__ __forceinline__ void cs_load_rows(uint32_t dst, const __nv_bfloat16 * src, int n_valid, int tid) {
    constexpr int CPR = D / 8, RPI = n_threads / CPR;
    const int     c = tid % CPR;
#pragma unroll
    for (int i = 0; i < 64 / RPI; ++i) {
        const int r = tid / CPR + RPI * i;
        cp_async_16(dst + tile_off<D>(r, c), src + r * D + c * 8, r < n_valid ? 16 : 0);
    }
}

template <int D>
__global__ void __launch_bounds__(n_threads)
    colsum_prefill_kernel(const __nv_bfloat16 * __restrict__ q, int64_t n_q, int64_t pos0, int n_head,
                          const __nv_bfloat16 * __restrict__ k_pool, const int32_t * __restrict__ pages, int64_t n_kv,
                          int n_head_kv, float scale_log2, const float * __restrict__ lse, bool per_kv_head,
                          float * __restrict__ colsum, int64_t stride, int64_t window, int64_t kt_first) {
    constexpr int     tile_bytes = cs_tile_bytes<D>();
    extern __shared__ __align__(128) uint8_t smem[];
    const int                                tid   = threadIdx.x;
    const int                                warp  = tid >> 5;
    const int                                lane  = tid & 31;
    const int                                gr    = lane >> 2;
    const int                                t     = lane & 3;
    const uint32_t                           s_k   = smem_u32(smem);
    float *                                  s_lse = reinterpret_cast<float *>(smem + 3 * tile_bytes);

    const int     G   = n_head / n_head_kv;
    const int64_t kt  = kt_first + int64_t(blockIdx.x) / n_head_kv; // lowest pages (most queries) first
    const int     g   = int(blockIdx.x % n_head_kv);
    const int64_t k0  = kt * 64;
    const int64_t end = pos0 + n_q; // keys at or past end are not touched
    // queries that see some key of the page: i >= k0 - pos0, and with a window i < k0 + 63 - pos0 + window
    const int64_t i_lo = max(int64_t(0), k0 - pos0);
    const int64_t i_hi = window > 0 ? min(n_q, k0 + 63 - pos0 + window) : n_q;
    if (i_lo >= i_hi) return;
    const int n_tiles = int((i_hi - i_lo + 63) / 64);
    const int n_it    = G * n_tiles;

    const size_t page_elems = size_t(n_head_kv) * 64 * D;
    cs_load_rows<D>(s_k, k_pool + size_t(pages[kt]) * page_elems + size_t(g) * 64 * D, int(min(int64_t(64), n_kv - k0)),
                    tid);
    cp_async_commit();

    auto load_q = [&](int it, int buf) {
        const int      hh  = it / n_tiles;
        const int64_t  i0  = i_lo + int64_t(it % n_tiles) * 64;
        const int      h   = g * G + hh;
        constexpr int  CPR = D / 8, RPI = n_threads / CPR;
        const int      c   = tid % CPR;
        const uint32_t dst = s_k + (1 + buf) * tile_bytes;
#pragma unroll
        for (int i = 0; i < 64 / RPI; ++i) {
            const int     r   = tid / CPR + RPI * i;
            const bool    ok  = i0 + r < i_hi;
            const int64_t row = ok ? i0 + r : i_lo;
            cp_async_16(dst + tile_off<D>(r, c), q + (size_t(row) * n_head + h) * D + c * 8, ok ? 16 : 0);
        }
        if (tid < 64) { // rows past the chunk read 0 and are masked below
            const int64_t  i  = i0 + tid;
            const uint32_t d  = smem_u32(s_lse + buf * 64 + tid);
            const float *  sp = lse + size_t(i < n_q ? i : i_lo) * n_head + h;
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(sp), "r"(i < n_q ? 4 : 0));
        }
    };
    load_q(0, 0);
    cp_async_commit();

    float         cs0 = 0.f, cs1 = 0.f; // this thread's part of keys k0 + warp*16 + gr and + 8
    const int64_t key0 = k0 + warp * 16 + gr, key1 = key0 + 8;

    auto flush = [&](int row) {
        float a = cs0, b = cs1;
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        a += __shfl_xor_sync(0xffffffffu, a, 2);
        b += __shfl_xor_sync(0xffffffffu, b, 1);
        b += __shfl_xor_sync(0xffffffffu, b, 2);
        if (t == 0) {
            if (key0 < end) colsum[size_t(row) * stride + key0] += a;
            if (key1 < end) colsum[size_t(row) * stride + key1] += b;
        }
        cs0 = cs1 = 0.f;
    };

    // S^T = K Q^T: 16 keys x 64 queries per warp
    mma_rows16x64_stream<D>(s_k, s_k + tile_bytes, n_it, load_q, [&](int it, int buf, const float(&s)[8][4]) {
        const int     hh   = it / n_tiles;
        const int64_t i0   = i_lo + int64_t(it % n_tiles) * 64;
        const int64_t qp0  = pos0 + i0; // position of the tile's first query
        const int64_t qend = pos0 + n_q;
        const bool    mask = k0 + 63 > qp0 || (window > 0 && k0 <= qp0 + 63 - window) || qp0 + 64 > qend;
        const float * ls   = s_lse + buf * 64;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float2 l  = *reinterpret_cast<const float2 *>(ls + j * 8 + 2 * t);
            const float  la = l.x * log2e, lb = l.y * log2e;
            float        p0 = fast_exp2(s[j][0] * scale_log2 - la);
            float        p1 = fast_exp2(s[j][1] * scale_log2 - lb);
            float        p2 = fast_exp2(s[j][2] * scale_log2 - la);
            float        p3 = fast_exp2(s[j][3] * scale_log2 - lb);
            if (mask) {
                const int64_t qa = qp0 + j * 8 + 2 * t, qb = qa + 1;
                const int64_t w = window > 0 ? window : INT64_MAX / 4;
                if (key0 > qa || key0 <= qa - w || qa >= qend) p0 = 0.f;
                if (key0 > qb || key0 <= qb - w || qb >= qend) p1 = 0.f;
                if (key1 > qa || key1 <= qa - w || qa >= qend) p2 = 0.f;
                if (key1 > qb || key1 <= qb - w || qb >= qend) p3 = 0.f;
            }
            cs0 += p0 + p1;
            cs1 += p2 + p3;
        }
        if (!per_kv_head && it % n_tiles == n_tiles - 1) flush(g * G + hh);
    });
    if (per_kv_head) flush(g);
}

template <int D>
__global__ void __launch_bounds__(n_threads)
    colsum_decode_kernel(const __nv_bfloat16 * __restrict__ q, int n_head, const __nv_bfloat16 * __restrict__ k_pool,
                         int n_head_kv, const int32_t * __restrict__ pages, int64_t pages_stride,
                         const int32_t * __restrict__ n_kv, float scale_log2, const float * __restrict__ lse,
                         bool per_kv_head, float * __restrict__ colsum, int64_t stride, int64_t seq_stride,
                         int64_t window) {
    constexpr int LPK = D / 8;    // lanes per key (16 bytes each)
    constexpr int KPW = 32 / LPK; // keys per warp step
    const int     s   = blockIdx.z;
    const int     g   = blockIdx.y;
    const int64_t k0  = int64_t(blockIdx.x) * 64;
    const int64_t nkv = n_kv[s];
    const int64_t lo  = window > 0 ? max(int64_t(0), nkv - window) : 0;
    if (k0 >= nkv || k0 + 63 < lo) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, c = lane % LPK;
    const int G = n_head / n_head_kv;

    float qv[8][8], lv[8];
#pragma unroll
    for (int hh = 0; hh < 8; ++hh) {
        if (hh < G) {
            const int      h    = g * G + hh;
            const uint4    x    = *reinterpret_cast<const uint4 *>(q + (size_t(s) * n_head + h) * D + c * 8);
            const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                qv[hh][2 * i]     = bf16_lo(w[i]);
                qv[hh][2 * i + 1] = bf16_hi(w[i]);
            }
            lv[hh] = lse[size_t(s) * n_head + h] * log2e;
        }
    }
    const size_t          page_elems = size_t(n_head_kv) * 64 * D;
    const __nv_bfloat16 * kp =
        k_pool + size_t(pages[size_t(s) * pages_stride + blockIdx.x]) * page_elems + size_t(g) * 64 * D;
    float *       out = colsum + size_t(s) * seq_stride;
    constexpr int NI  = 16 / KPW; // key rows per lane group
    uint4         x[NI];
#pragma unroll
    for (int it = 0; it < NI; ++it) { // every row load in flight before the first use
        const int     r   = warp * 16 + sub + it * KPW;
        const int64_t key = k0 + r;
        x[it]             = key < nkv && key >= lo ? *reinterpret_cast<const uint4 *>(kp + size_t(r) * D + c * 8)
                                                   : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < NI; ++it) {
        const int      r     = warp * 16 + sub + it * KPW;
        const int64_t  key   = k0 + r;
        const bool     valid = key < nkv && key >= lo;
        const uint32_t w[4]  = {x[it].x, x[it].y, x[it].z, x[it].w};
        float          kv8[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            kv8[2 * i]     = bf16_lo(w[i]);
            kv8[2 * i + 1] = bf16_hi(w[i]);
        }
        float acc = 0.f;
#pragma unroll
        for (int hh = 0; hh < 8; ++hh) {
            if (hh < G) {
                float d = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) d = fmaf(qv[hh][i], kv8[i], d);
#pragma unroll
                for (int off = LPK / 2; off >= 1; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
                const float p = fast_exp2(d * scale_log2 - lv[hh]);
                if (per_kv_head)
                    acc += p;
                else if (c == 0 && valid)
                    out[size_t(g * G + hh) * stride + key] += p;
            }
        }
        if (per_kv_head && c == 0 && valid) out[size_t(g) * stride + key] += acc;
    }
}

// ---- the prefill pass on wgmma (head_dim 128, sm_90a) ----
// One block per (128 keys = two pages, KV head): a producer warp streams the query tiles (128 queries of one head,
// TMA, 128-byte swizzle) and their lse through a ring of stages; each of two consumer warpgroups holds the K rows
// of one page in registers as the A operand and runs S^T = K Q^T as wgmma m64n128k16 (keys as M, so each thread's
// accumulator rows are two keys and the column sums stay within the thread until a 4-lane reduction at the end).
// The wgmma of the next tile runs while the exps of the current one do.
namespace wg {

constexpr int n_threads  = 384;            // producer warpgroup + 2 consumer warpgroups
constexpr int block_keys = 128;            // 2 pages, one per consumer warpgroup
constexpr int block_q    = 128;            // queries per step (wgmma N)
constexpr int half_bytes = 128 * 128;      // [128 rows][64 d] bf16: one half of head_dim
constexpr int tile_bytes = 2 * half_bytes; // [2 halves][128 rows][64 d], rows of 128 B, 128-byte swizzle
constexpr int n_stages   = 4;
constexpr int off_q      = tile_bytes; // the K tile first
constexpr int off_lse    = off_q + n_stages * tile_bytes;
constexpr int off_bar    = off_lse + n_stages * block_q * 4;
constexpr int smem_bytes = off_bar + 8 * (1 + 2 * n_stages) + 1024; // + alignment to 1024

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap * map, int c0, int c1, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
                 "[%4];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap * map, int c0, int c1, int c2,
                                            uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
                 "%4}], [%5];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_regs(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Shared-memory matrix descriptor, 128-byte swizzle. Offsets in bytes.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32) |
           (uint64_t(1) << 62);
}

// clang-format off
// D (64 x 128 f32) (+)= A (64 x 16, registers) * B (16 x 128, shared memory, K-major).
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}
// clang-format on

// 2^x for x <= 0 on the FMA pipe: round to the nearest integer n with the 1.5 * 2^23 trick, 2^(x - n) by a degree-4
// polynomial (relative error 2.6e-6 on [-0.5, 0.5]), n added to the exponent bits. x is clamped at -125 (2.4e-38
// there), so the exponent stays a normal one.
__device__ __forceinline__ float exp2_poly(float x) {
    x             = fmaxf(x, -125.f);
    const float t = x + 12582912.f;
    const float f = x - (t - 12582912.f);
    const float p =
        fmaf(fmaf(fmaf(fmaf(0.009570069f, f, 0.05591781f), f, 0.24024744f), f, 0.69312185f), f, 0.99999928f);
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// S^T (this warpgroup's 64 keys x 128 queries) = K Q^T; kf: the K rows as A fragments; qb: the stage's Q tile.
__device__ __forceinline__ void issue_kq(float (&acc)[64], const uint32_t (&kf)[8][4], uint32_t qb) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        const uint32_t koff = (kk >> 2) * half_bytes + (kk & 3) * 32; // 16 d per step within a 128-byte row
        wgmma_rs(acc, kf[kk], smem_desc(qb + koff, 16, 1024), kk > 0);
    }
}

// POLY: how many of each thread's 16 column groups (of 4 probabilities) take exp2_poly instead of ex2.approx.
template <int POLY>
__global__ void __launch_bounds__(n_threads, 1)
    colsum_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                        const int32_t * __restrict__ pages, int64_t n_q, int64_t pos0, int n_head, int64_t n_kv,
                        int n_head_kv, float scale_log2, const float * __restrict__ lse, bool per_kv_head,
                        float * __restrict__ colsum, int64_t stride, int64_t window, int64_t kt_first) {
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t                            base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const int                                 tid  = threadIdx.x;
    const int                                 wgi  = tid >> 7;

    const int     G   = n_head / n_head_kv;
    const int64_t kt  = kt_first + int64_t(blockIdx.x) / n_head_kv; // lowest keys (most queries) first
    const int     g   = int(blockIdx.x % n_head_kv);
    const int64_t k0  = kt * block_keys;
    const int64_t end = pos0 + n_q; // keys at or past end are not touched
    // queries that see some key of the block: i >= k0 - pos0, and with a window i < k0 + 127 - pos0 + window
    const int64_t i_lo = max(int64_t(0), k0 - pos0);
    const int64_t i_hi = window > 0 ? min(n_q, k0 + block_keys - 1 - pos0 + window) : n_q;
    if (i_lo >= i_hi) return;
    const int n_tiles = int((i_hi - i_lo + block_q - 1) / block_q);
    const int n_it    = G * n_tiles;

    const uint32_t bar_k   = base + off_bar;
    auto           q_full  = [&](int s) { return bar_k + 8 * (1 + s); };
    auto           q_empty = [&](int s) { return bar_k + 8 * (1 + n_stages + s); };
    float *        s_lse   = reinterpret_cast<float *>(smem_raw + (base - smem_u32(smem_raw)) + off_lse);
    if (tid == 0) {
        mbar_init(bar_k, 1);
        for (int s = 0; s < n_stages; ++s) {
            mbar_init(q_full(s), 32); // the producer warp's lanes (lse), lane 0 with the transaction bytes
            mbar_init(q_empty(s), 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wgi == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
        if (tid >= 32) return;
        const int lane = tid;
        if (lane == 0) {
            const int n_pages_seq = int((n_kv + kv_page_tokens - 1) / kv_page_tokens);
            mbar_expect_tx(bar_k, tile_bytes);
            for (int p = 0; p < 2; ++p) {
                // past the last page: the last page again (its keys are masked)
                const int lp  = min(int(2 * kt) + p, n_pages_seq - 1);
                const int row = (pages[lp] * n_head_kv + g) * kv_page_tokens;
                for (int half = 0; half < 2; ++half)
                    tma_load_2d(base + half * half_bytes + p * 8192, &tm_k, half * 64, row, bar_k);
            }
        }
        for (int it = 0; it < n_it; ++it) {
            const int     s  = it % n_stages;
            const int     ph = (it / n_stages) & 1;
            const int     h  = g * G + it / n_tiles;
            const int64_t i0 = i_lo + int64_t(it % n_tiles) * block_q;
            mbar_wait(q_empty(s), ph ^ 1);
            // queries outside [i_lo, i_hi) see no key of the block: lse +inf gives p = 0
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int64_t i                    = i0 + lane + 32 * j;
                s_lse[s * block_q + lane + 32 * j] = i < i_hi ? lse[size_t(i) * n_head + h] * log2e : INFINITY;
            }
            if (lane == 0) {
                mbar_expect_tx(q_full(s), tile_bytes);
                const uint32_t qb = base + off_q + s * tile_bytes;
                for (int half = 0; half < 2; ++half)
                    for (int rb = 0; rb < 2; ++rb)
                        tma_load_3d(qb + half * half_bytes + rb * 8192, &tm_q, half * 64, h, int(i0 + rb * 64),
                                    q_full(s));
            } else {
                mbar_arrive(q_full(s));
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
    const int     c    = wgi - 1; // consumer: keys k0 + 64 c .. + 63
    const int     w    = (tid >> 5) & 3;
    const int     lane = tid & 31;
    const int     t    = lane & 3;
    const int64_t kw0  = k0 + 64 * c;
    const int64_t key0 = kw0 + w * 16 + (lane >> 2), key1 = key0 + 8;

    uint32_t kf[8][4];
    mbar_wait(bar_k, 0);
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        const int      r    = 64 * c + 16 * w + (lane & 15);
        const int      cc   = (kk & 3) * 2 + (lane >> 4);
        const uint32_t addr = base + (kk >> 2) * half_bytes + r * 128 + ((cc ^ (r & 7)) << 4);
        ldmatrix_x4(addr, kf[kk][0], kf[kk][1], kf[kk][2], kf[kk][3]);
    }

    float cs0 = 0.f, cs1 = 0.f; // this thread's part of the sums of keys key0 and key1
    auto  flush = [&](int row) {
        float a = cs0, b = cs1;
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        a += __shfl_xor_sync(0xffffffffu, a, 2);
        b += __shfl_xor_sync(0xffffffffu, b, 1);
        b += __shfl_xor_sync(0xffffffffu, b, 2);
        if (t == 0) {
            if (key0 < end) colsum[size_t(row) * stride + key0] += a;
            if (key1 < end) colsum[size_t(row) * stride + key1] += b;
        }
        cs0 = cs1 = 0.f;
    };
    // the probabilities of step it (in acc) into the sums; the causal / window mask only where a tile needs it
    auto process = [&](float(&acc)[64], int it) {
        const int     s   = it % n_stages;
        const int64_t i0  = i_lo + int64_t(it % n_tiles) * block_q;
        const int64_t qp0 = pos0 + i0; // position of the tile's first query
        const bool    mask =
            kw0 + 63 > qp0 || (window > 0 && kw0 <= qp0 + block_q - 1 - window); // some key after / before a row
        const float * ls = s_lse + s * block_q;
        const int     d0 = int(key0 - qp0); // key - query position, at column 0
        const int     wn = window > 0 ? int(min(window, int64_t(1) << 30)) : (1 << 30);
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const float2 l = *reinterpret_cast<const float2 *>(ls + 8 * i + 2 * t);
            float        p[4];
            const float  x[4] = {fmaf(acc[4 * i + 0], scale_log2, -l.x), fmaf(acc[4 * i + 1], scale_log2, -l.y),
                                 fmaf(acc[4 * i + 2], scale_log2, -l.x), fmaf(acc[4 * i + 3], scale_log2, -l.y)};
#pragma unroll
            for (int e = 0; e < 4; ++e)
                p[e] = (i % 16) * POLY / 16 != (i % 16 + 1) * POLY / 16 ? exp2_poly(x[e]) : fast_exp2(x[e]);
            if (mask) {
                const int qa = 8 * i + 2 * t; // column of p[0] and p[2]
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int d = d0 + (e >> 1) * 8 - (qa + (e & 1)); // key - query
                    if (d > 0 || d <= -wn) p[e] = 0.f;
                }
            }
            cs0 += p[0] + p[1];
            cs1 += p[2] + p[3];
        }
        mbar_arrive(q_empty(s));
        if (!per_kv_head && it % n_tiles == n_tiles - 1) flush(g * G + it / n_tiles);
    };
    // the next tile's product is issued before the current tile's exps
    auto step = [&](float(&cur)[64], float(&nxt)[64], int it) {
        const int s1 = (it + 1) % n_stages;
        mbar_wait(q_full(s1), ((it + 1) / n_stages) & 1);
        wgmma_fence();
        issue_kq(nxt, kf, base + off_q + s1 * tile_bytes);
        wgmma_commit();
        wgmma_wait<1>();
        fence_regs(cur);
        process(cur, it);
    };
    auto last_step = [&](float(&cur)[64], int it) {
        wgmma_wait<0>();
        fence_regs(cur);
        process(cur, it);
    };

    float acc0[64], acc1[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc0[i] = acc1[i] = 0.f;
    fence_regs(acc0); // both set before the first product is issued
    fence_regs(acc1);
    mbar_wait(q_full(0), 0);
    wgmma_fence();
    issue_kq(acc0, kf, base + off_q);
    wgmma_commit();
    // no branch inside the loop: the accumulators keep their registers across the back edge
    int it = 0;
    for (; it + 2 < n_it; it += 2) {
        step(acc0, acc1, it);
        step(acc1, acc0, it + 1);
    }
    if (n_it - it == 2) {
        step(acc0, acc1, it);
        last_step(acc1, it + 1);
    } else {
        last_step(acc0, it);
    }
    if (per_kv_head) flush(g);
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *                          p = nullptr;
        cudaDriverEntryPointQueryResult qr{};
        LC_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &qr));
        LC_ASSERT(qr == cudaDriverEntryPointSuccess && p != nullptr, "CUDA: driver has no cuTensorMapEncodeTiled");
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
    }();
    return fn;
}

// Tensor map of a row-major bf16 tensor with innermost dimension 128, boxes of 64 x ... elements, 128-byte swizzle.
CUtensorMap make_map(const void * ptr, int rank, const cuuint64_t * dims, const cuuint64_t * strides_bytes,
                     const cuuint32_t * box) {
    CUtensorMap      map{};
    const cuuint32_t elem_strides[3] = {1, 1, 1};
    const CUresult   r               = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, cuuint32_t(rank),
                                            const_cast<void *>(ptr), dims, strides_bytes, box, elem_strides,
                                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    LC_ASSERT(r == CUDA_SUCCESS, "CUDA: cuTensorMapEncodeTiled failed with %d", int(r));
    return map;
}

void launch(const attn_colsum_args & a, bool poly, cudaStream_t stream) {
    constexpr int     D             = 128;
    const cuuint64_t  q_dims[3]     = {cuuint64_t(D), cuuint64_t(a.n_head), cuuint64_t(a.n_q)};
    const cuuint64_t  q_strides[2]  = {cuuint64_t(D) * 2, cuuint64_t(a.n_head) * D * 2};
    const cuuint32_t  q_box[3]      = {64, 1, 64};
    const cuuint64_t  kv_rows       = cuuint64_t(a.kv.n_pages_total) * a.kv.n_head_kv * kv_page_tokens;
    const cuuint64_t  kv_dims[2]    = {cuuint64_t(D), kv_rows};
    const cuuint64_t  kv_strides[1] = {cuuint64_t(D) * 2};
    const cuuint32_t  kv_box[2]     = {64, 64};
    const CUtensorMap tm_q          = make_map(a.q, 3, q_dims, q_strides, q_box);
    const CUtensorMap tm_k          = make_map(a.kv.k_pool, 2, kv_dims, kv_strides, kv_box);

    const int64_t kt_first = a.window > 0 ? std::max<int64_t>(0, a.pos0 - a.window + 1) / block_keys : 0;
    const int64_t kt_last  = (a.pos0 + a.n_q - 1) / block_keys;
    const int64_t n_blocks = (kt_last - kt_first + 1) * a.kv.n_head_kv;
    auto          kern     = poly ? colsum_wgmma_kernel<4> : colsum_wgmma_kernel<0>;
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    kern<<<dim3(unsigned(n_blocks)), n_threads, smem_bytes, stream>>>(
        tm_q, tm_k, a.kv.pages, a.n_q, a.pos0, a.n_head, a.kv.n_kv, a.kv.n_head_kv, a.scale * log2e, a.lse,
        a.per_kv_head, a.colsum, a.colsum_stride, a.window, kt_first);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace wg

template <int D> void launch_prefill(const attn_colsum_args & a, cudaStream_t stream) {
    const int64_t kt_first = a.window > 0 ? std::max<int64_t>(0, a.pos0 - a.window + 1) / 64 : 0;
    const int64_t kt_last  = (a.pos0 + a.n_q - 1) / 64;
    const int64_t n_blocks = (kt_last - kt_first + 1) * a.kv.n_head_kv;
    constexpr int smem     = cs_smem_bytes<D>();
    auto          kern     = colsum_prefill_kernel<D>;
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(unsigned(n_blocks)), n_threads, smem, stream>>>(
        reinterpret_cast<const __nv_bfloat16 *>(a.q), a.n_q, a.pos0, a.n_head,
        reinterpret_cast<const __nv_bfloat16 *>(a.kv.k_pool), a.kv.pages, a.kv.n_kv, a.kv.n_head_kv, a.scale * log2e,
        a.lse, a.per_kv_head, a.colsum, a.colsum_stride, a.window, kt_first);
    LC_CUDA_CHECK_LAUNCH();
}

template <int D> void launch_decode(const attn_colsum_decode_args & a, cudaStream_t stream) {
    const dim3 grid(unsigned((a.n_kv_max + 63) / 64), unsigned(a.n_head_kv), unsigned(a.n_seq));
    colsum_decode_kernel<D><<<grid, n_threads, 0, stream>>>(
        reinterpret_cast<const __nv_bfloat16 *>(a.q), a.n_head, reinterpret_cast<const __nv_bfloat16 *>(a.k_pool),
        a.n_head_kv, a.pages, a.pages_stride, a.n_kv, a.scale * log2e, a.lse, a.per_kv_head, a.colsum, a.colsum_stride,
        a.seq_stride, a.window);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace

status attn_colsum(const attn_colsum_args & a, cudaStream_t stream) {
    const int D = a.kv.head_dim;
    if (D != 64 && D != 128) return error(status_code::UNSUPPORTED, "cuda attn_colsum: head_dim %d (64, 128)", D);
    if (a.kv.n_head_kv <= 0 || a.n_head % a.kv.n_head_kv != 0)
        return error(status_code::UNSUPPORTED, "cuda attn_colsum: n_head %d is not a multiple of n_head_kv %d",
                     a.n_head, a.kv.n_head_kv);
    if (a.n_q < 0 || a.pos0 < 0 || a.window < 0 || a.kv.n_kv < a.pos0 + a.n_q || a.colsum_stride < a.pos0 + a.n_q)
        return error(status_code::INVALID_ARGUMENT, "cuda attn_colsum: n_kv %lld, stride %lld < pos0 %lld + n_q %lld",
                     (long long)a.kv.n_kv, (long long)a.colsum_stride, (long long)a.pos0, (long long)a.n_q);
    if (a.n_q == 0) return status::ok();
    attn_colsum_kernel kernel = a.kernel;
    if (kernel == attn_colsum_kernel::AUTO) {
        int dev = 0, major = 0;
        LC_CUDA_CHECK(cudaGetDevice(&dev));
        LC_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        kernel = major == 9 && D == 128 ? attn_colsum_kernel::WGMMA_POLY : attn_colsum_kernel::MMA_SYNC;
    }
    if (kernel != attn_colsum_kernel::MMA_SYNC) {
        if (D != 128)
            return error(status_code::UNSUPPORTED, "cuda attn_colsum: the wgmma kernels support head_dim 128, not %d",
                         D);
        wg::launch(a, kernel == attn_colsum_kernel::WGMMA_POLY, stream);
    } else if (D == 64)
        launch_prefill<64>(a, stream);
    else
        launch_prefill<128>(a, stream);
    return status::ok();
}

status attn_colsum_decode(const attn_colsum_decode_args & a, cudaStream_t stream) {
    const int D = a.head_dim;
    if (D != 64 && D != 128)
        return error(status_code::UNSUPPORTED, "cuda attn_colsum_decode: head_dim %d (64, 128)", D);
    if (a.n_head_kv <= 0 || a.n_head % a.n_head_kv != 0 || a.n_head / a.n_head_kv > 8)
        return error(status_code::UNSUPPORTED, "cuda attn_colsum_decode: n_head %d / n_head_kv %d", a.n_head,
                     a.n_head_kv);
    if (a.window < 0 || a.n_kv_max < 0)
        return error(status_code::INVALID_ARGUMENT, "cuda attn_colsum_decode: window or n_kv_max < 0");
    if (a.n_seq == 0 || a.n_kv_max == 0) return status::ok();
    if (D == 64)
        launch_decode<64>(a, stream);
    else
        launch_decode<128>(a, stream);
    return status::ok();
}

} // namespace lc::cuda
