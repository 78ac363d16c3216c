// Split-K gather decode over a device plan (attn-sparse-decode.cuh). The rows of a list are numbered: first the
// tokens of its ranges, then its indices; block (split, entry, sequence) takes a run of rows_per_split of them,
// 64 at a time. head_dim / 8 threads share a row (16 bytes each); each row is located through the plan and the
// page table, read once for the entry's query heads, and the next 64 rows are in flight while this 64 are
// computed (as in the dense kernel, attn-decode.cu). Partial states are merged by log-sum-exp.
#include "backend/cuda/attn-sparse-decode.cuh"
#include "backend/cuda/cuda-common.cuh"

#include <algorithm>
#include <cmath>

namespace lc::cuda {

decode_plan_buf::~decode_plan_buf() {
    cudaFree(ranges);
    cudaFree(n_ranges);
    cudaFree(idx);
    cudaFree(n_idx);
    cudaFree(logw);
}

void decode_plan_buf::reserve(int64_t n_list_, int64_t idx_stride_, bool with_logw) {
    n_list     = n_list_;
    idx_stride = std::max<int64_t>(1, idx_stride_);
    if (size_t(n_list) > cap_lists) {
        LC_CUDA_CHECK(cudaFree(ranges));
        LC_CUDA_CHECK(cudaFree(n_ranges));
        LC_CUDA_CHECK(cudaFree(n_idx));
        LC_CUDA_CHECK(cudaMalloc(&ranges, size_t(n_list) * decode_plan_max_ranges * 2 * sizeof(int32_t)));
        LC_CUDA_CHECK(cudaMalloc(&n_ranges, size_t(n_list) * sizeof(int32_t)));
        LC_CUDA_CHECK(cudaMalloc(&n_idx, size_t(n_list) * sizeof(int32_t)));
        cap_lists = size_t(n_list);
    }
    const size_t n = size_t(n_list) * size_t(idx_stride);
    if (n > cap_idx) {
        LC_CUDA_CHECK(cudaFree(idx));
        LC_CUDA_CHECK(cudaMalloc(&idx, n * sizeof(int32_t)));
        cap_idx = n;
    }
    if (with_logw && n > cap_logw) {
        LC_CUDA_CHECK(cudaFree(logw));
        LC_CUDA_CHECK(cudaMalloc(&logw, n * sizeof(float)));
        cap_logw = n;
    }
}

decode_plan_dev decode_plan_view(const decode_plan_buf & b, int group, int64_t n_rows_max, bool with_logw) {
    decode_plan_dev p;
    p.group      = group;
    p.ranges     = b.ranges;
    p.n_ranges   = b.n_ranges;
    p.idx        = b.idx;
    p.n_idx      = b.n_idx;
    p.logw       = with_logw ? b.logw : nullptr;
    p.idx_stride = b.idx_stride;
    p.n_rows_max = n_rows_max;
    return p;
}

std::vector<decode_plan_host_list> decode_plan_download(const decode_plan_buf & b, int64_t n_list, bool with_logw) {
    std::vector<int32_t> r(size_t(n_list) * decode_plan_max_ranges * 2);
    std::vector<int32_t> nr(static_cast<size_t>(n_list)), ni(static_cast<size_t>(n_list));
    std::vector<int32_t> idx(size_t(n_list) * size_t(b.idx_stride));
    std::vector<float>   lw(with_logw ? idx.size() : 0);
    LC_CUDA_CHECK(cudaMemcpy(r.data(), b.ranges, r.size() * 4, cudaMemcpyDeviceToHost));
    LC_CUDA_CHECK(cudaMemcpy(nr.data(), b.n_ranges, nr.size() * 4, cudaMemcpyDeviceToHost));
    LC_CUDA_CHECK(cudaMemcpy(ni.data(), b.n_idx, ni.size() * 4, cudaMemcpyDeviceToHost));
    LC_CUDA_CHECK(cudaMemcpy(idx.data(), b.idx, idx.size() * 4, cudaMemcpyDeviceToHost));
    if (with_logw) LC_CUDA_CHECK(cudaMemcpy(lw.data(), b.logw, lw.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<decode_plan_host_list> out(static_cast<size_t>(n_list));
    for (int64_t l = 0; l < n_list; ++l) {
        decode_plan_host_list & o = out[size_t(l)];
        const int32_t *         rl = r.data() + size_t(l) * decode_plan_max_ranges * 2;
        o.ranges.assign(rl, rl + 2 * nr[size_t(l)]);
        const size_t base = size_t(l) * size_t(b.idx_stride);
        o.idx.assign(idx.begin() + ptrdiff_t(base), idx.begin() + ptrdiff_t(base + size_t(ni[size_t(l)])));
        if (with_logw) o.logw.assign(lw.begin() + ptrdiff_t(base), lw.begin() + ptrdiff_t(base + size_t(ni[size_t(l)])));
    }
    return out;
}

namespace {

constexpr int   n_threads       = 128;
constexpr int   rows_per_iter   = 32;
constexpr int   min_iters_split = 4; // at least 128 rows a split
constexpr float ln2             = 0.69314718055994531f;
constexpr float log2e           = 1.4426950408889634f;

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

// D: head_dim; GQ: query heads per plan entry (plan.group). Partial states as in attn-decode.cu:
// o_part [n_seq][n_head][n_split][D] f32 (normalised over the split's rows), lse_part [n_seq][n_head][n_split].
// 3 blocks per SM at head_dim <= 128 (168 registers; at G = 4 a few spill to L1); more registers above.
template <int D, int GQ, bool PREFETCH>
__global__ void __launch_bounds__(n_threads, D <= 128 ? 3 : 1)
    sparse_decode_split_kernel(const uint16_t * __restrict__ q, int n_head, const uint16_t * __restrict__ k_pool,
                               const uint16_t * __restrict__ v_pool, int n_head_kv, const int32_t * __restrict__ pages,
                               int64_t pages_stride, decode_plan_dev plan, int rows_per_split, float scale_log2,
                               float * __restrict__ o_part, float * __restrict__ lse_part) {
    constexpr int TPR     = D / 8;
    constexpr int RPP     = n_threads / TPR;
    constexpr int NP      = rows_per_iter / RPP;
    const int     split   = blockIdx.x;
    const int     n_split = gridDim.x;
    const int     e       = blockIdx.y;
    const int     n_entry = gridDim.y;
    const int     b       = blockIdx.z;
    const int     tid     = threadIdx.x;
    const int     c       = tid % TPR;
    const int     r       = tid / TPR;
    const int     list    = b * n_entry + e;
    const int     h0      = e * GQ;
    const int     hk      = h0 / (n_head / n_head_kv);

    __shared__ int s_rb[decode_plan_max_ranges], s_rc[decode_plan_max_ranges + 1];
    if (tid == 0) {
        const int       nr = plan.n_ranges[list];
        const int32_t * rl = plan.ranges + size_t(list) * decode_plan_max_ranges * 2;
        int             cum = 0;
        for (int i = 0; i < decode_plan_max_ranges; ++i) {
            s_rc[i] = cum;
            s_rb[i] = i < nr ? rl[2 * i] : 0;
            if (i < nr) cum += rl[2 * i + 1] - rl[2 * i];
        }
        s_rc[decode_plan_max_ranges] = cum;
    }
    __syncthreads();
    const int       n_rt    = s_rc[decode_plan_max_ranges];
    const int       n_rows  = n_rt + plan.n_idx[list];
    const int       r_begin = split * rows_per_split;
    const int       r_end   = min(r_begin + rows_per_split, n_rows);
    const int32_t * il      = plan.idx + size_t(list) * plan.idx_stride;
    const float *   wl      = plan.logw != nullptr ? plan.logw + size_t(list) * plan.idx_stride : nullptr;

    float qf[GQ][8];
#pragma unroll
    for (int g = 0; g < GQ; ++g) {
        const uint4 v = *reinterpret_cast<const uint4 *>(q + (size_t(b) * n_head + h0 + g) * D + c * 8);
        unpack8(v, qf[g]);
#pragma unroll
        for (int j = 0; j < 8; ++j) qf[g][j] *= scale_log2;
    }

    float m[GQ], l[GQ], acc[GQ][8];
#pragma unroll
    for (int g = 0; g < GQ; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
    }

    const int32_t * pt         = pages + size_t(b) * pages_stride;
    const size_t    page_elems = size_t(n_head_kv) * kv_page_tokens * D;
    const size_t    head_off   = size_t(hk) * kv_page_tokens * D + c * 8;
    // Rows it .. it + 63 of the list: K and V chunks of this thread's rows and their log2-domain weights (-inf for
    // rows past the split, whose loads read the split's first row instead). Three phases, each with all NP loads in
    // flight: plan entries, page-table entries, K/V rows.
    auto load_iter = [&](int it, uint4(&kd)[NP], uint4(&vd)[NP], float(&wd)[NP]) {
        int t[NP];
#pragma unroll
        for (int i = 0; i < NP; ++i) {
            int        rank = it + r + RPP * i;
            const bool ok   = rank < r_end;
            rank            = ok ? rank : r_begin;
            if (rank < n_rt) {
                int j = 0;
#pragma unroll
                for (int q2 = 1; q2 < decode_plan_max_ranges; ++q2) j += rank >= s_rc[q2];
                t[i]  = s_rb[j] + (rank - s_rc[j]);
                wd[i] = 0.f;
            } else {
                t[i]  = __ldg(il + rank - n_rt);
                wd[i] = wl != nullptr ? __ldg(wl + rank - n_rt) * log2e : 0.f;
            }
            if (!ok) wd[i] = -INFINITY;
        }
        int ph[NP];
#pragma unroll
        for (int i = 0; i < NP; ++i) ph[i] = __ldg(pt + t[i] / kv_page_tokens);
#pragma unroll
        for (int i = 0; i < NP; ++i) {
            const size_t off = size_t(ph[i]) * page_elems + head_off + size_t(t[i] % kv_page_tokens) * D;
            kd[i]            = load_stream(k_pool + off);
            vd[i]            = load_stream(v_pool + off);
        }
    };

    uint4 kr[NP], vr[NP];
    float wr[NP];
    if (PREFETCH && r_begin < r_end) load_iter(r_begin, kr, vr, wr);
    for (int it = r_begin; it < r_end; it += rows_per_iter) {
        uint4 kn[NP], vn[NP];
        float wn[NP];
        if constexpr (PREFETCH) {
            if (it + rows_per_iter < r_end) load_iter(it + rows_per_iter, kn, vn, wn);
        } else {
            load_iter(it, kr, vr, wr);
        }
        float s[NP][GQ];
#pragma unroll
        for (int i = 0; i < NP; ++i) {
            float kf[8];
            unpack8(kr[i], kf);
#pragma unroll
            for (int g = 0; g < GQ; ++g) {
                float d = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) d = fmaf(qf[g][j], kf[j], d);
                s[i][g] = d;
            }
        }
#pragma unroll
        for (int i = 0; i < NP; ++i) {
#pragma unroll
            for (int g = 0; g < GQ; ++g) {
#pragma unroll
                for (int off2 = TPR / 2; off2 >= 1; off2 >>= 1) s[i][g] += __shfl_xor_sync(0xffffffffu, s[i][g], off2);
                s[i][g] += wr[i];
            }
        }
#pragma unroll
        for (int g = 0; g < GQ; ++g) {
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
            for (int g = 0; g < GQ; ++g) {
                l[g] += s[i][g];
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(s[i][g], vf[j], acc[g][j]);
            }
        }
        if constexpr (PREFETCH) {
            if (it + rows_per_iter < r_end) {
#pragma unroll
                for (int i = 0; i < NP; ++i) {
                    kr[i] = kn[i];
                    vr[i] = vn[i];
                    wr[i] = wn[i];
                }
            }
        }
    }

    __shared__ float sm_acc[RPP][GQ][D];
    __shared__ float sm_m[RPP][GQ], sm_l[RPP][GQ];
#pragma unroll
    for (int g = 0; g < GQ; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) sm_acc[r][g][c * 8 + j] = acc[g][j];
        if (c == 0) {
            sm_m[r][g] = m[g];
            sm_l[r][g] = l[g];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < GQ * D; idx += n_threads) {
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
        const size_t row    = (size_t(b) * n_head + h0 + g) * n_split + split;
        o_part[row * D + d] = L > 0.f ? O / L : 0.f;
        if (d == 0) lse_part[row] = L > 0.f ? (mm + __log2f(L)) * ln2 : -INFINITY;
    }
}

// One block per (sequence, head), 4 x head_dim threads: quarter q merges the splits s = q mod 4 by log-sum-exp,
// then quarter 0 merges the four.
template <bool O_F32>
__global__ void __launch_bounds__(1024)
    sparse_decode_merge_kernel(const float * __restrict__ o_part, const float * __restrict__ lse_part, int n_split,
                               int D, void * __restrict__ o, float * __restrict__ lse) {
    constexpr int NQ = 4;
    __shared__ float sm_o[NQ][256], sm_m[NQ], sm_l[NQ];
    const size_t  row = blockIdx.x;
    const int     q   = threadIdx.x / D;
    const int     d   = threadIdx.x % D;
    const float * lp  = lse_part + row * n_split;
    float         mm  = -INFINITY;
#pragma unroll 4
    for (int s = q; s < n_split; s += NQ) mm = fmaxf(mm, lp[s]);
    float L = 0.f, O = 0.f;
    if (mm != -INFINITY) {
#pragma unroll 4
        for (int s = q; s < n_split; s += NQ) {
            const float w = __expf(lp[s] - mm);
            L += w;
            O += w * o_part[(row * n_split + s) * D + d];
        }
    }
    sm_o[q][d] = O;
    if (d == 0) {
        sm_m[q] = mm;
        sm_l[q] = L;
    }
    __syncthreads();
    if (q != 0) return;
    float M = -INFINITY;
#pragma unroll
    for (int i = 0; i < NQ; ++i) M = fmaxf(M, sm_m[i]);
    float Lt = 0.f, Ot = 0.f;
    if (M != -INFINITY) {
#pragma unroll
        for (int i = 0; i < NQ; ++i) {
            const float w = __expf(sm_m[i] - M); // 0 for a quarter with no keys (-inf)
            Lt += w * sm_l[i];
            Ot += w * sm_o[i][d];
        }
    }
    const float val = Lt > 0.f ? Ot / Lt : 0.f;
    if constexpr (O_F32) {
        static_cast<float *>(o)[row * D + d] = val;
    } else {
        static_cast<__nv_bfloat16 *>(o)[row * D + d] = __float2bfloat16_rn(val);
    }
    if (lse != nullptr && d == 0) lse[row] = Lt > 0.f ? M + __logf(Lt) : -INFINITY;
}

using split_fn = void (*)(const uint16_t *, int, const uint16_t *, const uint16_t *, int, const int32_t *, int64_t,
                          decode_plan_dev, int, float, float *, float *);

// Two iterations of K, V and weights in registers plus the state (cf. attn-decode.cu's prefetch_fits).
constexpr bool prefetch_fits(int D, int G) {
    const int np = rows_per_iter / (n_threads / (D / 8));
    return np * 16 + G * (16 + np) <= 230;
}

template <int D, int G> constexpr split_fn split_of() {
    return sparse_decode_split_kernel<D, G, prefetch_fits(D, G)>;
}

template <int D> split_fn split_for_g(int G) {
    constexpr split_fn table[8] = {split_of<D, 1>(), split_of<D, 2>(), split_of<D, 3>(), split_of<D, 4>(),
                                   split_of<D, 5>(), split_of<D, 6>(), split_of<D, 7>(), split_of<D, 8>()};
    return table[G - 1];
}

split_fn split_kernel(int D, int G) {
    if (G < 1 || G > 8) return nullptr;
    switch (D) {
    case 64:
        return split_for_g<64>(G);
    case 128:
        return split_for_g<128>(G);
    case 256:
        return split_for_g<256>(G);
    default:
        return nullptr;
    }
}

int sm_count() {
    int dev = 0, n = 0;
    LC_CUDA_CHECK(cudaGetDevice(&dev));
    LC_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
}

} // namespace

// As the dense kernel's rule (attn-decode.cu): few lists, one wave of long splits; many lists, about 6 waves.
int attn_sparse_decode_n_split(int n_seq, int n_head, int group, int head_dim, int64_t n_rows_max) {
    split_fn fn = split_kernel(head_dim, group);
    if (fn == nullptr || group <= 0) return 1;
    int per_sm = 0;
    LC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, n_threads, 0));
    const int64_t iters = (n_rows_max + rows_per_iter - 1) / rows_per_iter;
    const int64_t lists = std::max<int64_t>(1, int64_t(n_seq) * (n_head / group));
    const int64_t slots = int64_t(std::max(1, per_sm)) * sm_count();
    const int64_t waves = lists * 8 <= slots ? 1 : 6;
    const int64_t n     = std::min<int64_t>(waves * slots / lists, iters / min_iters_split);
    return int(std::max<int64_t>(1, n));
}

size_t attn_sparse_decode_workspace_bytes(int n_seq, int n_head, int head_dim, int n_split) {
    return size_t(n_seq) * n_head * n_split * (size_t(head_dim) + 1) * sizeof(float);
}

status attn_sparse_decode(const attn_sparse_decode_args & a, cudaStream_t stream) {
    const int G  = a.n_head_kv > 0 && a.n_head % a.n_head_kv == 0 ? a.n_head / a.n_head_kv : 0;
    const int GQ = a.plan.group;
    split_fn  fn = G > 0 && GQ > 0 && G % GQ == 0 ? split_kernel(a.head_dim, GQ) : nullptr;
    if (fn == nullptr) {
        return error(status_code::UNSUPPORTED,
                     "cuda attn_sparse_decode: head_dim %d, n_head %d / n_head_kv %d, plan group %d; supported: "
                     "head_dim 64, 128, 256 and groups of 1..8 query heads dividing the GQA group",
                     a.head_dim, a.n_head, a.n_head_kv, GQ);
    }
    if (a.n_seq <= 0) return status::ok();
    const int    n_split = a.n_split > 0 ? a.n_split
                                         : attn_sparse_decode_n_split(a.n_seq, a.n_head, GQ, a.head_dim, a.plan.n_rows_max);
    const size_t need    = attn_sparse_decode_workspace_bytes(a.n_seq, a.n_head, a.head_dim, n_split);
    if (a.workspace == nullptr || a.workspace_bytes < need) {
        return error(status_code::INVALID_ARGUMENT,
                     "cuda attn_sparse_decode: workspace of %zu bytes; this shape needs %zu", a.workspace_bytes, need);
    }
    const int64_t iters          = (std::max<int64_t>(1, a.plan.n_rows_max) + rows_per_iter - 1) / rows_per_iter;
    const int     rows_per_split = int((iters + n_split - 1) / n_split) * rows_per_iter;
    float *       o_part         = static_cast<float *>(a.workspace);
    float *       lse_part       = o_part + size_t(a.n_seq) * a.n_head * n_split * a.head_dim;
    const dim3    grid(unsigned(n_split), unsigned(a.n_head / GQ), unsigned(a.n_seq));
    fn<<<grid, n_threads, 0, stream>>>(a.q, a.n_head, a.k_pool, a.v_pool, a.n_head_kv, a.pages, a.pages_stride, a.plan,
                                       rows_per_split, a.scale * log2e, o_part, lse_part);
    LC_CUDA_CHECK_LAUNCH();
    const unsigned n_rows = unsigned(a.n_seq * a.n_head);
    if (a.o_f32) {
        sparse_decode_merge_kernel<true><<<n_rows, 4 * a.head_dim, 0, stream>>>(o_part, lse_part, n_split, a.head_dim, a.o, a.lse);
    } else {
        sparse_decode_merge_kernel<false><<<n_rows, 4 * a.head_dim, 0, stream>>>(o_part, lse_part, n_split, a.head_dim, a.o, a.lse);
    }
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

} // namespace lc::cuda
