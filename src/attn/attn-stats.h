// Attention statistics for KV eviction (H2O, D2O; docs/METHODS.md §1.3, §5): per-head column sums of the softmax
// probabilities of causal (optionally sliding-window) attention, recomputed in a second pass from q . k and the
// row log-sum-exp that attn_dense() returns, without an N x N matrix.
#pragma once

#include <cstdint>

#include "attn/attn-dense.h"
#include "core/cpu-features.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

// Where the attention of a context adds the column sums of its attention probabilities for a KV policy (H2O, D2O).
// Implemented by the policy; the attention calls colsum() for every call of a layer without a window, then
// attn_colsum() per query head into the buffer it returns.
class attn_stats_sink {
  public:
    virtual ~attn_stats_sink() = default;
    // The buffer of layer il for n_kv slots: [n_head][*stride] f32 (stride >= n_kv), slots the previous call did
    // not cover set to zero; nullptr when the layer is not tracked.
    virtual float * colsum(int il, int64_t n_kv, int64_t * stride) = 0;
};

// Adds to colsum[r * colsum_stride + j] the attention probability of key j summed over the n_q queries of the
// block, for j in [0, kv.n_kv): query i at position pos0 + i sees keys j <= pos0 + i, and with window > 0 only
// j > pos0 + i - window (exactly the masking of attn_dense()); columns no query sees are not touched.
// Rows r: per query head (per_kv_head = false: r = h, n_head rows) or per KV head with the query heads of its
// GQA group summed (per_kv_head = true: r = h / (n_head / n_head_kv), n_head_kv rows).
// q: [n_q][n_head][head_dim] f32, as given to attn_dense(); lse: [n_q][n_head], the lse attn_dense() returned for
// the same q, kv, scale and window (natural log). colsum: f32, accumulated (+=), never cleared.
// Work items are (KV heads, range of pages): each column is written by one thread, so the result does not depend
// on the number of threads or the schedule. Memory: the queries are packed (pre-scaled, row-major and transposed)
// into a buffer of the calling thread, about 2 * n_q * n_head * head_dim floats, kept for later calls; call it per
// prefill chunk rather than over a whole long prompt at once.
// REQUIRES: kv.n_kv >= pos0 + n_q, n_head % kv.n_head_kv == 0, pos0 + n_q < 2^31, colsum_stride >= kv.n_kv.
void attn_colsum(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                 const float * lse, bool per_kv_head, float * colsum, int64_t colsum_stride, thread_pool & pool,
                 int64_t window = attn_window_none);

// As attn_colsum() with an explicit kernel ISA, for tests and benchmarks. REQUIRES: cpu_isa_available(isa).
void attn_colsum_isa(cpu_isa isa, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                     float scale, const float * lse, bool per_kv_head, float * colsum, int64_t colsum_stride,
                     thread_pool & pool, int64_t window = attn_window_none);

} // namespace lc
