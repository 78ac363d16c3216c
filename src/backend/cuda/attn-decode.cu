// Split-K paged decode attention: block (split, KV head, sequence) streams its run of pages once for all G query
// heads of the GQA group; 16 threads share a token row (16 bytes each) and every 16-thread group keeps its own
// online-softmax state, so the page loop needs no block barrier. The groups' states are merged in shared memory,
// the splits' states by attn_decode_merge_kernel.
#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/cuda-common.cuh"

#include <algorithm>
#include <cmath>

namespace lc::cuda {
namespace {

constexpr int   head_dim            = 128;
constexpr int   n_threads           = 128; // 8 groups of 16 threads; a group reads one token row per load
constexpr int   min_pages_per_split = 4;
constexpr float ln2                 = 0.69314718055994531f;

__device__ __forceinline__ uint4 load_stream(const void * p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ void unpack8(const uint4 & v, float (&f)[8]) {
    f[0] = bf16_lo(v.x);
    f[1] = bf16_hi(v.x);
    f[2] = bf16_lo(v.y);
    f[3] = bf16_hi(v.y);
    f[4] = bf16_lo(v.z);
    f[5] = bf16_hi(v.z);
    f[6] = bf16_lo(v.w);
    f[7] = bf16_hi(v.w);
}

// PREFETCH: the next page's loads are issued before this page is computed (two pages in flight per thread;
// 255 registers at G = 4, so 2 blocks per SM; at G = 8 it would spill and is off).
// Partial state of one split: o_part [n_seq][n_head][n_split][head_dim] f32 (normalised over the split's keys),
// lse_part [n_seq][n_head][n_split] f32 (natural log; -inf for an empty split).
template <int G, bool PREFETCH>
__global__ void __launch_bounds__(n_threads)
    attn_decode_split_kernel(const uint16_t * __restrict__ q, int      n_head, const uint16_t * __restrict__ k_pool,
                             const uint16_t * __restrict__ v_pool, int n_head_kv, const int32_t * __restrict__ pages,
                             int64_t pages_stride, const int32_t * __restrict__ n_kv, int pages_per_split,
                             float scale_log2, float * __restrict__ o_part, float * __restrict__ lse_part) {
    const int split   = blockIdx.x;
    const int n_split = gridDim.x;
    const int hk      = blockIdx.y;
    const int b       = blockIdx.z;
    const int tid     = threadIdx.x;
    const int c       = tid & 15; // 16-byte chunk of the row: d = 8c .. 8c + 7
    const int r       = tid >> 4; // token row within each 8-row slab of the page

    float qf[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const uint4 v = *reinterpret_cast<const uint4 *>(q + (size_t(b) * n_head + hk * G + g) * head_dim + c * 8);
        unpack8(v, qf[g]);
#pragma unroll
        for (int j = 0; j < 8; ++j) qf[g][j] *= scale_log2;
    }

    const int n       = n_kv[b];
    const int p_begin = split * pages_per_split;
    const int p_end   = min(p_begin + pages_per_split, (n + kv_page_tokens - 1) / kv_page_tokens);

    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
    }

    const int32_t * pt         = pages + size_t(b) * pages_stride;
    const size_t    page_elems = size_t(n_head_kv) * kv_page_tokens * head_dim;
    auto            load_page  = [&](int p, uint4(&kr)[8], uint4(&vr)[8]) {
        const size_t off = size_t(pt[p]) * page_elems + size_t(hk) * kv_page_tokens * head_dim + r * head_dim + c * 8;
#pragma unroll
        for (int i = 0; i < 8; ++i) kr[i] = load_stream(k_pool + off + i * 8 * head_dim);
#pragma unroll
        for (int i = 0; i < 8; ++i) vr[i] = load_stream(v_pool + off + i * 8 * head_dim);
    };
    uint4 kr[8], vr[8];
    if (PREFETCH && p_begin < p_end) load_page(p_begin, kr, vr);
    for (int p = p_begin; p < p_end; ++p) {
        uint4 kn[8], vn[8];
        if constexpr (PREFETCH) {
            if (p + 1 < p_end) load_page(p + 1, kn, vn); // in flight while this page is computed
        } else {
            load_page(p, kr, vr);
        }

        float s[8][G];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float kf[8];
            unpack8(kr[i], kf);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float d = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) d = fmaf(qf[g][j], kf[j], d);
                s[i][g] = d;
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
            for (int g = 0; g < G; ++g) {
#pragma unroll
                for (int off2 = 8; off2 >= 1; off2 >>= 1) s[i][g] += __shfl_xor_sync(0xffffffffu, s[i][g], off2);
            }
        }
        const int valid = n - p * kv_page_tokens; // tokens r + 8 i < valid are real
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            if (r + 8 * i >= valid) {
#pragma unroll
                for (int g = 0; g < G; ++g) s[i][g] = -INFINITY;
                vr[i] = make_uint4(0, 0, 0, 0); // rows past n_kv may hold anything
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float mx = s[0][g];
#pragma unroll
            for (int i = 1; i < 8; ++i) mx = fmaxf(mx, s[i][g]);
            const float mn   = fmaxf(m[g], mx);
            const float base = mn == -INFINITY ? 0.f : mn;
            const float al   = fast_exp2(m[g] - base);
            m[g]             = mn;
            l[g] *= al;
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[g][j] *= al;
#pragma unroll
            for (int i = 0; i < 8; ++i) s[i][g] = fast_exp2(s[i][g] - base);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float vf[8];
            unpack8(vr[i], vf);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                l[g] += s[i][g];
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(s[i][g], vf[j], acc[g][j]);
            }
        }
        if constexpr (PREFETCH) {
            if (p + 1 < p_end) {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    kr[i] = kn[i];
                    vr[i] = vn[i];
                }
            }
        }
    }

    // merge the 8 group states (log2 domain) through shared memory
    __shared__ float sm_acc[8][G][head_dim];
    __shared__ float sm_m[8][G], sm_l[8][G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) sm_acc[r][g][c * 8 + j] = acc[g][j];
        if (c == 0) {
            sm_m[r][g] = m[g];
            sm_l[r][g] = l[g];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < G * head_dim; idx += n_threads) {
        const int g  = idx / head_dim;
        const int d  = idx % head_dim;
        float     mm = -INFINITY;
#pragma unroll
        for (int rr = 0; rr < 8; ++rr) mm = fmaxf(mm, sm_m[rr][g]);
        float L = 0.f, O = 0.f;
        if (mm != -INFINITY) {
#pragma unroll
            for (int rr = 0; rr < 8; ++rr) {
                const float w = fast_exp2(sm_m[rr][g] - mm);
                L += sm_l[rr][g] * w;
                O += sm_acc[rr][g][d] * w;
            }
        }
        const size_t row           = (size_t(b) * n_head + hk * G + g) * n_split + split;
        o_part[row * head_dim + d] = L > 0.f ? O / L : 0.f;
        if (d == 0) lse_part[row] = L > 0.f ? (mm + __log2f(L)) * ln2 : -INFINITY;
    }
}

// One block per (sequence, head), one thread per d: merges the n_split partial states by log-sum-exp.
template <bool O_F32>
__global__ void __launch_bounds__(head_dim)
    attn_decode_merge_kernel(const float * __restrict__ o_part, const float * __restrict__ lse_part, int n_split,
                             void * __restrict__ o, float * __restrict__ lse) {
    const size_t  row = blockIdx.x;
    const int     d   = threadIdx.x;
    const float * lp  = lse_part + row * n_split;
    float         mm  = -INFINITY;
    for (int s = 0; s < n_split; ++s) mm = fmaxf(mm, lp[s]);
    float L = 0.f, O = 0.f;
    if (mm != -INFINITY) {
        for (int s = 0; s < n_split; ++s) {
            const float w = __expf(lp[s] - mm);
            L += w;
            O += w * o_part[(row * n_split + s) * head_dim + d];
        }
    }
    const float val = L > 0.f ? O / L : 0.f;
    if constexpr (O_F32) {
        static_cast<float *>(o)[row * head_dim + d] = val;
    } else {
        static_cast<__nv_bfloat16 *>(o)[row * head_dim + d] = __float2bfloat16_rn(val);
    }
    if (lse != nullptr && d == 0) lse[row] = L > 0.f ? mm + __logf(L) : -INFINITY;
}

int device_sm_count() {
    int dev = 0, n_sm = 0;
    LC_CUDA_CHECK(cudaGetDevice(&dev));
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    return n_sm;
}

// Blocks of the split kernel for group size G that fit on one SM at once (registers decide: 2 at G = 4).
int split_blocks_per_sm(int G) {
    int n = 0;
    switch (G) {
    case 1:
        LC_CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_split_kernel<1, true>, n_threads, 0));
        break;
    case 2:
        LC_CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_split_kernel<2, true>, n_threads, 0));
        break;
    case 4:
        LC_CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_split_kernel<4, true>, n_threads, 0));
        break;
    default:
        LC_CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_split_kernel<8, false>, n_threads, 0));
        break;
    }
    return std::max(1, n);
}

} // namespace

// With few (sequence, KV head) pairs, one wave of long splits: every SM streams from start to end, no tail wave.
// With many, about 6 waves, which evens out the blocks' finishing times. Never under 4 pages a split.
// H100 (132 SMs x 2 blocks at G = 4 = 264 slots), 8 KV heads, GB/s by split count (bench/cuda, --splits):
//   batch 1, 32k:   12: 1780  24: 1867  33: 2082  50: 1839  99: 1838   -> rule: 33
//   batch 1, 128k:  12: 2257  24: 2518  33: 2576  50: 2427  99: 2497   -> rule: 33
//   batch 16, 32k:  12: 2878  24: 2841  33: 2861  50: 2849  99: 2762   -> rule: 12
//   batch 16, 128k: 12: 3012  24: 2976  33: 2995  50: 3005  99: 2957   -> rule: 12
int attn_decode_n_split(int n_seq, int n_head, int n_head_kv, int64_t n_kv_max) {
    const int     G       = n_head_kv > 0 ? std::max(1, n_head / n_head_kv) : 1;
    const int64_t n_pages = (n_kv_max + kv_page_tokens - 1) / kv_page_tokens;
    const int64_t pairs   = std::max<int64_t>(1, int64_t(n_seq) * n_head_kv);
    const int64_t slots   = int64_t(split_blocks_per_sm(G)) * device_sm_count();
    const int64_t waves   = pairs * 8 <= slots ? 1 : 6;
    const int64_t n       = std::min<int64_t>(waves * slots / pairs, n_pages / min_pages_per_split);
    return int(std::max<int64_t>(1, n));
}

size_t attn_decode_workspace_bytes(int n_seq, int n_head, int head_dim_, int n_split) {
    return size_t(n_seq) * n_head * n_split * (size_t(head_dim_) + 1) * sizeof(float);
}

status attn_decode(const attn_decode_args & a, cudaStream_t stream) {
    if (a.head_dim != head_dim) {
        return error(status_code::UNSUPPORTED, "cuda attn_decode: head_dim %d; this build supports 128", a.head_dim);
    }
    const int G = a.n_head_kv > 0 && a.n_head % a.n_head_kv == 0 ? a.n_head / a.n_head_kv : 0;
    if (G != 1 && G != 2 && G != 4 && G != 8) {
        return error(status_code::UNSUPPORTED,
                     "cuda attn_decode: n_head %d / n_head_kv %d; supported groups 1, 2, 4, 8", a.n_head, a.n_head_kv);
    }
    if (a.n_seq <= 0) return status::ok();
    const int    n_split = a.n_split > 0 ? a.n_split : attn_decode_n_split(a.n_seq, a.n_head, a.n_head_kv, a.n_kv_max);
    const size_t need    = attn_decode_workspace_bytes(a.n_seq, a.n_head, head_dim, n_split);
    if (a.workspace == nullptr || a.workspace_bytes < need) {
        return error(status_code::INVALID_ARGUMENT, "cuda attn_decode: workspace of %zu bytes; this shape needs %zu",
                     a.workspace_bytes, need);
    }
    const int64_t n_pages         = (a.n_kv_max + kv_page_tokens - 1) / kv_page_tokens;
    const int     pages_per_split = int(std::max<int64_t>(1, (n_pages + n_split - 1) / n_split));
    float *       o_part          = static_cast<float *>(a.workspace);
    float *       lse_part        = o_part + size_t(a.n_seq) * a.n_head * n_split * head_dim;
    const float   scale_log2      = a.scale * 1.4426950408889634f;
    const dim3    grid(unsigned(n_split), unsigned(a.n_head_kv), unsigned(a.n_seq));
    switch (G) {
#define LC_DECODE_CASE(GG)                                                                                             \
    case GG:                                                                                                           \
        attn_decode_split_kernel<GG, (GG <= 4)>                                                                        \
            <<<grid, n_threads, 0, stream>>>(a.q, a.n_head, a.k_pool, a.v_pool, a.n_head_kv, a.pages, a.pages_stride,  \
                                             a.n_kv, pages_per_split, scale_log2, o_part, lse_part);                   \
        break;
        LC_DECODE_CASE(1)
        LC_DECODE_CASE(2)
        LC_DECODE_CASE(4)
        LC_DECODE_CASE(8)
#undef LC_DECODE_CASE
    }
    LC_CUDA_CHECK_LAUNCH();
    const unsigned n_rows = unsigned(a.n_seq * a.n_head);
    if (a.o_f32) {
        attn_decode_merge_kernel<true><<<n_rows, head_dim, 0, stream>>>(o_part, lse_part, n_split, a.o, a.lse);
    } else {
        attn_decode_merge_kernel<false><<<n_rows, head_dim, 0, stream>>>(o_part, lse_part, n_split, a.o, a.lse);
    }
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

} // namespace lc::cuda
