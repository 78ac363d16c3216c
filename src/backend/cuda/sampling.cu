// Device sampler (sampling.cuh): the row sorted in descending order, stably (ties to the lower id) -- all of it by a
// CUB device radix sort, or, for a small top-k, only its top k (each 4096-token tile sorted in shared memory, its
// first k kept, the tiles' survivors sorted by one block) -- then one block of 512 threads that replays the CPU
// sampler's steps with double sums: chunked block scans find the top-p cut and the drawn token, walking the
// candidates in the CPU's order so that the same uniform number picks the same token.
#include "backend/cuda/sampling.cuh"

#include <climits>
#include <cmath>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "backend/cuda/cuda-common.cuh"

namespace lc::cuda {

namespace {

constexpr int k_threads = 512;
constexpr int k_ipt     = 8; // elements per thread per chunk
constexpr int k_chunk   = k_threads * k_ipt;
// top-k path: tiles of k_tile tokens, survivors merged by one block (at most k_merge_cap)
constexpr int k_tile_threads = 512, k_tile_ipt = 8, k_tile = k_tile_threads * k_tile_ipt;
constexpr int k_merge_threads = 1024, k_merge_ipt = 8, k_merge_cap = k_merge_threads * k_merge_ipt;

size_t align256(size_t n) {
    return (n + 255) & ~size_t(255);
}

size_t cub_sort_bytes(int n) {
    size_t b = 0;
    LC_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, b, static_cast<const float *>(nullptr),
                                                            static_cast<float *>(nullptr),
                                                            static_cast<const int32_t *>(nullptr),
                                                            static_cast<int32_t *>(nullptr), n, 0, 32));
    return b;
}

// Workspace: keys by id (cleaned), keys sorted, ids 0..n-1, ids sorted, the top-k path's tile survivors, CUB's
// storage.
struct ws_layout {
    float *   key_id = nullptr, *key_s = nullptr, *surv_key = nullptr;
    int32_t * iota = nullptr, *id_s = nullptr, *surv_id = nullptr;
    void *    cub       = nullptr;
    size_t    cub_bytes = 0, total = 0;
};

ws_layout layout(void * base, int n) {
    ws_layout     l;
    auto *        p = static_cast<uint8_t *>(base);
    const size_t  v = align256(size_t(n) * 4);
    l.key_id        = reinterpret_cast<float *>(p);
    l.key_s         = reinterpret_cast<float *>(p + v);
    l.iota          = reinterpret_cast<int32_t *>(p + 2 * v);
    l.id_s          = reinterpret_cast<int32_t *>(p + 3 * v);
    l.surv_key      = reinterpret_cast<float *>(p + 4 * v);
    l.surv_id       = reinterpret_cast<int32_t *>(p + 4 * v + size_t(k_merge_cap) * 4);
    l.cub           = p + 4 * v + size_t(k_merge_cap) * 8;
    l.cub_bytes     = cub_sort_bytes(n);
    l.total         = 4 * v + size_t(k_merge_cap) * 8 + align256(l.cub_bytes);
    return l;
}

// NaN -> -inf (the CPU's clean()), -0 -> +0 (the radix order puts -0 below +0; the CPU compares them equal).
__device__ __forceinline__ float clean_key(float v) {
    if (v != v) v = -INFINITY;
    return v == 0.0f ? 0.0f : v;
}

__global__ void prep_kernel(const float * __restrict__ logits, int n, float * __restrict__ key,
                            int32_t * __restrict__ iota) {
    const int i = int(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    key[i]  = clean_key(logits[i]);
    iota[i] = i;
}

// Top-k path. Stage 1: tile b (k_tile tokens) sorted descending in shared memory (CUB's block radix sort is stable:
// equal keys keep the id order), its first min(k, tile) written to slots [b k, b k + k). Stage 2: one block sorts
// the tiles' survivors, concatenated in tile order (so equal keys still come in id order), and writes the first k.

__global__ void __launch_bounds__(k_tile_threads)
    topk_tile_kernel(const float * __restrict__ logits, int n, const sample_params * __restrict__ pp,
                     float * __restrict__ key_out, int32_t * __restrict__ id_out) {
    using sort_t = cub::BlockRadixSort<float, k_tile_threads, k_tile_ipt, int32_t>;
    __shared__ typename sort_t::TempStorage tmp;
    const int                               base = int(blockIdx.x) * k_tile;
    const int                               k    = pp->top_k; // read at run time: a graph serves every top_k
    float                                   key[k_tile_ipt];
    int32_t                                 id[k_tile_ipt];
#pragma unroll
    for (int j = 0; j < k_tile_ipt; ++j) { // blocked: thread t holds tile items t*ipt .. t*ipt+ipt-1
        const int i = base + int(threadIdx.x) * k_tile_ipt + j;
        key[j]      = i < n ? clean_key(logits[i]) : -INFINITY;
        id[j]       = i < n ? i : INT_MAX; // padding sorts after every real -inf (it comes later)
    }
    sort_t(tmp).SortDescending(key, id);
#pragma unroll
    for (int j = 0; j < k_tile_ipt; ++j) {
        const int r = int(threadIdx.x) * k_tile_ipt + j; // rank in the tile
        if (r < k) {
            key_out[size_t(blockIdx.x) * k + r] = key[j];
            id_out[size_t(blockIdx.x) * k + r]  = id[j];
        }
    }
}

__global__ void __launch_bounds__(k_merge_threads)
    topk_merge_kernel(const float * __restrict__ key_in, const int32_t * __restrict__ id_in, int n_tiles,
                      const sample_params * __restrict__ pp, float * __restrict__ key_s, int32_t * __restrict__ id_s) {
    using sort_t = cub::BlockRadixSort<float, k_merge_threads, k_merge_ipt, int32_t>;
    __shared__ typename sort_t::TempStorage tmp;
    const int                               k = pp->top_k, n_in = n_tiles * k;
    float                                   key[k_merge_ipt];
    int32_t                                 id[k_merge_ipt];
#pragma unroll
    for (int j = 0; j < k_merge_ipt; ++j) {
        const int i = int(threadIdx.x) * k_merge_ipt + j;
        key[j]      = i < n_in ? key_in[i] : -INFINITY;
        id[j]       = i < n_in ? id_in[i] : INT_MAX;
    }
    sort_t(tmp).SortDescending(key, id);
#pragma unroll
    for (int j = 0; j < k_merge_ipt; ++j) {
        const int r = int(threadIdx.x) * k_merge_ipt + j;
        if (r < k) {
            key_s[r] = key[j];
            id_s[r]  = id[j];
        }
    }
}

using scan_t = cub::BlockScan<double, k_threads>;

struct smem_t {
    typename scan_t::TempStorage scan;
    int                          hit;
    int                          last;
};

struct never_hit {
    __device__ bool operator()(double, double) const { return false; }
};

// Inclusive running sums of w(0..n) from `carry`, in chunks of k_chunk. Returns the first i where hit(cum_i, w_i)
// holds (-1 if none; the walk stops at the chunk holding it); *total: carry plus the sum of the chunks walked;
// *last: the largest i walked with w_i > 0 (-1 if none). All threads call it and get the same results.
template <class W, class H>
__device__ int scan_first(int n, double carry, const W & w, const H & hit, double * total, int * last, smem_t & sm) {
    const int tid = int(threadIdx.x);
    if (tid == 0) {
        sm.hit  = INT_MAX;
        sm.last = -1;
    }
    __syncthreads();
    for (int base = 0; base < n; base += k_chunk) {
        const int i0 = base + tid * k_ipt;
        double    v[k_ipt];
        double    run = 0.0;
#pragma unroll
        for (int j = 0; j < k_ipt; ++j) {
            v[j] = i0 + j < n ? w(i0 + j) : 0.0;
            run += v[j];
        }
        double excl = 0.0, agg = 0.0;
        scan_t(sm.scan).ExclusiveSum(run, excl, agg);
        double cum    = carry + excl;
        int    my_hit = INT_MAX, my_last = -1;
#pragma unroll
        for (int j = 0; j < k_ipt; ++j) {
            cum += v[j];
            if (v[j] > 0.0) my_last = i0 + j;
            if (my_hit == INT_MAX && i0 + j < n && hit(cum, v[j])) my_hit = i0 + j;
        }
        if (my_hit != INT_MAX) atomicMin(&sm.hit, my_hit);
        if (my_last >= 0) atomicMax(&sm.last, my_last);
        carry += agg;
        if (__syncthreads_or(my_hit != INT_MAX)) break; // also the barrier before sm.scan is reused
    }
    __syncthreads();
    const int r = sm.hit == INT_MAX ? -1 : sm.hit;
    *last       = sm.last;
    *total      = carry;
    __syncthreads(); // everyone has read sm before the next call resets it
    return r;
}

// The CPU's top-p histogram bucket of d = max - logit (width 1/8 nat, 256 buckets, the last open).
__device__ __forceinline__ int bucket_of(double d) {
    return d < 32.0 ? int(d * 8.0) : 255;
}

__global__ void __launch_bounds__(k_threads)
    sample_kernel(const float * __restrict__ key_id, const float * __restrict__ key_s, const int32_t * __restrict__ id_s,
                  int V, const sample_params * __restrict__ pp, int32_t * __restrict__ out) {
    __shared__ smem_t   sm;
    const sample_params P  = *pp;
    const float         mf = key_s[0];
    if (!isfinite(mf)) { // every logit -inf/NaN, or a +inf: the first of the best (lowest id)
        if (threadIdx.x == 0) *out = id_s[0];
        return;
    }
    const double m     = double(mf);
    const bool   use_k = P.top_k > 0 && P.top_k < V;
    const bool   use_p = P.top_p < 1.0f;
    const int    n     = use_k ? P.top_k : V;
    double       tot = 0.0, dummy = 0.0;
    int          last = -1;

    // top-p: the shortest sorted prefix of the first n whose exp(l - m) sum reaches top_p of their total.
    int J = n - 1;
    if (use_p) {
        const auto e = [&](int i) { return exp(double(key_s[i]) - m); };
        scan_first(n, 0.0, e, never_hit{}, &tot, &last, sm);
        const double target = double(P.top_p) * tot;
        const int    j = scan_first(n, 0.0, e, [&](double cum, double) { return cum >= target; }, &dummy, &last, sm);
        if (j >= 0) J = j;
    }
    int K = J + 1; // candidates: sorted ranks [0, K)
    // min-p: l - m >= log(min_p); the top token always stays. The sorted order makes it a prefix.
    const bool use_min_p = P.min_p > 0.0f;
    if (use_min_p) {
        int lo = 1, hi = K;
        while (lo < hi) {
            const int mid = (lo + hi) / 2;
            if (double(key_s[mid]) - m < P.log_min_p)
                hi = mid;
            else
                lo = mid + 1;
        }
        K = lo;
    }

    // The CPU's walk order: with top-k the sorted candidates; without, the candidates in id order (top-p: those of
    // the buckets above the cut bucket), then the cut bucket's candidates sorted.
    int s0 = K, b_cut = 256; // sorted part [s0, K); the id part takes buckets < b_cut
    if (use_k) {
        s0 = 0;
    } else if (use_p) {
        b_cut  = bucket_of(m - double(key_s[J]));
        int lo = 0, hi = J;
        while (lo < hi) { // first rank in bucket b_cut
            const int mid = (lo + hi) / 2;
            if (bucket_of(m - double(key_s[mid])) >= b_cut)
                hi = mid;
            else
                lo = mid + 1;
        }
        s0 = lo;
    }
    const double inv_t   = 1.0 / double(P.temp);
    const bool   id_part = !use_k;
    const auto   w_id    = [&](int i) {
        const double l = double(key_id[i]);
        if (use_min_p && l - m < P.log_min_p) return 0.0;
        if (bucket_of(m - l) >= b_cut) return 0.0;
        return exp((l - m) * inv_t);
    };
    const auto w_s = [&](int r) { return exp((double(key_s[s0 + r]) - m) * inv_t); };
    double     s_id = 0.0, s_all = 0.0;
    int        last_id = -1, last_s = -1;
    if (id_part) scan_first(V, 0.0, w_id, never_hit{}, &s_id, &last_id, sm);
    s_all = s_id;
    if (K > s0) scan_first(K - s0, s_id, w_s, never_hit{}, &s_all, &last_s, sm);
    const double us   = P.u * s_all;
    const auto   draw = [&](double cum, double w) { return w > 0.0 && us < cum; };
    int          pick = -1;
    if (id_part && us < s_id) pick = scan_first(V, 0.0, w_id, draw, &dummy, &last, sm);
    if (pick < 0 && K > s0) {
        const int r = scan_first(K - s0, s_id, w_s, draw, &dummy, &last, sm);
        if (r >= 0) pick = id_s[s0 + r];
    }
    if (pick < 0) pick = last_s >= 0 ? id_s[s0 + last_s] : (last_id >= 0 ? last_id : id_s[0]); // u within rounding
    if (threadIdx.x == 0) *out = pick;
}

} // namespace

sample_params make_sample_params(float temp, int32_t top_k, float top_p, float min_p, double u) {
    sample_params p;
    p.u         = u;
    p.temp      = temp;
    p.top_k     = top_k;
    p.top_p     = top_p;
    p.min_p     = min_p;
    p.log_min_p = min_p > 0.0f ? std::log(double(min_p)) : 0.0;
    return p;
}

size_t sample_workspace_bytes(int n_vocab) {
    return layout(nullptr, n_vocab).total;
}

int sample_row_path(int n_vocab, int32_t top_k) {
    const int64_t n_tiles = (int64_t(n_vocab) + k_tile - 1) / k_tile;
    return top_k > 0 && top_k < n_vocab && n_tiles * top_k <= k_merge_cap ? 1 : 0;
}

void sample_row(const float * logits, int n_vocab, const sample_params * params, int32_t top_k, void * workspace,
                size_t workspace_bytes, int32_t * out, cudaStream_t stream) {
    LC_ASSERT(n_vocab > 0, "cuda sampling: n_vocab %d", n_vocab);
    const ws_layout l = layout(workspace, n_vocab);
    LC_ASSERT(workspace && workspace_bytes >= l.total, "cuda sampling: workspace of %zu bytes, need %zu",
              workspace_bytes, l.total);
    if (sample_row_path(n_vocab, top_k) == 1) {
        // Tile survivors (n_tiles top_k <= k_merge_cap), then the top k in key_s / id_s. top_k <= k_tile: one tile
        // means top_k < n_vocab <= k_tile, several mean top_k <= k_merge_cap / 2 = k_tile. The last tile's padding
        // (-inf, id INT_MAX) comes after every real entry of an equal key, and top_k < n_vocab keeps it out.
        const int n_tiles = (n_vocab + k_tile - 1) / k_tile;
        topk_tile_kernel<<<unsigned(n_tiles), k_tile_threads, 0, stream>>>(logits, n_vocab, params, l.surv_key,
                                                                           l.surv_id);
        LC_CUDA_CHECK_LAUNCH();
        topk_merge_kernel<<<1, k_merge_threads, 0, stream>>>(l.surv_key, l.surv_id, n_tiles, params, l.key_s, l.id_s);
        LC_CUDA_CHECK_LAUNCH();
    } else {
        prep_kernel<<<unsigned((n_vocab + 255) / 256), 256, 0, stream>>>(logits, n_vocab, l.key_id, l.iota);
        LC_CUDA_CHECK_LAUNCH();
        size_t cub_bytes = l.cub_bytes;
        LC_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(l.cub, cub_bytes, l.key_id, l.key_s, l.iota, l.id_s,
                                                                n_vocab, 0, 32, stream));
    }
    sample_kernel<<<1, k_threads, 0, stream>>>(l.key_id, l.key_s, l.id_s, n_vocab, params, out);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace lc::cuda
