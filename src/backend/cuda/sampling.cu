// Device sampler (sampling.cuh): the row sorted in descending order, stably (ties to the lower id) -- all of it by a
// CUB device radix sort, or, for a small top-k, only its top k (each 4096-token tile sorted in shared memory, its
// first k kept, the tiles' survivors sorted by one block) -- then the CPU sampler's steps with double sums: grid
// kernels sum 4096-item chunks (top-p's mass in sorted order, the draw's weights in the CPU's walk order), and one
// block locates the top-p cut and then the draw by those sums and finds each with one chunk's block scan, walking
// the candidates in the CPU's order so that the same uniform number picks the same token.
#include "backend/cuda/sampling.cuh"

#include <climits>
#include <cmath>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
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
    double *  esum = nullptr, *wsum_id = nullptr, *wsum_s = nullptr; // per k_chunk chunk
    int *     last_id = nullptr, *last_s = nullptr;
    void *    plan = nullptr;
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
    size_t       o  = 4 * v + size_t(k_merge_cap) * 8;
    const size_t nc = size_t((n + k_chunk - 1) / k_chunk);
    l.esum          = reinterpret_cast<double *>(p + o);
    l.wsum_id       = l.esum + nc;
    l.wsum_s        = l.wsum_id + nc;
    o += align256(3 * nc * 8);
    l.last_id = reinterpret_cast<int *>(p + o);
    l.last_s  = l.last_id + nc;
    o += align256(2 * nc * 4);
    l.plan = p + o;
    o += 256;
    l.cub       = p + o;
    l.cub_bytes = cub_sort_bytes(n);
    l.total     = o + align256(l.cub_bytes);
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

// What the cut kernel decides for the draw: the max, the candidates (sorted ranks [0, K)), the walk's sorted part
// [s0, K) and the id part's bucket bound; token >= 0 when the answer is already known (non-finite max).
struct plan_t {
    double  m;
    int     K, s0, b_cut;
    int32_t token;
};

struct row_setting {
    sample_params P;
    bool          use_k, use_p, use_min_p;
    int           n; // sorted ranks top-k and top-p look at
    __device__ row_setting(const sample_params * pp, int V) : P(*pp) {
        use_k     = P.top_k > 0 && P.top_k < V;
        use_p     = P.top_p < 1.0f;
        use_min_p = P.min_p > 0.0f;
        n         = use_k ? P.top_k : V;
    }
};

using reduce_t = cub::BlockReduce<double, k_threads>;
using reduce_i = cub::BlockReduce<int, k_threads>;

// Sum (and largest index with a positive term) of w(i) over chunk blockIdx.x (k_chunk items) of [0, n), written to
// sum[c] and last[c] (last may be null). Deterministic: a fixed reduction tree per chunk.
template <class W> __device__ void chunk_sum(int c, int n, const W & w, double * sum, int * last) {
    __shared__ union {
        typename reduce_t::TempStorage d;
        typename reduce_i::TempStorage i;
    } tmp;
    const int base = c * k_chunk;
    double    s    = 0.0;
    int       lp   = -1;
#pragma unroll
    for (int j = 0; j < k_ipt; ++j) {
        const int i = base + int(threadIdx.x) * k_ipt + j;
        if (i < n) {
            const double v = w(i);
            s += v;
            if (v > 0.0) lp = i;
        }
    }
    s = reduce_t(tmp.d).Sum(s);
    __syncthreads();
    lp = reduce_i(tmp.i).Reduce(lp, [](int a, int b) { return a > b ? a : b; });
    if (threadIdx.x == 0) {
        sum[c] = s;
        if (last) last[c] = lp;
    }
}

// Chunk sums of top-p's mass exp(l - m) over sorted ranks [0, n).
__global__ void __launch_bounds__(k_threads)
    esum_kernel(const float * __restrict__ key_s, int V, const sample_params * __restrict__ pp, double * esum) {
    const row_setting S(pp, V);
    const float       mf = key_s[0];
    if (!S.use_p || !isfinite(mf) || int(blockIdx.x) * k_chunk >= S.n) return;
    const double m = double(mf);
    chunk_sum(int(blockIdx.x), S.n, [&](int i) { return exp(double(key_s[i]) - m); }, esum, nullptr);
}

// Sequential prefix over chunk sums: the first chunk c whose running total (from `carry`) passes hit(total); *pre:
// the total before it. Returns n_chunks when none does.
template <class H> __device__ int find_chunk(const double * sums, int n_chunks, double carry, const H & hit, double * pre) {
    int c = 0;
    for (; c < n_chunks; ++c) {
        if (hit(carry + sums[c])) break;
        carry += sums[c];
    }
    *pre = carry;
    return c;
}

// One block: the top-p cut (the chunk sums locate it, one chunk scan finds it), min-p, the walk's parts.
__global__ void __launch_bounds__(k_threads)
    cut_kernel(const float * __restrict__ key_s, const int32_t * __restrict__ id_s, int V,
               const sample_params * __restrict__ pp, const double * __restrict__ esum, plan_t * plan) {
    __shared__ smem_t sm;
    const row_setting S(pp, V);
    const float       mf = key_s[0];
    if (!isfinite(mf)) { // every logit -inf/NaN, or a +inf: the first of the best (lowest id)
        if (threadIdx.x == 0) *plan = plan_t{0.0, 0, 0, 0, id_s[0]};
        return;
    }
    const double m = double(mf);
    // top-p: the shortest sorted prefix of the first n whose exp(l - m) sum reaches top_p of their total.
    int J = S.n - 1;
    if (S.use_p) {
        const int n_chunks = (S.n + k_chunk - 1) / k_chunk;
        double    z        = 0.0, pre = 0.0, dummy = 0.0;
        for (int c = 0; c < n_chunks; ++c) z += esum[c];
        const double target = double(S.P.top_p) * z;
        const int    c = find_chunk(esum, n_chunks, 0.0, [&](double t) { return t >= target; }, &pre);
        if (c < n_chunks) {
            const int b0   = c * k_chunk;
            int       last = -1;
            const int j    = scan_first(
                S.n - b0, pre, [&](int i) { return exp(double(key_s[b0 + i]) - m); },
                [&](double cum, double) { return cum >= target; }, &dummy, &last, sm);
            if (j >= 0) J = b0 + j;
        }
    }
    int K = J + 1; // candidates: sorted ranks [0, K)
    // min-p: l - m >= log(min_p); the top token always stays. The sorted order makes it a prefix.
    if (S.use_min_p) {
        int lo = 1, hi = K;
        while (lo < hi) {
            const int mid = (lo + hi) / 2;
            if (double(key_s[mid]) - m < S.P.log_min_p)
                hi = mid;
            else
                lo = mid + 1;
        }
        K = lo;
    }
    // The CPU's walk order: with top-k the sorted candidates; without, the candidates in id order (top-p: those of
    // the buckets above the cut bucket), then the cut bucket's candidates sorted.
    int s0 = K, b_cut = 256; // sorted part [s0, K); the id part takes buckets < b_cut
    if (S.use_k) {
        s0 = 0;
    } else if (S.use_p) {
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
    if (threadIdx.x == 0) *plan = plan_t{m, K, s0, b_cut, -1};
}

// The draw's weights: by id (the id part, zero outside it) and by sorted rank from s0 (the sorted part).
struct weights {
    const float *   key_id;
    const float *   key_s;
    row_setting     S;
    plan_t          pl;
    double          inv_t;
    __device__ weights(const float * ki, const float * ks, const sample_params * pp, int V, const plan_t * plan)
        : key_id(ki), key_s(ks), S(pp, V), pl(*plan), inv_t(1.0 / double(S.P.temp)) {}
    __device__ double id(int i) const {
        const double l = double(key_id[i]);
        if (S.use_min_p && l - pl.m < S.P.log_min_p) return 0.0;
        if (bucket_of(pl.m - l) >= pl.b_cut) return 0.0;
        return exp((l - pl.m) * inv_t);
    }
    __device__ double sorted(int r) const { return exp((double(key_s[pl.s0 + r]) - pl.m) * inv_t); }
    __device__ bool   has_id_part() const { return !S.use_k; }
};

// Chunk sums of the draw's weights: blocks [0, n_chunks_v) the id part, the next ones the sorted part.
__global__ void __launch_bounds__(k_threads)
    wsum_kernel(const float * __restrict__ key_id, const float * __restrict__ key_s, int V,
                const sample_params * __restrict__ pp, const plan_t * __restrict__ plan, double * wsum_id,
                int * last_id, double * wsum_s, int * last_s) {
    if (plan->token >= 0) return;
    const weights W(key_id, key_s, pp, V, plan);
    const int     n_chunks_v = (V + k_chunk - 1) / k_chunk;
    const int     c          = int(blockIdx.x);
    if (c < n_chunks_v) {
        if (W.has_id_part()) chunk_sum(c, V, [&](int i) { return W.id(i); }, wsum_id, last_id);
    } else {
        const int n_s = W.pl.K - W.pl.s0;
        if ((c - n_chunks_v) * k_chunk < n_s)
            chunk_sum(c - n_chunks_v, n_s, [&](int r) { return W.sorted(r); }, wsum_s, last_s);
    }
}

// One block: the draw u * total, located by the chunk sums and found by one chunk scan, in the CPU's walk order.
__global__ void __launch_bounds__(k_threads)
    draw_kernel(const float * __restrict__ key_id, const float * __restrict__ key_s, const int32_t * __restrict__ id_s,
                int V, const sample_params * __restrict__ pp, const plan_t * __restrict__ plan,
                const double * __restrict__ wsum_id, const int * __restrict__ last_id_c,
                const double * __restrict__ wsum_s, const int * __restrict__ last_s_c, int32_t * __restrict__ out) {
    __shared__ smem_t sm;
    if (plan->token >= 0) {
        if (threadIdx.x == 0) *out = plan->token;
        return;
    }
    const weights W(key_id, key_s, pp, V, plan);
    const int     n_chunks_v = (V + k_chunk - 1) / k_chunk;
    const int     n_s        = W.pl.K - W.pl.s0;
    const int     n_chunks_s = n_s > 0 ? (n_s + k_chunk - 1) / k_chunk : 0;
    double        s_id = 0.0, s_all = 0.0, pre = 0.0, dummy = 0.0;
    int           last_id = -1, last_s = -1, last = -1;
    if (W.has_id_part())
        for (int c = 0; c < n_chunks_v; ++c) {
            s_id += wsum_id[c];
            last_id = max(last_id, last_id_c[c]);
        }
    s_all = s_id;
    for (int c = 0; c < n_chunks_s; ++c) {
        s_all += wsum_s[c];
        last_s = max(last_s, last_s_c[c]);
    }
    const double us   = W.S.P.u * s_all;
    const auto   draw = [&](double cum, double w) { return w > 0.0 && us < cum; };
    int          pick = -1;
    if (W.has_id_part() && us < s_id) {
        const int c = find_chunk(wsum_id, n_chunks_v, 0.0, [&](double t) { return us < t; }, &pre);
        if (c < n_chunks_v) {
            const int b0 = c * k_chunk;
            const int r  = scan_first(V - b0, pre, [&](int i) { return W.id(b0 + i); }, draw, &dummy, &last, sm);
            if (r >= 0) pick = b0 + r;
        }
    }
    if (pick < 0 && n_chunks_s > 0) {
        const int c = find_chunk(wsum_s, n_chunks_s, s_id, [&](double t) { return us < t; }, &pre);
        if (c < n_chunks_s) {
            const int b0 = c * k_chunk;
            const int r  = scan_first(n_s - b0, pre, [&](int i) { return W.sorted(b0 + i); }, draw, &dummy, &last, sm);
            if (r >= 0) pick = id_s[W.pl.s0 + b0 + r];
        }
    }
    if (pick < 0) pick = last_s >= 0 ? id_s[W.pl.s0 + last_s] : (last_id >= 0 ? last_id : id_s[0]); // u within rounding
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
    // chunk sums of the top-p mass, the cut, chunk sums of the draw's weights, the draw
    const int n_chunks = (n_vocab + k_chunk - 1) / k_chunk;
    auto *    plan     = static_cast<plan_t *>(l.plan);
    esum_kernel<<<unsigned(n_chunks), k_threads, 0, stream>>>(l.key_s, n_vocab, params, l.esum);
    LC_CUDA_CHECK_LAUNCH();
    cut_kernel<<<1, k_threads, 0, stream>>>(l.key_s, l.id_s, n_vocab, params, l.esum, plan);
    LC_CUDA_CHECK_LAUNCH();
    wsum_kernel<<<unsigned(2 * n_chunks), k_threads, 0, stream>>>(l.key_id, l.key_s, n_vocab, params, plan, l.wsum_id,
                                                                  l.last_id, l.wsum_s, l.last_s);
    LC_CUDA_CHECK_LAUNCH();
    draw_kernel<<<1, k_threads, 0, stream>>>(l.key_id, l.key_s, l.id_s, n_vocab, params, plan, l.wsum_id, l.last_id,
                                             l.wsum_s, l.last_s, out);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace lc::cuda
