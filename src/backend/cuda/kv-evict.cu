// Score-based KV eviction on the GPU (kv-evict.cuh): radix-select keep sets, scratch-buffered compaction of the
// paged K/V rows, and D2O's similarity search (mma.sync bf16, max/argmax epilogue) and merging.
#include "backend/cuda/kv-evict.cuh"

#include <algorithm>
#include <cmath>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "backend/cuda/attn-prefill-impl.cuh"
#include "backend/cuda/mma-rows.cuh"

namespace lc::cuda {

namespace {

size_t align_up(size_t x) {
    return (x + 255) & ~size_t(255);
}

// Order-preserving map of a float to uint32 (larger float -> larger key); NaN lowest, -0 as +0.
__device__ __forceinline__ uint32_t order_key(float x) {
    if (x != x) return 0u;
    if (x == 0.f) x = 0.f;
    const uint32_t b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

constexpr int keep_threads = 1024;

__global__ void __launch_bounds__(keep_threads)
    evict_keep_kernel(const float * __restrict__ score, int64_t score_stride, int rows_per_kv, int64_t n,
                      int64_t n_sink, int64_t n_recent, int64_t n_heavy, int32_t * __restrict__ keep,
                      int64_t keep_stride, uint32_t * __restrict__ keys_ws) {
    using scan_t = cub::BlockScan<int, keep_threads>;
    __shared__ typename scan_t::TempStorage scan_tmp;
    __shared__ uint32_t                     hist[256];
    __shared__ uint32_t                     s_prefix, s_rem;
    const int                               tid = threadIdx.x;
    const int                               g   = blockIdx.x;
    int32_t *                               out = keep + size_t(g) * keep_stride;
    const int64_t                           b = n_sink, e = n - n_recent, n_el = e - b;
    for (int64_t t = tid; t < n_sink; t += keep_threads) out[t] = int32_t(t);
    for (int64_t i = tid; i < n_recent; i += keep_threads) out[n_sink + n_heavy + i] = int32_t(e + i);
    if (n_heavy <= 0) return;
    if (n_heavy >= n_el) {
        for (int64_t i = tid; i < n_el; i += keep_threads) out[n_sink + i] = int32_t(b + i);
        return;
    }
    uint32_t * keys = keys_ws + size_t(g) * size_t(n);
    for (int64_t t = b + tid; t < e; t += keep_threads) {
        float x = 0.f;
        for (int r = 0; r < rows_per_kv; ++r) x += score[size_t(g * rows_per_kv + r) * score_stride + t];
        keys[t] = order_key(x);
    }
    __syncthreads();
    // radix select of the n_heavy-th largest key, 8 bits at a time from the top
    uint32_t prefix = 0, mask = 0, rem = uint32_t(n_heavy);
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += keep_threads) hist[i] = 0;
        __syncthreads();
        for (int64_t t = b + tid; t < e; t += keep_threads) {
            const uint32_t k = keys[t];
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            uint32_t cum = 0;
            for (int d = 255; d >= 0; --d) {
                if (cum + hist[d] >= rem) {
                    s_prefix = prefix | (uint32_t(d) << shift);
                    s_rem    = rem - cum;
                    break;
                }
                cum += hist[d];
            }
        }
        __syncthreads();
        prefix = s_prefix;
        rem    = s_rem;
        mask |= 255u << shift;
        __syncthreads();
    }
    // everything above the threshold key, and the first `rem` equal to it, in slot order
    const uint32_t T       = prefix;
    int64_t        eq_base = 0, out_base = 0;
    for (int64_t c0 = b; c0 < e; c0 += keep_threads) {
        const int64_t  t  = c0 + tid;
        const uint32_t k  = t < e ? keys[t] : 0u;
        const int      gt = t < e && k > T;
        const int      eq = t < e && k == T;
        int            eq_rank, eq_total, pos, take_total;
        scan_t(scan_tmp).ExclusiveSum(eq, eq_rank, eq_total);
        __syncthreads();
        const int take = gt || (eq && eq_base + eq_rank < int64_t(rem));
        scan_t(scan_tmp).ExclusiveSum(take, pos, take_total);
        __syncthreads();
        if (take) out[n_sink + out_base + pos] = int32_t(t);
        eq_base += eq_total;
        out_base += take_total;
    }
}

// 16-byte chunk `idx` of the round's rows: K/V row keep[g][r0 + i] <-> scratch row i (gather: to scratch).
template <bool GATHER>
__global__ void compact_copy_kernel(bf16_t * __restrict__ k_pool, bf16_t * __restrict__ v_pool,
                                    const int32_t * __restrict__ pages, int n_head_kv, int D,
                                    const int32_t * __restrict__ keep, int64_t keep_stride, int64_t r0, int64_t cnt,
                                    int64_t chunk, uint4 * __restrict__ scratch) {
    const int     CPR = D / 8;
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= cnt * CPR) return;
    const int     g    = blockIdx.y;
    const int     isv  = blockIdx.z;
    const int64_t i    = idx / CPR;
    const int     c    = int(idx % CPR);
    const int64_t slot = GATHER ? keep[size_t(g) * keep_stride + r0 + i] : r0 + i;
    bf16_t *      pool = isv ? v_pool : k_pool;
    uint4 *       row =
        reinterpret_cast<uint4 *>(pool + ((size_t(pages[slot >> 6]) * n_head_kv + g) * 64 + (slot & 63)) * D) + c;
    uint4 * sc = scratch + ((size_t(isv) * n_head_kv + g) * chunk + i) * CPR + c;
    if (GATHER)
        *sc = *row;
    else
        *row = *sc;
}

__global__ void __launch_bounds__(1024)
    compact_score_kernel(float * __restrict__ score, int64_t score_stride, int rows_per_kv,
                         const int32_t * __restrict__ keep, int64_t keep_stride, int64_t n_keep) {
    const int       row = blockIdx.x;
    const int32_t * kp  = keep + size_t(row / rows_per_kv) * keep_stride;
    float *         s   = score + size_t(row) * score_stride;
    for (int64_t c0 = 0; c0 < n_keep; c0 += 1024) {
        const int64_t i = c0 + threadIdx.x;
        const float   v = i < n_keep ? s[kp[i]] : 0.f;
        __syncthreads();
        if (i < n_keep) s[i] = v;
        __syncthreads();
    }
}

// ---- D2O merging ----

struct d2o_layout {
    size_t off_inv, off_ev, off_u, off_arg, off_part, off_k0, off_k1, off_v0, off_v1, off_tmp, tmp_bytes, total;
};

d2o_layout d2o_layout_for(int H, int64_t n, int64_t n_keep) {
    const int64_t n_ev = n - n_keep, nb = (n_ev + 63) / 64, N = int64_t(H) * n_ev;
    d2o_layout    L{};
    size_t        o = 0;
    L.off_inv       = o, o += align_up(size_t(H) * n * 4);
    L.off_ev        = o, o += align_up(size_t(N) * 4);
    L.off_u         = o, o += align_up(size_t(N) * 4);
    L.off_arg       = o, o += align_up(size_t(N) * 4);
    L.off_part      = o, o += align_up(size_t(H) * nb * 8);
    L.off_k0        = o, o += align_up(size_t(N) * 4);
    L.off_k1        = o, o += align_up(size_t(N) * 4);
    L.off_v0        = o, o += align_up(size_t(N) * 4);
    L.off_v1        = o, o += align_up(size_t(N) * 4);
    size_t tmp      = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, tmp, static_cast<const uint32_t *>(nullptr),
                                    static_cast<uint32_t *>(nullptr), static_cast<const int32_t *>(nullptr),
                                    static_cast<int32_t *>(nullptr), std::max<int64_t>(N, 1));
    L.off_tmp   = o;
    L.tmp_bytes = align_up(tmp);
    L.total     = o + L.tmp_bytes;
    return L;
}

__device__ __forceinline__ size_t row_off(const int32_t * pages, int H, int g, int64_t slot, int D) {
    return ((size_t(pages[slot >> 6]) * H + g) * 64 + size_t(slot & 63)) * D;
}

__global__ void inv_norm_kernel(const bf16_t * __restrict__ k_pool, const int32_t * __restrict__ pages, int H, int D,
                                int64_t n, float * __restrict__ inv) {
    const int64_t w    = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int     lane = threadIdx.x & 31;
    if (w >= int64_t(H) * n) return;
    const int      g = int(w / n);
    const int64_t  t = w % n;
    const bf16_t * r = k_pool + row_off(pages, H, g, t, D);
    float          s = 0.f;
    for (int d = lane; d < D; d += 32) {
        const float x = __uint_as_float(uint32_t(r[d]) << 16);
        s             = fmaf(x, x, s);
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) inv[w] = s > 0.f ? 1.f / sqrtf(s) : 0.f;
}

__global__ void evicted_kernel(const int32_t * __restrict__ keep, int64_t keep_stride, int64_t n_keep, int64_t n, int H,
                               int32_t * __restrict__ ev) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= int64_t(H) * n) return;
    const int       g  = int(idx / n);
    const int64_t   t  = idx % n;
    const int32_t * kp = keep + size_t(g) * keep_stride;
    int64_t         lo = 0, hi = n_keep; // first i with kp[i] >= t
    while (lo < hi) {
        const int64_t mid = (lo + hi) >> 1;
        if (kp[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n_keep && kp[lo] == t) return;
    ev[size_t(g) * (n - n_keep) + (t - lo)] = int32_t(t);
}

constexpr int sim_threads = 128;

template <int D>
__device__ __forceinline__ void gather_rows(uint32_t dst, const bf16_t * pool, const int32_t * pages, int H, int g,
                                            const int32_t * slots, int n_valid, int tid) {
    constexpr int CPR = D / 8, RPI = sim_threads / CPR;
    const int     c = tid % CPR;
#pragma unroll
    for (int i = 0; i < 64 / RPI; ++i) {
        const int     r    = tid / CPR + RPI * i;
        const int64_t slot = r < n_valid ? slots[r] : slots[0];
        cp_async_16(dst + tile_off<D>(r, c), pool + row_off(pages, H, g, slot, D) + c * 8, r < n_valid ? 16 : 0);
    }
}

template <int D>
__global__ void __launch_bounds__(sim_threads)
    sim_kernel(const bf16_t * __restrict__ k_pool, const int32_t * __restrict__ pages, int H,
               const int32_t * __restrict__ keep, int64_t keep_stride, int64_t n_keep, const int32_t * __restrict__ ev,
               int64_t n_ev, const float * __restrict__ inv_norm, int64_t n, float * __restrict__ u_out,
               int32_t * __restrict__ arg_out, double * __restrict__ partial) {
    constexpr int     tile_bytes = 64 * D * 2;
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ float                         s_u[64];
    const int                                tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int                                gr = lane >> 2, t = lane & 3;
    const int                                g     = blockIdx.y;
    const int64_t                            e0    = int64_t(blockIdx.x) * 64;
    const uint32_t                           s_e   = smem_u32(smem);
    float *                                  s_inv = reinterpret_cast<float *>(smem + 3 * tile_bytes); // [2][64]
    const int32_t *                          evg   = ev + size_t(g) * n_ev;
    const int32_t *                          kpg   = keep + size_t(g) * keep_stride;
    const float *                            invg  = inv_norm + size_t(g) * n;
    const int                                n_e   = int(min(int64_t(64), n_ev - e0));
    gather_rows<D>(s_e, k_pool, pages, H, g, evg + e0, n_e, tid);
    cp_async_commit();
    const int n_ct   = int((n_keep + 63) / 64);
    auto      load_c = [&](int ct, int buf) {
        const int nc = int(min(int64_t(64), n_keep - int64_t(ct) * 64));
        gather_rows<D>(s_e + (1 + buf) * tile_bytes, k_pool, pages, H, g, kpg + int64_t(ct) * 64, nc, tid);
        if (tid < 64) s_inv[buf * 64 + tid] = tid < nc ? invg[kpg[int64_t(ct) * 64 + tid]] : 0.f;
    };
    load_c(0, 0);
    cp_async_commit();
    float   best0 = -INFINITY, best1 = -INFINITY;
    int32_t bi0 = -1, bi1 = -1;
    mma_rows16x64_stream<D>(s_e, s_e + tile_bytes, n_ct, load_c, [&](int ct, int buf, const float(&s)[8][4]) {
        const float * iv = s_inv + buf * 64;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                const int     col = j * 8 + 2 * t + q;
                const int64_t c   = int64_t(ct) * 64 + col;
                if (c >= n_keep) continue;
                const float v0 = s[j][q] * iv[col];
                const float v1 = s[j][2 + q] * iv[col];
                if (v0 > best0) best0 = v0, bi0 = int32_t(c);
                if (v1 > best1) best1 = v1, bi1 = int32_t(c);
            }
        }
    });
    // the four lanes of a row hold interleaved columns: the larger value wins, ties to the lower index
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        const float   ob0 = __shfl_xor_sync(0xffffffffu, best0, off);
        const int32_t oi0 = __shfl_xor_sync(0xffffffffu, bi0, off);
        const float   ob1 = __shfl_xor_sync(0xffffffffu, best1, off);
        const int32_t oi1 = __shfl_xor_sync(0xffffffffu, bi1, off);
        if (ob0 > best0 || (ob0 == best0 && oi0 >= 0 && (bi0 < 0 || oi0 < bi0))) best0 = ob0, bi0 = oi0;
        if (ob1 > best1 || (ob1 == best1 && oi1 >= 0 && (bi1 < 0 || oi1 < bi1))) best1 = ob1, bi1 = oi1;
    }
    if (t == 0) {
        const int r0 = warp * 16 + gr, r1 = r0 + 8;
        if (r0 < n_e) {
            const float u                       = bi0 >= 0 ? best0 * invg[evg[e0 + r0]] : -INFINITY;
            u_out[size_t(g) * n_ev + e0 + r0]   = u;
            arg_out[size_t(g) * n_ev + e0 + r0] = bi0;
            s_u[r0]                             = u;
        }
        if (r1 < n_e) {
            const float u                       = bi1 >= 0 ? best1 * invg[evg[e0 + r1]] : -INFINITY;
            u_out[size_t(g) * n_ev + e0 + r1]   = u;
            arg_out[size_t(g) * n_ev + e0 + r1] = bi1;
            s_u[r1]                             = u;
        }
    }
    __syncthreads();
    if (tid == 0) {
        double sum = 0.0;
        for (int r = 0; r < n_e; ++r) sum += double(s_u[r]);
        partial[size_t(g) * gridDim.x + blockIdx.x] = sum;
    }
}

__global__ void __launch_bounds__(1024) tau_kernel(const double * __restrict__ partial, int64_t n_part, int64_t n_u,
                                                   double alpha, double beta, d2o_tau_state * tau, double * u_mean) {
    __shared__ double red[1024];
    double            s = 0.0;
    for (int64_t i = threadIdx.x; i < n_part; i += 1024) s += partial[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = 512; w >= 1; w >>= 1) {
        if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double mean = red[0] / double(n_u);
        tau->tau          = tau->set ? alpha * tau->tau + beta * mean : mean;
        tau->set          = 1;
        if (u_mean) *u_mean = mean;
    }
}

__global__ void merge_keys_kernel(const float * __restrict__ u, const int32_t * __restrict__ arg, int64_t n_ev, int H,
                                  int64_t n_keep, const d2o_tau_state * __restrict__ tau, uint32_t * __restrict__ keys,
                                  int32_t * __restrict__ vals) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(H) * n_ev) return;
    const float tf = float(tau->tau);
    const int   g  = int(i / n_ev);
    keys[i]        = u[i] >= tf && arg[i] >= 0 ? uint32_t(g * n_keep + arg[i]) : uint32_t(int64_t(H) * n_keep);
    vals[i]        = int32_t(i);
}

__device__ __forceinline__ int64_t lower_bound_u32(const uint32_t * a, int64_t n, uint32_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = (lo + hi) >> 1;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

template <int D>
__global__ void merge_rows_kernel(bf16_t * __restrict__ k_pool, bf16_t * __restrict__ v_pool,
                                  const int32_t * __restrict__ pages, int H, const int32_t * __restrict__ keep,
                                  int64_t keep_stride, int64_t            n_keep, const int32_t * __restrict__ ev,
                                  const float * __restrict__ u, int64_t   n_ev, const uint32_t * __restrict__ keys,
                                  const int32_t * __restrict__ vals, bool softmax, int64_t * merged) {
    constexpr int EPL  = D / 32;
    const int64_t w    = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int     lane = threadIdx.x & 31;
    const int64_t N    = int64_t(H) * n_ev;
    if (w == 0 && lane == 0 && merged) *merged = lower_bound_u32(keys, N, uint32_t(int64_t(H) * n_keep));
    if (w >= int64_t(H) * n_keep) return;
    const int     g  = int(w / n_keep);
    const int64_t lo = lower_bound_u32(keys, N, uint32_t(w));
    const int64_t hi = lower_bound_u32(keys, N, uint32_t(w + 1));
    if (lo == hi) return;
    float  ak[EPL] = {}, av[EPL] = {};
    double wsum = 0.0;
    for (int64_t j = lo; j < hi; ++j) {
        const int32_t idx = vals[j];
        const float   wt  = softmax ? expf(u[idx]) : u[idx];
        const size_t  off = row_off(pages, H, g, ev[idx], D) + lane * EPL;
#pragma unroll
        for (int i = 0; i < EPL; ++i) {
            ak[i] = fmaf(wt, __uint_as_float(uint32_t(k_pool[off + i]) << 16), ak[i]);
            av[i] = fmaf(wt, __uint_as_float(uint32_t(v_pool[off + i]) << 16), av[i]);
        }
        wsum += softmax ? double(wt) : 1.0;
    }
    const double self = softmax ? 2.718281828459045 : 1.0;
    const float  inv  = float(1.0 / (self + wsum));
    const float  sf   = float(self);
    const size_t off  = row_off(pages, H, g, keep[size_t(g) * keep_stride + (w % n_keep)], D) + lane * EPL;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
        const float kc  = __uint_as_float(uint32_t(k_pool[off + i]) << 16);
        const float vc  = __uint_as_float(uint32_t(v_pool[off + i]) << 16);
        k_pool[off + i] = __bfloat16_as_ushort(__float2bfloat16_rn((sf * kc + ak[i]) * inv));
        v_pool[off + i] = __bfloat16_as_ushort(__float2bfloat16_rn((sf * vc + av[i]) * inv));
    }
}

template <int D> void launch_sim(const d2o_merge_args & a, const d2o_layout & L, uint8_t * ws, cudaStream_t st) {
    const int     H    = a.kv.n_head_kv;
    const int64_t n_ev = a.n - a.n_keep;
    constexpr int smem = 3 * 64 * D * 2 + 2 * 64 * 4;
    auto          kern = sim_kernel<D>;
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(unsigned((n_ev + 63) / 64), unsigned(H)), sim_threads, smem, st>>>(
        a.kv.k_pool, a.kv.pages, H, a.keep, a.keep_stride, a.n_keep, reinterpret_cast<int32_t *>(ws + L.off_ev), n_ev,
        reinterpret_cast<float *>(ws + L.off_inv), a.n, reinterpret_cast<float *>(ws + L.off_u),
        reinterpret_cast<int32_t *>(ws + L.off_arg), reinterpret_cast<double *>(ws + L.off_part));
    LC_CUDA_CHECK_LAUNCH();
}

template <int D> void launch_merge(const d2o_merge_args & a, const d2o_layout & L, uint8_t * ws, cudaStream_t st) {
    const int     H       = a.kv.n_head_kv;
    const int64_t n_ev    = a.n - a.n_keep;
    const int64_t n_warps = int64_t(H) * a.n_keep;
    merge_rows_kernel<D><<<unsigned((n_warps + 7) / 8), 256, 0, st>>>(
        a.kv.k_pool, a.kv.v_pool, a.kv.pages, H, a.keep, a.keep_stride, a.n_keep,
        reinterpret_cast<int32_t *>(ws + L.off_ev), reinterpret_cast<float *>(ws + L.off_u), n_ev,
        reinterpret_cast<uint32_t *>(ws + L.off_k1), reinterpret_cast<int32_t *>(ws + L.off_v1),
        a.rule == d2o_rule::SOFTMAX, a.merged);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace

int64_t evict_keep_count(int64_t n, int64_t n_sink, int64_t n_recent, int64_t n_heavy) {
    n        = std::max<int64_t>(n, 0);
    n_sink   = std::clamp<int64_t>(n_sink, 0, n);
    n_recent = std::clamp<int64_t>(n_recent, 0, n - n_sink);
    n_heavy  = std::clamp<int64_t>(n_heavy, 0, n - n_sink - n_recent);
    return n_sink + n_recent + n_heavy;
}

size_t evict_keep_workspace_bytes(int n_head_kv, int64_t n) {
    return size_t(std::max(n_head_kv, 1)) * size_t(std::max<int64_t>(n, 1)) * sizeof(uint32_t);
}

status evict_keep(const evict_keep_args & a, cudaStream_t stream) {
    const int64_t n = a.n;
    if (n < 0 || n >= (int64_t(1) << 31) || a.n_head_kv <= 0 || a.rows_per_kv <= 0)
        return error(status_code::INVALID_ARGUMENT, "cuda evict_keep: n %lld, n_head_kv %d", (long long)n, a.n_head_kv);
    const int64_t n_sink   = std::clamp<int64_t>(a.n_sink, 0, n);
    const int64_t n_recent = std::clamp<int64_t>(a.n_recent, 0, n - n_sink);
    const int64_t n_heavy  = std::clamp<int64_t>(a.n_heavy, 0, n - n_sink - n_recent);
    if (a.keep_stride < n_sink + n_recent + n_heavy)
        return error(status_code::INVALID_ARGUMENT, "cuda evict_keep: keep_stride %lld < %lld",
                     (long long)a.keep_stride, (long long)(n_sink + n_recent + n_heavy));
    if (a.workspace_bytes < evict_keep_workspace_bytes(a.n_head_kv, n) || (a.score_stride < n && n_heavy > 0))
        return error(status_code::INVALID_ARGUMENT, "cuda evict_keep: workspace or score_stride too small");
    if (n == 0) return status::ok();
    evict_keep_kernel<<<unsigned(a.n_head_kv), keep_threads, 0, stream>>>(
        a.score, a.score_stride, a.rows_per_kv, n, n_sink, n_recent, n_heavy, a.keep, a.keep_stride,
        static_cast<uint32_t *>(a.workspace));
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

size_t kv_compact_workspace_bytes(int n_head_kv, int head_dim, int64_t chunk) {
    return size_t(2) * size_t(n_head_kv) * size_t(std::max<int64_t>(chunk, 1)) * size_t(head_dim) * sizeof(bf16_t);
}

status kv_compact(const kv_compact_args & a, cudaStream_t stream) {
    const int H = a.kv.n_head_kv, D = a.kv.head_dim;
    if (H <= 0 || D % 8 != 0 || a.chunk <= 0 || a.n_keep < 0 || a.keep_stride < a.n_keep ||
        a.workspace_bytes < kv_compact_workspace_bytes(H, D, a.chunk))
        return error(status_code::INVALID_ARGUMENT, "cuda kv_compact: bad shape or workspace");
    auto * scratch = static_cast<uint4 *>(a.workspace);
    for (int64_t r0 = 0; r0 < a.n_keep; r0 += a.chunk) {
        const int64_t cnt = std::min(a.chunk, a.n_keep - r0);
        const dim3    grid(unsigned((cnt * (D / 8) + 255) / 256), unsigned(H), 2);
        compact_copy_kernel<true><<<grid, 256, 0, stream>>>(a.kv.k_pool, a.kv.v_pool, a.kv.pages, H, D, a.keep,
                                                            a.keep_stride, r0, cnt, a.chunk, scratch);
        LC_CUDA_CHECK_LAUNCH();
        compact_copy_kernel<false><<<grid, 256, 0, stream>>>(a.kv.k_pool, a.kv.v_pool, a.kv.pages, H, D, a.keep,
                                                             a.keep_stride, r0, cnt, a.chunk, scratch);
        LC_CUDA_CHECK_LAUNCH();
    }
    if (a.score != nullptr && a.n_keep > 0) {
        compact_score_kernel<<<unsigned(H * a.rows_per_kv), 1024, 0, stream>>>(a.score, a.score_stride, a.rows_per_kv,
                                                                               a.keep, a.keep_stride, a.n_keep);
        LC_CUDA_CHECK_LAUNCH();
    }
    return status::ok();
}

size_t d2o_merge_workspace_bytes(int n_head_kv, int64_t n, int64_t n_keep) {
    return d2o_layout_for(n_head_kv, n, n_keep).total;
}

d2o_workspace_view d2o_workspace_views(void * workspace, int n_head_kv, int64_t n, int64_t n_keep) {
    const d2o_layout   L  = d2o_layout_for(n_head_kv, n, n_keep);
    auto *             ws = static_cast<uint8_t *>(workspace);
    d2o_workspace_view v;
    v.evicted = reinterpret_cast<const int32_t *>(ws + L.off_ev);
    v.u       = reinterpret_cast<const float *>(ws + L.off_u);
    v.arg     = reinterpret_cast<const int32_t *>(ws + L.off_arg);
    return v;
}

status d2o_merge(const d2o_merge_args & a, cudaStream_t stream) {
    const int H = a.kv.n_head_kv, D = a.kv.head_dim;
    if (D != 64 && D != 128) return error(status_code::UNSUPPORTED, "cuda d2o_merge: head_dim %d (64, 128)", D);
    if (H <= 0 || a.n < 0 || a.n >= (int64_t(1) << 31) || a.n_keep < 0 || a.n_keep > a.n || a.keep_stride < a.n_keep ||
        a.tau == nullptr || int64_t(H) * a.n >= (int64_t(1) << 31))
        return error(status_code::INVALID_ARGUMENT, "cuda d2o_merge: bad arguments");
    if (a.n_keep == 0 || a.n_keep == a.n) {
        if (a.merged) LC_CUDA_CHECK(cudaMemsetAsync(a.merged, 0, sizeof(int64_t), stream));
        return status::ok();
    }
    const d2o_layout L = d2o_layout_for(H, a.n, a.n_keep);
    if (a.workspace_bytes < L.total)
        return error(status_code::INVALID_ARGUMENT, "cuda d2o_merge: workspace %zu < %zu bytes", a.workspace_bytes,
                     L.total);
    auto *        ws   = static_cast<uint8_t *>(a.workspace);
    const int64_t n_ev = a.n - a.n_keep, N = int64_t(H) * n_ev;
    const int64_t nb = (n_ev + 63) / 64;
    {
        const int64_t threads = int64_t(H) * a.n * 32;
        inv_norm_kernel<<<unsigned((threads + 255) / 256), 256, 0, stream>>>(a.kv.k_pool, a.kv.pages, H, D, a.n,
                                                                             reinterpret_cast<float *>(ws + L.off_inv));
        LC_CUDA_CHECK_LAUNCH();
        evicted_kernel<<<unsigned((int64_t(H) * a.n + 255) / 256), 256, 0, stream>>>(
            a.keep, a.keep_stride, a.n_keep, a.n, H, reinterpret_cast<int32_t *>(ws + L.off_ev));
        LC_CUDA_CHECK_LAUNCH();
    }
    if (D == 64)
        launch_sim<64>(a, L, ws, stream);
    else
        launch_sim<128>(a, L, ws, stream);
    tau_kernel<<<1, 1024, 0, stream>>>(reinterpret_cast<double *>(ws + L.off_part), int64_t(H) * nb, N, a.alpha, a.beta,
                                       a.tau, a.u_mean);
    LC_CUDA_CHECK_LAUNCH();
    merge_keys_kernel<<<unsigned((N + 255) / 256), 256, 0, stream>>>(
        reinterpret_cast<float *>(ws + L.off_u), reinterpret_cast<int32_t *>(ws + L.off_arg), n_ev, H, a.n_keep, a.tau,
        reinterpret_cast<uint32_t *>(ws + L.off_k0), reinterpret_cast<int32_t *>(ws + L.off_v0));
    LC_CUDA_CHECK_LAUNCH();
    int end_bit = 1;
    while (end_bit < 32 && (uint64_t(1) << end_bit) <= uint64_t(H) * uint64_t(a.n_keep)) ++end_bit;
    size_t tmp = L.tmp_bytes;
    LC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        ws + L.off_tmp, tmp, reinterpret_cast<const uint32_t *>(ws + L.off_k0),
        reinterpret_cast<uint32_t *>(ws + L.off_k1), reinterpret_cast<const int32_t *>(ws + L.off_v0),
        reinterpret_cast<int32_t *>(ws + L.off_v1), N, 0, end_bit, stream));
    if (D == 64)
        launch_merge<64>(a, L, ws, stream);
    else
        launch_merge<128>(a, L, ws, stream);
    return status::ok();
}

} // namespace lc::cuda
