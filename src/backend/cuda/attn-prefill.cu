// Causal prefill attention, FlashAttention-2 style on mma.sync (m16n8k16 bf16, f32 accumulate): 4 warps of 16
// query rows each, one 64-key page per step, K/V pages double-buffered through cp.async. Also the entry point
// attn_prefill(), which checks arguments and picks the variant.
#include "backend/cuda/attn-prefill-impl.cuh"

#include <cmath>

namespace lc::cuda {

status attn_prefill(const attn_prefill_args & a, attn_prefill_kernel kernel, cudaStream_t stream) {
    const int D = a.kv.head_dim;
    if (D != 64 && D != 128 && D != 256) {
        return error(status_code::UNSUPPORTED, "cuda attn_prefill: head_dim %d; this build supports 64, 128, 256", D);
    }
    if (D != 128 && (kernel == attn_prefill_kernel::WGMMA || kernel == attn_prefill_kernel::WGMMA_OVERLAP ||
                     kernel == attn_prefill_kernel::WGMMA_BASIC)) {
        return error(status_code::UNSUPPORTED, "cuda attn_prefill: the wgmma kernels support head_dim 128, not %d", D);
    }
    if (a.kv.n_head_kv <= 0 || a.n_head % a.kv.n_head_kv != 0) {
        return error(status_code::UNSUPPORTED, "cuda attn_prefill: n_head %d is not a multiple of n_head_kv %d",
                     a.n_head, a.kv.n_head_kv);
    }
    if (a.n_q < 0 || a.pos0 < 0 || a.window < 0 || a.kv.n_kv < a.pos0 + a.n_q) {
        return error(status_code::INVALID_ARGUMENT, "cuda attn_prefill: n_kv %lld < pos0 %lld + n_q %lld",
                     (long long)a.kv.n_kv, (long long)a.pos0, (long long)a.n_q);
    }
    if (a.n_q == 0) return status::ok();
    if (kernel == attn_prefill_kernel::AUTO) {
        int dev = 0, major = 0;
        LC_CUDA_CHECK(cudaGetDevice(&dev));
        LC_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        kernel = major == 9 && D == 128 ? attn_prefill_kernel::WGMMA : attn_prefill_kernel::MMA_SYNC;
    }
    if (kernel == attn_prefill_kernel::WGMMA) {
        attn_prefill_launch_wgmma(a, 2, stream);
    } else if (kernel == attn_prefill_kernel::WGMMA_OVERLAP) {
        attn_prefill_launch_wgmma(a, 1, stream);
    } else if (kernel == attn_prefill_kernel::WGMMA_BASIC) {
        attn_prefill_launch_wgmma(a, 0, stream);
    } else {
        attn_prefill_launch_mma_sync(a, stream);
    }
    return status::ok();
}

namespace {

constexpr int block_q   = 64; // query rows per block (16 per warp)
constexpr int block_k   = 64; // keys per step: one page
constexpr int n_threads = 128;
// Shared memory: Q, K[2], V[2], each 64 rows of D bf16
__host__ __device__ constexpr int tile_bytes_for(int D) {
    return 64 * D * 2;
}
__host__ __device__ constexpr int smem_bytes_for(int D) {
    return 5 * tile_bytes_for(D);
}

// One 64 x D page block (K or V of one KV head) into a swizzled tile; rows >= n_valid become zeros.
template <int D>
__device__ __forceinline__ void load_page(uint32_t dst, const __nv_bfloat16 * src, int n_valid, int tid) {
    constexpr int CPR = D / 8;           // 16-byte chunks per row
    constexpr int RPI = n_threads / CPR; // rows per iteration
    const int     c   = tid % CPR;
#pragma unroll
    for (int i = 0; i < 64 / RPI; ++i) {
        const int r = tid / CPR + RPI * i;
        cp_async_16(dst + tile_off<D>(r, c), src + r * D + c * 8, r < n_valid ? 16 : 0);
    }
}

// D: head_dim (64, 128, 256). Q fragments stay in registers up to D = 128; at 256 they are re-read from shared
// memory each step (the O accumulators alone take 128 registers there).
template <int D, bool O_F32>
__global__ void __launch_bounds__(n_threads)
    attn_prefill_mma_kernel(const __nv_bfloat16 * __restrict__ q, int64_t n_q, int64_t pos0, int n_head,
                            const __nv_bfloat16 * __restrict__ k_pool, const __nv_bfloat16 * __restrict__ v_pool,
                            const int32_t * __restrict__ pages, int64_t n_kv, int n_head_kv, float scale_log2,
                            int64_t window, void * __restrict__ o, float * __restrict__ lse) {
    constexpr int     tile_bytes = tile_bytes_for(D);
    constexpr int     KD         = D / 16; // k-steps of Q K^T, and 16-column pairs of O
    constexpr bool    Q_IN_REGS  = D <= 128;
    extern __shared__ __align__(128) uint8_t smem[];
    const int                                tid  = threadIdx.x;
    const int                                warp = tid >> 5;
    const int                                lane = tid & 31;
    const int                                g    = lane >> 2;
    const int                                t    = lane & 3;

    const int64_t n_qt = (n_q + block_q - 1) / block_q;
    const int64_t qt   = n_qt - 1 - int64_t(blockIdx.x) / n_head; // longest rows first
    const int     h    = int(blockIdx.x % n_head);
    const int     hk   = h / (n_head / n_head_kv);

    const uint32_t s_q = smem_u32(smem);
    // K buffer b at s_q + (1 + b) * tile_bytes, V buffer b at s_q + (3 + b) * tile_bytes

    const int64_t q_row0     = qt * block_q;
    const int64_t last_row   = min(q_row0 + block_q - 1, n_q - 1);
    const int     n_kt       = int((pos0 + last_row) / block_k) + 1;
    const size_t  page_elems = size_t(n_head_kv) * block_k * D;

    { // Q tile: rows past n_q are zeros
        constexpr int CPR = D / 8, RPI = n_threads / CPR;
        const int     c = tid % CPR;
#pragma unroll
        for (int i = 0; i < 64 / RPI; ++i) {
            const int     r   = tid / CPR + RPI * i;
            const int64_t row = min(q_row0 + r, n_q - 1);
            cp_async_16(s_q + tile_off<D>(r, c), q + (size_t(row) * n_head + h) * D + c * 8, q_row0 + r < n_q ? 16 : 0);
        }
    }
    auto load_kv = [&](int kt, int buf) {
        const size_t base = size_t(pages[kt]) * page_elems + size_t(hk) * block_k * D;
        const int    nv   = int(min(int64_t(block_k), n_kv - int64_t(kt) * block_k));
        load_page<D>(s_q + (1 + buf) * tile_bytes, k_pool + base, nv, tid);
        load_page<D>(s_q + (3 + buf) * tile_bytes, v_pool + base, nv, tid);
    };
    // with a sliding window the first steps hold no key any row sees
    const int kt_lo = window > 0 ? int(max(int64_t(0), pos0 + q_row0 - window + 1) / block_k) : 0;
    load_kv(kt_lo, 0);
    cp_async_commit();

    uint32_t qf[Q_IN_REGS ? KD : 1][4];
    float    acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    auto q_frag = [&](int kk, uint32_t(&f)[4]) {
        ldmatrix_x4(s_q + tile_off<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), f[0], f[1], f[2], f[3]);
    };
    float         m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const int64_t row_pos0    = pos0 + q_row0 + warp * 16 + g; // position of this thread's rows g and g + 8
    const int64_t cta_min_pos = pos0 + q_row0;
    const int64_t cta_max_pos = pos0 + last_row;
    // sliding window: row p sees keys p - window < j <= p; lo = the last key it does not see (-1: none)
    const int64_t lo0 = window > 0 ? row_pos0 - window : -1;
    const int64_t lo1 = window > 0 ? row_pos0 + 8 - window : -1;

    for (int kt = kt_lo; kt < n_kt; ++kt) {
        const int buf = (kt - kt_lo) & 1;
        if (kt + 1 < n_kt) {
            load_kv(kt + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const uint32_t s_kb = s_q + (1 + buf) * tile_bytes;
        const uint32_t s_vb = s_q + (3 + buf) * tile_bytes;
        if constexpr (Q_IN_REGS) {
            if (kt == kt_lo) {
#pragma unroll
                for (int kk = 0; kk < KD; ++kk) q_frag(kk, qf[kk]);
            }
        }
        // S = Q K^T: 16 rows x 64 keys per warp
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            uint32_t qs[4];
            if constexpr (!Q_IN_REGS) q_frag(kk, qs);
            const uint32_t(&a)[4] = Q_IN_REGS ? qf[Q_IN_REGS ? kk : 0] : qs;
#pragma unroll
            for (int nn = 0; nn < 4; ++nn) {
                uint32_t  b0, b1, b2, b3;
                const int key = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(s_kb + tile_off<D>(key, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_bf16(s[2 * nn], a, b0, b1);
                mma_bf16(s[2 * nn + 1], a, b2, b3);
            }
        }
        // causal mask on the steps that reach past the first row of the block, window mask on those that start
        // at or below the last row's window
        if (int64_t(kt) * block_k + block_k - 1 > cta_min_pos ||
            (window > 0 && int64_t(kt) * block_k <= cta_max_pos - window)) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int64_t key = int64_t(kt) * block_k + j * 8 + 2 * t;
                if (key > row_pos0 || key <= lo0) s[j][0] = -INFINITY;
                if (key + 1 > row_pos0 || key + 1 <= lo0) s[j][1] = -INFINITY;
                if (key > row_pos0 + 8 || key <= lo1) s[j][2] = -INFINITY;
                if (key + 1 > row_pos0 + 8 || key + 1 <= lo1) s[j][3] = -INFINITY;
            }
        }
        // online softmax in the log2 domain
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0   = fmaxf(m0, mx0 * scale_log2);
        const float mn1   = fmaxf(m1, mx1 * scale_log2);
        const float base0 = mn0 == -INFINITY ? 0.f : mn0;
        const float base1 = mn1 == -INFINITY ? 0.f : mn1;
        const float al0   = fast_exp2(m0 - base0);
        const float al1   = fast_exp2(m1 - base1);
        m0                = mn0;
        m1                = mn1;
        l0 *= al0;
        l1 *= al1;
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            acc[i][0] *= al0;
            acc[i][1] *= al0;
            acc[i][2] *= al1;
            acc[i][3] *= al1;
        }
        uint32_t pf[4][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float p0 = fast_exp2(s[j][0] * scale_log2 - base0);
            const float p1 = fast_exp2(s[j][1] * scale_log2 - base0);
            const float p2 = fast_exp2(s[j][2] * scale_log2 - base1);
            const float p3 = fast_exp2(s[j][3] * scale_log2 - base1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            pf[j >> 1][(j & 1) * 2 + 0] = pack_bf16x2(p0, p1);
            pf[j >> 1][(j & 1) * 2 + 1] = pack_bf16x2(p2, p3);
        }
        // O += P V
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
            for (int dd = 0; dd < KD; ++dd) {
                uint32_t  b0, b1, b2, b3;
                const int key = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                ldmatrix_x4_trans(s_vb + tile_off<D>(key, dd * 2 + (lane >> 4)), b0, b1, b2, b3);
                mma_bf16(acc[2 * dd], pf[kk], b0, b1);
                mma_bf16(acc[2 * dd + 1], pf[kk], b2, b3);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float   inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float   inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int64_t r0   = q_row0 + warp * 16 + g;
    const int64_t r1   = r0 + 8;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        const int col = i * 8 + 2 * t;
        if (O_F32) {
            float * of = static_cast<float *>(o);
            if (r0 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r0) * n_head + h) * D + col) =
                    make_float2(acc[i][0] * inv0, acc[i][1] * inv0);
            if (r1 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r1) * n_head + h) * D + col) =
                    make_float2(acc[i][2] * inv1, acc[i][3] * inv1);
        } else {
            uint32_t * ob = static_cast<uint32_t *>(o);
            if (r0 < n_q)
                ob[((size_t(r0) * n_head + h) * D + col) / 2] = pack_bf16x2(acc[i][0] * inv0, acc[i][1] * inv0);
            if (r1 < n_q)
                ob[((size_t(r1) * n_head + h) * D + col) / 2] = pack_bf16x2(acc[i][2] * inv1, acc[i][3] * inv1);
        }
    }
    if (lse != nullptr && t == 0) {
        constexpr float ln2 = 0.69314718055994531f;
        if (r0 < n_q) lse[size_t(r0) * n_head + h] = l0 > 0.f ? (m0 + __log2f(l0)) * ln2 : -INFINITY;
        if (r1 < n_q) lse[size_t(r1) * n_head + h] = l1 > 0.f ? (m1 + __log2f(l1)) * ln2 : -INFINITY;
    }
}

template <int D> void launch_mma(const attn_prefill_args & a, cudaStream_t stream) {
    const int64_t n_qt       = (a.n_q + block_q - 1) / block_q;
    const float   scale_log2 = a.scale * 1.4426950408889634f;
    const auto *  q          = reinterpret_cast<const __nv_bfloat16 *>(a.q);
    const auto *  k          = reinterpret_cast<const __nv_bfloat16 *>(a.kv.k_pool);
    const auto *  v          = reinterpret_cast<const __nv_bfloat16 *>(a.kv.v_pool);
    auto          kern       = a.o_f32 ? attn_prefill_mma_kernel<D, true> : attn_prefill_mma_kernel<D, false>;
    constexpr int smem       = smem_bytes_for(D);
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(unsigned(n_qt * a.n_head)), n_threads, smem, stream>>>(
        q, a.n_q, a.pos0, a.n_head, k, v, a.kv.pages, a.kv.n_kv, a.kv.n_head_kv, scale_log2, a.window, a.o, a.lse);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace

void attn_prefill_launch_mma_sync(const attn_prefill_args & a, cudaStream_t stream) {
    switch (a.kv.head_dim) {
    case 64:
        launch_mma<64>(a, stream);
        break;
    case 128:
        launch_mma<128>(a, stream);
        break;
    default:
        launch_mma<256>(a, stream);
        break;
    }
}

} // namespace lc::cuda
