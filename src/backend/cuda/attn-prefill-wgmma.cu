// Causal prefill attention for Hopper (sm_90a), in the manner of FlashAttention-3 (Shah et al. 2024): one
// producer warpgroup streams Q and two 64-key pages of K and V per step through the tensor copy engine (TMA,
// 128-byte swizzle) into a ring of stages guarded by mbarriers; two consumer warpgroups of 64 query rows each
// run S = Q K^T and O += P V as wgmma m64n128k16 (P from registers) with the online softmax in between.
// The pipelined variant issues S of the next step before O += P V of the current one and runs the softmax
// while the tensor cores work (FA3 sec. 3.2, intra-warpgroup overlap).
#include "backend/cuda/attn-prefill-impl.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cmath>

namespace lc::cuda {
namespace {

constexpr int head_dim   = 128;
constexpr int block_q    = 128;            // 2 consumer warpgroups x 64 rows
constexpr int block_k    = 128;            // 2 pages per step
constexpr int n_threads  = 384;            // producer warpgroup + 2 consumer warpgroups
constexpr int half_bytes = 128 * 128;      // [128 rows][64 d] bf16: one half of head_dim
constexpr int tile_bytes = 2 * half_bytes; // [2 halves][128 rows][64 d], rows of 128 B, 128-byte swizzle
// Shared memory: Q tile, then n_stages K tiles, n_stages V tiles, then the mbarriers.
constexpr int smem_bytes_for(int n_stages) {
    return tile_bytes * (1 + 2 * n_stages) + 8 * (1 + 4 * n_stages) + 1024;
}

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
// Keeps the compiler from moving accumulator registers across the asynchronous wgmma region.
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
// D (64 x 128 f32) (+)= A (64 x 16, shared memory) * B (16 x 128, shared memory), both K-major.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// D (64 x 128 f32) (+)= A (64 x 16, registers) * B (16 x 128, shared memory, MN-major: transposed).
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}
// clang-format on

struct row_state {
    float m0 = -INFINITY, m1 = -INFINITY; // running max of rows g and g + 8, log2 domain (scaled)
    float l0 = 0.f, l1 = 0.f;             // running sums (this thread's columns only; reduced at the end)
};

// One step of the online softmax over a 64 x 128 score block held as wgmma accumulators: causal and window mask
// (keys key0 + col > row position, or <= lo = row position - window, for rows g and g + 8; -1 without a window),
// new running max, sc ->
// probabilities (f32, in place), al = rescale factors of O.
__device__ __forceinline__ void softmax_step(float (&sc)[64], row_state & st, bool need_mask, int64_t key0,
                                             int64_t row_pos, int64_t lo0, int64_t lo1, int t, float scale_log2,
                                             float & al0, float & al1) {
    if (need_mask) {
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const int64_t key = key0 + i * 8 + 2 * t;
            if (key > row_pos || key <= lo0) sc[4 * i + 0] = -INFINITY;
            if (key + 1 > row_pos || key + 1 <= lo0) sc[4 * i + 1] = -INFINITY;
            if (key > row_pos + 8 || key <= lo1) sc[4 * i + 2] = -INFINITY;
            if (key + 1 > row_pos + 8 || key + 1 <= lo1) sc[4 * i + 3] = -INFINITY;
        }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        mx0 = fmaxf(mx0, fmaxf(sc[4 * i + 0], sc[4 * i + 1]));
        mx1 = fmaxf(mx1, fmaxf(sc[4 * i + 2], sc[4 * i + 3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0   = fmaxf(st.m0, mx0 * scale_log2);
    const float mn1   = fmaxf(st.m1, mx1 * scale_log2);
    const float base0 = mn0 == -INFINITY ? 0.f : mn0; // a row with no key yet stays at p = 0
    const float base1 = mn1 == -INFINITY ? 0.f : mn1;
    al0               = fast_exp2(st.m0 - base0);
    al1               = fast_exp2(st.m1 - base1);
    st.m0             = mn0;
    st.m1             = mn1;
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        sc[4 * i + 0] = fast_exp2(fmaf(sc[4 * i + 0], scale_log2, -base0));
        sc[4 * i + 1] = fast_exp2(fmaf(sc[4 * i + 1], scale_log2, -base0));
        sc[4 * i + 2] = fast_exp2(fmaf(sc[4 * i + 2], scale_log2, -base1));
        sc[4 * i + 3] = fast_exp2(fmaf(sc[4 * i + 3], scale_log2, -base1));
        s0 += sc[4 * i + 0] + sc[4 * i + 1];
        s1 += sc[4 * i + 2] + sc[4 * i + 3];
    }
    st.l0 = st.l0 * al0 + s0;
    st.l1 = st.l1 * al1 + s1;
}

// Accumulator layout (m64nN): register 4 i + {0, 1} is row g, columns 8 i + 2 t + {0, 1}; 4 i + {2, 3} is row
// g + 8. The A operand of m64k16 from registers has the same layout, so P needs no shuffle.
__device__ __forceinline__ void pack_p(const float (&sc)[64], uint32_t (&pf)[8][4]) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        pf[i >> 1][(i & 1) * 2 + 0] = pack_bf16x2(sc[4 * i + 0], sc[4 * i + 1]);
        pf[i >> 1][(i & 1) * 2 + 1] = pack_bf16x2(sc[4 * i + 2], sc[4 * i + 3]);
    }
}

__device__ __forceinline__ void rescale(float (&acc)[64], float al0, float al1) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        acc[4 * i + 0] *= al0;
        acc[4 * i + 1] *= al0;
        acc[4 * i + 2] *= al1;
        acc[4 * i + 3] *= al1;
    }
}

// Q (this warpgroup's 64 rows) times the K tile of a stage; kb: the stage's K tile.
__device__ __forceinline__ void issue_qk(float (&sc)[64], uint32_t q_base, uint32_t kb) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        const uint32_t koff = (kk >> 2) * half_bytes + (kk & 3) * 32; // 16 d per step within a 128-byte row
        wgmma_ss(sc, smem_desc(q_base + koff, 16, 1024), smem_desc(kb + koff, 16, 1024), kk > 0);
    }
}

// O += P V; vb: the stage's V tile, read MN-major: 8 keys x 128 B per 1024-byte atom (SBO), the second half of
// head_dim half_bytes further (LBO).
__device__ __forceinline__ void issue_pv(float (&acc)[64], const uint32_t (&pf)[8][4], uint32_t vb) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) wgmma_rs(acc, pf[kk], smem_desc(vb + kk * 2048, half_bytes, 1024), 1);
}

// MODE 0: S, softmax, P V in turn (2 stages); 1: intra-warpgroup overlap (3 stages); 2: 1 plus ping-pong of the
// two consumer warpgroups (FA3 sec. 3.1): named barriers hand the tensor cores from one warpgroup to the other,
// so one runs its softmax while the other's products run.
template <bool O_F32, int MODE>
__global__ void __launch_bounds__(n_threads, 1)
    attn_prefill_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                              const __grid_constant__ CUtensorMap tm_v, const int32_t * __restrict__ pages, int64_t n_q,
                              int64_t pos0, int n_head, int64_t n_kv, int n_head_kv, float scale_log2, int64_t window,
                              void * __restrict__ o, float * __restrict__ lse) {
    constexpr bool PIPELINED = MODE >= 1;
    constexpr bool PINGPONG  = MODE == 2;
    constexpr int  n_stages  = PIPELINED ? 3 : 2;
    constexpr int  off_k     = tile_bytes;
    constexpr int  off_v     = tile_bytes * (1 + n_stages);
    constexpr int  off_bar   = tile_bytes * (1 + 2 * n_stages);

    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t                            base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const int                                 tid  = threadIdx.x;
    const int                                 wg   = tid >> 7;

    const int64_t n_qt     = (n_q + block_q - 1) / block_q;
    const int64_t qt       = n_qt - 1 - int64_t(blockIdx.x) / n_head; // longest rows first
    const int     h        = int(blockIdx.x % n_head);
    const int     hk       = h / (n_head / n_head_kv);
    const int64_t q_row0   = qt * block_q;
    const int64_t last_row = min(q_row0 + block_q - 1, n_q - 1);
    const int     n_kt     = int((pos0 + last_row) / block_k) + 1;
    // with a sliding window the steps below kt_lo hold no key any row sees
    const int kt_lo       = window > 0 ? int(max(int64_t(0), pos0 + q_row0 - window + 1) / block_k) : 0;
    const int n_steps     = n_kt - kt_lo;
    const int n_pages_seq = int((n_kv + kv_page_tokens - 1) / kv_page_tokens);

    const uint32_t bar_q   = base + off_bar;
    auto           k_full  = [&](int s) { return bar_q + 8 * (1 + s); };
    auto           v_full  = [&](int s) { return bar_q + 8 * (1 + n_stages + s); };
    auto           k_empty = [&](int s) { return bar_q + 8 * (1 + 2 * n_stages + s); };
    auto           v_empty = [&](int s) { return bar_q + 8 * (1 + 3 * n_stages + s); };
    if (tid == 0) {
        mbar_init(bar_q, 1);
        for (int s = 0; s < n_stages; ++s) {
            mbar_init(k_full(s), 1);
            mbar_init(v_full(s), 1);
            mbar_init(k_empty(s), 256); // every consumer thread arrives
            mbar_init(v_empty(s), 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
        if (tid == 0) {
            mbar_expect_tx(bar_q, tile_bytes);
            for (int half = 0; half < 2; ++half) {
                for (int rb = 0; rb < 2; ++rb) {
                    tma_load_3d(base + half * half_bytes + rb * 8192, &tm_q, half * 64, h, int(q_row0 + rb * 64),
                                bar_q);
                }
            }
            for (int it = 0; it < n_steps; ++it) {
                const int kt = n_kt - 1 - it; // the masked diagonal steps first
                const int s  = it % n_stages;
                const int ph = (it / n_stages) & 1;
                int       row[2];
                for (int p = 0; p < 2; ++p) {
                    // a step past the last page re-reads the last page; its keys are masked
                    const int lp = min(2 * kt + p, n_pages_seq - 1);
                    row[p]       = (pages[lp] * n_head_kv + hk) * kv_page_tokens;
                }
                const uint32_t kb = base + off_k + s * tile_bytes;
                const uint32_t vb = base + off_v + s * tile_bytes;
                mbar_wait(k_empty(s), ph ^ 1);
                mbar_expect_tx(k_full(s), tile_bytes);
                for (int half = 0; half < 2; ++half) {
                    for (int p = 0; p < 2; ++p) {
                        tma_load_2d(kb + half * half_bytes + p * 8192, &tm_k, half * 64, row[p], k_full(s));
                    }
                }
                mbar_wait(v_empty(s), ph ^ 1);
                mbar_expect_tx(v_full(s), tile_bytes);
                for (int half = 0; half < 2; ++half) {
                    for (int p = 0; p < 2; ++p) {
                        tma_load_2d(vb + half * half_bytes + p * 8192, &tm_v, half * 64, row[p], v_full(s));
                    }
                }
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
    const int c    = wg - 1; // consumer: query rows c * 64 .. c * 64 + 63 of the block
    const int w    = (tid >> 5) & 3;
    const int lane = tid & 31;
    const int t    = lane & 3;

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    row_state      st;
    const int64_t  row_pos    = pos0 + q_row0 + c * 64 + w * 16 + (lane >> 2); // rows g and g + 8 of this thread
    const int64_t  wg_min_pos = pos0 + q_row0 + c * 64;
    const uint32_t q_base     = base + c * 8192;
    const int64_t  lo0        = window > 0 ? row_pos - window : -1; // keys <= lo are outside the window
    const int64_t  lo1        = window > 0 ? row_pos + 8 - window : -1;
    auto           need_mask  = [&](int kt) {
        return int64_t(kt) * block_k + block_k - 1 > wg_min_pos ||
               (window > 0 && int64_t(kt) * block_k <= wg_min_pos + 63 - window);
    };

    mbar_wait(bar_q, 0);
    float    sc[64];
    uint32_t pf[8][4];
    if constexpr (!PIPELINED) {
        for (int it = 0; it < n_steps; ++it) {
            const int      kt = n_kt - 1 - it;
            const int      s  = it % n_stages;
            const uint32_t ph = (it / n_stages) & 1;
            mbar_wait(k_full(s), ph);
            wgmma_fence();
            issue_qk(sc, q_base, base + off_k + s * tile_bytes);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(sc);
            mbar_arrive(k_empty(s));
            float al0, al1;
            softmax_step(sc, st, need_mask(kt), int64_t(kt) * block_k, row_pos, lo0, lo1, t, scale_log2, al0, al1);
            rescale(acc, al0, al1);
            pack_p(sc, pf);
            mbar_wait(v_full(s), ph);
            wgmma_fence();
            issue_pv(acc, pf, base + off_v + s * tile_bytes);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(acc);
            mbar_arrive(v_empty(s));
        }
    } else {
        // ping-pong: warpgroup c issues its products after bar.sync on barrier 1 + c, then arrives on the other's
        auto turn_wait = [&] {
            if constexpr (PINGPONG) asm volatile("bar.sync %0, 256;\n" ::"r"(1 + c) : "memory");
        };
        auto turn_pass = [&] {
            if constexpr (PINGPONG) asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - c) : "memory");
        };
        if (c == 1) turn_pass(); // warpgroup 0 goes first
        {                        // step 0: S, softmax, P
            const int kt = n_kt - 1;
            mbar_wait(k_full(0), 0);
            turn_wait();
            wgmma_fence();
            issue_qk(sc, q_base, base + off_k);
            wgmma_commit();
            turn_pass();
            wgmma_wait<0>();
            fence_regs(sc);
            mbar_arrive(k_empty(0));
            float al0, al1;
            softmax_step(sc, st, need_mask(kt), int64_t(kt) * block_k, row_pos, lo0, lo1, t, scale_log2, al0, al1);
            pack_p(sc, pf);
        }
        for (int it = 1; it < n_steps; ++it) {
            const int      kt  = n_kt - 1 - it;
            const int      s   = it % n_stages;
            const uint32_t ph  = (it / n_stages) & 1;
            const int      sp  = (it - 1) % n_stages;
            const uint32_t php = ((it - 1) / n_stages) & 1;
            mbar_wait(k_full(s), ph);
            turn_wait();
            wgmma_fence();
            issue_qk(sc, q_base, base + off_k + s * tile_bytes); // S of this step ...
            wgmma_commit();
            mbar_wait(v_full(sp), php);
            issue_pv(acc, pf, base + off_v + sp * tile_bytes); // ... while O takes the previous step's P
            wgmma_commit();
            turn_pass();
            wgmma_wait<1>();
            fence_regs(sc);
            mbar_arrive(k_empty(s));
            float al0, al1;
            softmax_step(sc, st, need_mask(kt), int64_t(kt) * block_k, row_pos, lo0, lo1, t, scale_log2, al0, al1);
            wgmma_wait<0>();
            fence_regs(acc);
            mbar_arrive(v_empty(sp));
            rescale(acc, al0, al1);
            pack_p(sc, pf);
        }
        const int      sp  = (n_steps - 1) % n_stages;
        const uint32_t php = ((n_steps - 1) / n_stages) & 1;
        mbar_wait(v_full(sp), php);
        turn_wait();
        wgmma_fence();
        issue_pv(acc, pf, base + off_v + sp * tile_bytes);
        wgmma_commit();
        turn_pass();
        wgmma_wait<0>();
        fence_regs(acc);
        mbar_arrive(v_empty(sp));
        if (c == 0) turn_wait(); // takes warpgroup 1's last hand-over, so both barriers end balanced
    }

    float l0 = st.l0, l1 = st.l1;
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float   inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float   inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int64_t r0   = q_row0 + c * 64 + w * 16 + (lane >> 2);
    const int64_t r1   = r0 + 8;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int col = i * 8 + 2 * t;
        if constexpr (O_F32) {
            float * of = static_cast<float *>(o);
            if (r0 < n_q) {
                *reinterpret_cast<float2 *>(of + (size_t(r0) * n_head + h) * head_dim + col) =
                    make_float2(acc[4 * i + 0] * inv0, acc[4 * i + 1] * inv0);
            }
            if (r1 < n_q) {
                *reinterpret_cast<float2 *>(of + (size_t(r1) * n_head + h) * head_dim + col) =
                    make_float2(acc[4 * i + 2] * inv1, acc[4 * i + 3] * inv1);
            }
        } else {
            uint32_t * ob = static_cast<uint32_t *>(o);
            if (r0 < n_q) {
                ob[((size_t(r0) * n_head + h) * head_dim + col) / 2] =
                    pack_bf16x2(acc[4 * i + 0] * inv0, acc[4 * i + 1] * inv0);
            }
            if (r1 < n_q) {
                ob[((size_t(r1) * n_head + h) * head_dim + col) / 2] =
                    pack_bf16x2(acc[4 * i + 2] * inv1, acc[4 * i + 3] * inv1);
            }
        }
    }
    if (lse != nullptr && t == 0) {
        constexpr float ln2 = 0.69314718055994531f;
        if (r0 < n_q) lse[size_t(r0) * n_head + h] = l0 > 0.f ? (st.m0 + __log2f(l0)) * ln2 : -INFINITY;
        if (r1 < n_q) lse[size_t(r1) * n_head + h] = l1 > 0.f ? (st.m1 + __log2f(l1)) * ln2 : -INFINITY;
    }
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

// Tensor map of a row-major bf16 tensor with innermost dimension head_dim (128), boxes of 64 x ... elements.
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

} // namespace

void attn_prefill_launch_wgmma(const attn_prefill_args & a, int mode, cudaStream_t stream) {
    const cuuint64_t  q_dims[3]     = {cuuint64_t(head_dim), cuuint64_t(a.n_head), cuuint64_t(a.n_q)};
    const cuuint64_t  q_strides[2]  = {cuuint64_t(head_dim) * 2, cuuint64_t(a.n_head) * head_dim * 2};
    const cuuint32_t  q_box[3]      = {64, 1, 64};
    const cuuint64_t  kv_rows       = cuuint64_t(a.kv.n_pages_total) * a.kv.n_head_kv * kv_page_tokens;
    const cuuint64_t  kv_dims[2]    = {cuuint64_t(head_dim), kv_rows};
    const cuuint64_t  kv_strides[1] = {cuuint64_t(head_dim) * 2};
    const cuuint32_t  kv_box[2]     = {64, 64};
    const CUtensorMap tm_q          = make_map(a.q, 3, q_dims, q_strides, q_box);
    const CUtensorMap tm_k          = make_map(a.kv.k_pool, 2, kv_dims, kv_strides, kv_box);
    const CUtensorMap tm_v          = make_map(a.kv.v_pool, 2, kv_dims, kv_strides, kv_box);

    const int64_t n_qt       = (a.n_q + block_q - 1) / block_q;
    const float   scale_log2 = a.scale * 1.4426950408889634f;
    auto      kern = mode == 2   ? (a.o_f32 ? attn_prefill_wgmma_kernel<true, 2> : attn_prefill_wgmma_kernel<false, 2>)
                     : mode == 1 ? (a.o_f32 ? attn_prefill_wgmma_kernel<true, 1> : attn_prefill_wgmma_kernel<false, 1>)
                                 : (a.o_f32 ? attn_prefill_wgmma_kernel<true, 0> : attn_prefill_wgmma_kernel<false, 0>);
    const int smem = smem_bytes_for(mode >= 1 ? 3 : 2);
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(unsigned(n_qt * a.n_head)), n_threads, smem, stream>>>(tm_q, tm_k, tm_v, a.kv.pages, a.n_q, a.pos0,
                                                                       a.n_head, a.kv.n_kv, a.kv.n_head_kv, scale_log2,
                                                                       a.window, a.o, a.lse);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace lc::cuda
