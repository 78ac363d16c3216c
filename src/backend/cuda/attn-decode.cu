// Split-K paged decode attention: block (split, KV head, sequence) streams its run of pages once for all G query
// heads of the GQA group; head_dim / 8 threads share a token row (16 bytes each) and every such group keeps its
// own online-softmax state, so the page loop needs no block barrier. The groups' states are merged in shared
// memory, the splits' states by attn_decode_merge_kernel.
#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/cuda-common.cuh"

#include <algorithm>
#include <climits>
#include <cmath>

namespace lc::cuda {
namespace {

constexpr int   n_threads           = 128; // 128 / (D / 8) groups; a group reads one token row per load
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

// D: head_dim (64, 128, 256); G: query heads per KV head (1..8). PREFETCH: the next page's loads are issued
// before this page is computed (two pages in flight per thread; at D = 128, G = 4 that takes 255 registers, so
// 2 blocks per SM; where it would spill it is off, see prefetch_fits).
// Partial state of one split: o_part [n_seq][n_head][n_split][D] f32 (normalised over the split's keys),
// lse_part [n_seq][n_head][n_split] f32 (natural log; -inf for an empty split).
template <int D, int G, bool PREFETCH>
__global__ void __launch_bounds__(n_threads)
    attn_decode_split_kernel(const uint16_t * __restrict__ q, int      n_head, const uint16_t * __restrict__ k_pool,
                             const uint16_t * __restrict__ v_pool, int n_head_kv, const int32_t * __restrict__ pages,
                             int64_t pages_stride, const int32_t * __restrict__ n_kv, int pages_per_split,
                             float scale_log2, int window, float * __restrict__ o_part, float * __restrict__ lse_part) {
    constexpr int TPR     = D / 8;                // threads per token row
    constexpr int RPP     = n_threads / TPR;      // rows per pass of the block
    constexpr int NP      = kv_page_tokens / RPP; // passes per page = loads per thread per page, K and V each
    const int     split   = blockIdx.x;
    const int     n_split = gridDim.x;
    const int     hk      = blockIdx.y;
    const int     b       = blockIdx.z;
    const int     tid     = threadIdx.x;
    const int     c       = tid % TPR; // 16-byte chunk of the row: d = 8c .. 8c + 7
    const int     r       = tid / TPR; // token row within each RPP-row slab of the page

    float qf[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const uint4 v = *reinterpret_cast<const uint4 *>(q + (size_t(b) * n_head + hk * G + g) * D + c * 8);
        unpack8(v, qf[g]);
#pragma unroll
        for (int j = 0; j < 8; ++j) qf[g][j] *= scale_log2;
    }

    const int n       = n_kv[b];
    const int t_lo    = window > 0 ? max(0, n - window) : 0; // first key the query sees
    const int p_begin = t_lo / kv_page_tokens + split * pages_per_split;
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
    const size_t    page_elems = size_t(n_head_kv) * kv_page_tokens * D;
    // D = 256 with G >= 6 spills (scores, q and accumulators of 6+ heads with 16 rows a thread): correct but slow.
    auto page_off = [&](int p) { return size_t(pt[p]) * page_elems + size_t(hk) * kv_page_tokens * D + r * D + c * 8; };
    auto load_rows = [&](const uint16_t * pool, size_t off, uint4(&dst)[NP]) {
#pragma unroll
        for (int i = 0; i < NP; ++i) dst[i] = load_stream(pool + off + i * RPP * D);
    };
    uint4 kr[NP], vr[NP];
    if (PREFETCH && p_begin < p_end) {
        load_rows(k_pool, page_off(p_begin), kr);
        load_rows(v_pool, page_off(p_begin), vr);
    }
    for (int p = p_begin; p < p_end; ++p) {
        uint4 kn[NP], vn[NP];
        if constexpr (PREFETCH) {
            if (p + 1 < p_end) { // in flight while this page is computed
                load_rows(k_pool, page_off(p + 1), kn);
                load_rows(v_pool, page_off(p + 1), vn);
            }
        } else {
            load_rows(k_pool, page_off(p), kr);
            load_rows(v_pool, page_off(p), vr);
        }

        float s[NP][G];
#pragma unroll
        for (int i = 0; i < NP; ++i) {
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
        for (int i = 0; i < NP; ++i) {
#pragma unroll
            for (int g = 0; g < G; ++g) {
#pragma unroll
                for (int off2 = TPR / 2; off2 >= 1; off2 >>= 1) s[i][g] += __shfl_xor_sync(0xffffffffu, s[i][g], off2);
            }
        }
        const int valid = n - p * kv_page_tokens;    // tokens r + RPP i < valid are real
        const int first = t_lo - p * kv_page_tokens; // and those >= first are in the window
#pragma unroll
        for (int i = 0; i < NP; ++i) {
            if (r + RPP * i >= valid) {
#pragma unroll
                for (int g = 0; g < G; ++g) s[i][g] = -INFINITY;
                vr[i] = make_uint4(0, 0, 0, 0); // rows past n_kv may hold anything
            } else if (r + RPP * i < first) {
#pragma unroll
                for (int g = 0; g < G; ++g) s[i][g] = -INFINITY;
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float mx = s[0][g];
#pragma unroll
            for (int i = 1; i < NP; ++i) mx = fmaxf(mx, s[i][g]);
            const float mn   = fmaxf(m[g], mx);
            const float base = mn == -INFINITY ? 0.f : mn;
            const float al   = fast_exp2(m[g] - base);
            m[g]             = mn;
            l[g] *= al;
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[g][j] *= al;
#pragma unroll
            for (int i = 0; i < NP; ++i) s[i][g] = fast_exp2(s[i][g] - base);
        }
#pragma unroll
        for (int i = 0; i < NP; ++i) {
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
                for (int i = 0; i < NP; ++i) {
                    kr[i] = kn[i];
                    vr[i] = vn[i];
                }
            }
        }
    }

    // merge the 8 group states (log2 domain) through shared memory
    __shared__ float sm_acc[RPP][G][D]; // 4096 G bytes for every D
    __shared__ float sm_m[RPP][G], sm_l[RPP][G];
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
    for (int idx = tid; idx < G * D; idx += n_threads) {
        const int g  = idx / D;
        const int d  = idx % D;
        float     mm = -INFINITY;
#pragma unroll
        for (int rr = 0; rr < RPP; ++rr) mm = fmaxf(mm, sm_m[rr][g]);
        float L = 0.f, O = 0.f;
        if (mm != -INFINITY) {
#pragma unroll
            for (int rr = 0; rr < RPP; ++rr) {
                const float w = fast_exp2(sm_m[rr][g] - mm);
                L += sm_l[rr][g] * w;
                O += sm_acc[rr][g][d] * w;
            }
        }
        const size_t row    = (size_t(b) * n_head + hk * G + g) * n_split + split;
        o_part[row * D + d] = L > 0.f ? O / L : 0.f;
        if (d == 0) lse_part[row] = L > 0.f ? (mm + __log2f(L)) * ln2 : -INFINITY;
    }
}

// One block per (sequence, head), one thread per d: merges the n_split partial states by log-sum-exp.
template <bool O_F32>
__global__ void __launch_bounds__(256)
    attn_decode_merge_kernel(const float * __restrict__ o_part, const float * __restrict__ lse_part, int n_split,
                             void * __restrict__ o, float * __restrict__ lse) {
    const size_t  row = blockIdx.x;
    const int     d   = threadIdx.x;
    const int     D   = blockDim.x; // head_dim
    const float * lp  = lse_part + row * n_split;
    float         mm  = -INFINITY;
    for (int s = 0; s < n_split; ++s) mm = fmaxf(mm, lp[s]);
    float L = 0.f, O = 0.f;
    if (mm != -INFINITY) {
        for (int s = 0; s < n_split; ++s) {
            const float w = __expf(lp[s] - mm);
            L += w;
            O += w * o_part[(row * n_split + s) * D + d];
        }
    }
    const float val = L > 0.f ? O / L : 0.f;
    if constexpr (O_F32) {
        static_cast<float *>(o)[row * D + d] = val;
    } else {
        static_cast<__nv_bfloat16 *>(o)[row * D + d] = __float2bfloat16_rn(val);
    }
    if (lse != nullptr && d == 0) lse[row] = L > 0.f ? mm + __logf(L) : -INFINITY;
}

// Tokens a query's keys can span in the page grid: a window of w tokens starting mid-page touches up to
// w + 63 tokens' worth of pages.
int64_t decode_span(int64_t n_kv_max, int64_t window) {
    return window > 0 ? std::min(n_kv_max, window + kv_page_tokens - 1) : n_kv_max;
}

int device_sm_count() {
    int dev = 0, n_sm = 0;
    LC_CUDA_CHECK(cudaGetDevice(&dev));
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    return n_sm;
}

using split_kernel_fn = void (*)(const uint16_t *, int, const uint16_t *, const uint16_t *, int, const int32_t *,
                                 int64_t, const int32_t *, int, float, int, float *, float *);

// Two pages of K and V in registers plus the state must stay under ~230 registers (255 with addressing).
constexpr bool prefetch_fits(int D, int G) {
    const int np = kv_page_tokens / (n_threads / (D / 8));
    return np * 16 + G * (16 + np) <= 230;
}

template <int D, int G> constexpr split_kernel_fn split_kernel_of() {
    return attn_decode_split_kernel<D, G, prefetch_fits(D, G)>;
}

template <int D> split_kernel_fn split_kernel_for_g(int G) {
    constexpr split_kernel_fn table[8] = {split_kernel_of<D, 1>(), split_kernel_of<D, 2>(), split_kernel_of<D, 3>(),
                                          split_kernel_of<D, 4>(), split_kernel_of<D, 5>(), split_kernel_of<D, 6>(),
                                          split_kernel_of<D, 7>(), split_kernel_of<D, 8>()};
    return table[G - 1];
}

// The split kernel for head_dim D and group size G; nullptr where unsupported.
split_kernel_fn split_kernel(int D, int G) {
    if (G < 1 || G > 8) return nullptr;
    switch (D) {
    case 64:
        return split_kernel_for_g<64>(G);
    case 128:
        return split_kernel_for_g<128>(G);
    case 256:
        return split_kernel_for_g<256>(G);
    default:
        return nullptr;
    }
}

// Blocks of the split kernel that fit on one SM at once (registers decide: 2 at D = 128, G = 4).
int split_blocks_per_sm(split_kernel_fn fn) {
    int n = 0;
    LC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, n_threads, 0));
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
int attn_decode_n_split(int n_seq, int n_head, int n_head_kv, int head_dim, int64_t n_kv_max) {
    const int       G  = n_head_kv > 0 ? std::max(1, n_head / n_head_kv) : 1;
    split_kernel_fn fn = split_kernel(head_dim, G);
    if (fn == nullptr) return 1;
    const int64_t n_pages = (n_kv_max + kv_page_tokens - 1) / kv_page_tokens;
    const int64_t pairs   = std::max<int64_t>(1, int64_t(n_seq) * n_head_kv);
    const int64_t slots   = int64_t(split_blocks_per_sm(fn)) * device_sm_count();
    const int64_t waves   = pairs * 8 <= slots ? 1 : 6;
    const int64_t n       = std::min<int64_t>(waves * slots / pairs, n_pages / min_pages_per_split);
    return int(std::max<int64_t>(1, n));
}

size_t attn_decode_workspace_bytes(int n_seq, int n_head, int head_dim_, int n_split) {
    return size_t(n_seq) * n_head * n_split * (size_t(head_dim_) + 1) * sizeof(float);
}

status attn_decode(const attn_decode_args & a, cudaStream_t stream) {
    const int             G  = a.n_head_kv > 0 && a.n_head % a.n_head_kv == 0 ? a.n_head / a.n_head_kv : 0;
    const split_kernel_fn fn = split_kernel(a.head_dim, G);
    if (fn == nullptr) {
        return error(status_code::UNSUPPORTED,
                     "cuda attn_decode: head_dim %d, n_head %d / n_head_kv %d; supported: head_dim 64, 128, 256 and "
                     "1..8 query heads per KV head",
                     a.head_dim, a.n_head, a.n_head_kv);
    }
    if (a.window < 0 || a.window > INT32_MAX) {
        return error(status_code::INVALID_ARGUMENT, "cuda attn_decode: window %lld out of range", (long long)a.window);
    }
    if (a.n_seq <= 0) return status::ok();
    const int    n_split = a.n_split > 0 ? a.n_split
                                         : attn_decode_n_split(a.n_seq, a.n_head, a.n_head_kv, a.head_dim,
                                                               decode_span(a.n_kv_max, a.window));
    const size_t need    = attn_decode_workspace_bytes(a.n_seq, a.n_head, a.head_dim, n_split);
    if (a.workspace == nullptr || a.workspace_bytes < need) {
        return error(status_code::INVALID_ARGUMENT, "cuda attn_decode: workspace of %zu bytes; this shape needs %zu",
                     a.workspace_bytes, need);
    }
    const int64_t n_pages         = (decode_span(a.n_kv_max, a.window) + kv_page_tokens - 1) / kv_page_tokens;
    const int     pages_per_split = int(std::max<int64_t>(1, (n_pages + n_split - 1) / n_split));
    float *       o_part          = static_cast<float *>(a.workspace);
    float *       lse_part        = o_part + size_t(a.n_seq) * a.n_head * n_split * a.head_dim;
    const float   scale_log2      = a.scale * 1.4426950408889634f;
    const dim3    grid(unsigned(n_split), unsigned(a.n_head_kv), unsigned(a.n_seq));
    fn<<<grid, n_threads, 0, stream>>>(a.q, a.n_head, a.k_pool, a.v_pool, a.n_head_kv, a.pages, a.pages_stride, a.n_kv,
                                       pages_per_split, scale_log2, int(a.window), o_part, lse_part);
    LC_CUDA_CHECK_LAUNCH();
    const unsigned n_rows = unsigned(a.n_seq * a.n_head);
    if (a.o_f32) {
        attn_decode_merge_kernel<true><<<n_rows, a.head_dim, 0, stream>>>(o_part, lse_part, n_split, a.o, a.lse);
    } else {
        attn_decode_merge_kernel<false><<<n_rows, a.head_dim, 0, stream>>>(o_part, lse_part, n_split, a.o, a.lse);
    }
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

} // namespace lc::cuda
