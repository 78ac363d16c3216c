// Score-based KV eviction on the GPU (H2O, D2O; METHODS.md sec. 1.3, 5.2, 5.3): the keep set of each KV head
// (evict_keep_set of kv/kv-policy.h), the compaction of a layer's paged bf16 K/V rows and score buffer onto the
// kept slots, and D2O's merging of evicted rows into their most similar kept rows (d2o_merge_rows, EMA threshold).
// Per layer the model calls, in this order: evict_keep(), d2o_merge() (D2O only), kv_compact(); then it frees the
// pages past n_keep. All pointers are device pointers; every call is asynchronous on its stream.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "core/fp16.h"
#include "longctx/status.h"

namespace lc::cuda {

// One layer of one sequence of the paged bf16 cache, writable (layout of attn_kv_paged, kv-paged.cuh).
struct kv_paged_mut {
    bf16_t *        k_pool    = nullptr; // [n_pages_total][n_head_kv][64][head_dim]
    bf16_t *        v_pool    = nullptr;
    const int32_t * pages     = nullptr; // logical page -> physical page
    int             n_head_kv = 0;
    int             head_dim  = 0;
};

// Slots kept by evict_keep_set(score, n, n_sink, n_recent, n_heavy) after its clipping (n_sink, n_recent, n_heavy
// clipped in that order to what n leaves).
int64_t evict_keep_count(int64_t n, int64_t n_sink, int64_t n_recent, int64_t n_heavy);

// For every KV head g: keep + g * keep_stride gets the evict_keep_set() of the head's score over n slots: slots
// [0, n_sink), the last n_recent, and the n_heavy highest scores in between, ascending; ties go to the lower slot
// and NaN scores rank below every other value. The head's score is the sum, in row order, of rows
// g * rows_per_kv .. g * rows_per_kv + rows_per_kv - 1 of score ([rows][score_stride] f32: rows_per_kv = the GQA
// group size for per-query-head sums, 1 for per-KV-head sums), the sum the CPU policy ranks.
// The heavy hitters come from an exact radix select (4 passes of 8 bits) and an ordered compaction, one block
// per KV head. workspace: evict_keep_workspace_bytes(n_head_kv, n) bytes.
// REQUIRES: keep_stride >= evict_keep_count(...), n < 2^31. Errors: INVALID_ARGUMENT (workspace, strides).
struct evict_keep_args {
    const float * score        = nullptr;
    int64_t       score_stride = 0;
    int           rows_per_kv  = 1;
    int           n_head_kv    = 0;
    int64_t       n            = 0;
    int64_t       n_sink = 0, n_recent = 0, n_heavy = 0;
    int32_t *     keep         = nullptr;
    int64_t       keep_stride  = 0;
    void *        workspace    = nullptr;
    size_t        workspace_bytes = 0;
};
size_t evict_keep_workspace_bytes(int n_head_kv, int64_t n);
status evict_keep(const evict_keep_args & a, cudaStream_t stream);

// Moves, for every KV head g, K and V rows keep[g][i] to slot i (i < n_keep) and compacts the score buffer rows of
// the head the same way (score[r][i] = score[r][keep[g][i]] for its rows_per_kv rows; score may be null). Kept rows
// go through a scratch area in rounds of `chunk` slots (every row of a round is read before any is written), so
// the page table stays as it is; the slots past n_keep keep stale finite values.
// workspace: kv_compact_workspace_bytes(n_head_kv, head_dim, chunk) bytes.
struct kv_compact_args {
    kv_paged_mut    kv;
    const int32_t * keep         = nullptr;
    int64_t         keep_stride  = 0;
    int64_t         n_keep       = 0;
    float *         score        = nullptr;
    int64_t         score_stride = 0;
    int             rows_per_kv  = 1;
    void *          workspace    = nullptr;
    size_t          workspace_bytes = 0;
    int64_t         chunk        = 8192;
};
size_t kv_compact_workspace_bytes(int n_head_kv, int head_dim, int64_t chunk);
status kv_compact(const kv_compact_args & a, cudaStream_t stream);

enum class d2o_rule { REFERENCE, SOFTMAX };

// The layer's EMA merge threshold, kept on the device between evictions (zero-initialise: set = 0).
struct d2o_tau_state {
    double tau = 0.0;
    int    set = 0;
};

// D2O merging of the n - n_keep evicted slots of every KV head (those not in its keep list) into its kept slots,
// before kv_compact(): for evicted row e, u_e = max over kept c of cos(k_e, k_c) and arg_e = that c (the first
// index reaching it: max_dot_argmax of kv/merge-sim.h; dots of the raw bf16 rows on mma.sync tensor cores in f32,
// divided by the two f32 norms). Then the threshold tau <- set ? alpha tau + beta mean(u) : mean(u) (mean over all
// heads' evicted rows, summed in a fixed order in double), and every e with u_e >= tau goes into its kept row by
// d2o_merge_rows()'s rule (REFERENCE: (x_c + sum u_e x_e) / (1 + |E_c|); SOFTMAX: weights exp(u_e), e for x_c,
// normalised), K and V, accumulated in f32 over e ascending, rounded once to bf16. Only kept rows are written and
// each by the one warp that reads it, so every row is read before it is written.
// Outputs beside the cache (device, optional): *merged = rows merged; *u_mean = mean(u) of this call. The
// per-row results stay in the workspace (d2o_workspace_view) until the next call. Nothing happens when
// n_keep == 0 or n_keep == n (tau unchanged, *merged = 0).
struct d2o_merge_args {
    kv_paged_mut    kv;
    int64_t         n           = 0; // slots before eviction
    const int32_t * keep        = nullptr;
    int64_t         keep_stride = 0;
    int64_t         n_keep      = 0;
    d2o_rule        rule        = d2o_rule::REFERENCE;
    double          alpha = 0.5, beta = 0.5;
    d2o_tau_state * tau         = nullptr; // required
    int64_t *       merged      = nullptr;
    double *        u_mean      = nullptr;
    void *          workspace   = nullptr;
    size_t          workspace_bytes = 0;
};
size_t d2o_merge_workspace_bytes(int n_head_kv, int64_t n, int64_t n_keep);
// Views of the per-row results inside a d2o_merge() workspace (for tests and diagnostics), [n_head_kv][n - n_keep]:
// evicted slots (ascending), u and arg (index into the head's keep list, -1: none).
struct d2o_workspace_view {
    const int32_t * evicted = nullptr;
    const float *   u       = nullptr;
    const int32_t * arg     = nullptr;
};
d2o_workspace_view d2o_workspace_views(void * workspace, int n_head_kv, int64_t n, int64_t n_keep);
status             d2o_merge(const d2o_merge_args & a, cudaStream_t stream);

} // namespace lc::cuda
