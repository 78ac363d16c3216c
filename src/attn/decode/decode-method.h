// Sparse decode methods (ARCHITECTURE.md sec. 2; METHODS.md sec. 1.4, 1.5, 3, 4). Each turns the decoding query
// of a layer into a decode plan -- an always-dense part (sinks, local window) plus the tokens it selects, with
// log-weights for MagicPIG's importance sampling -- which one sparse decode kernel executes (attn-sparse-decode.h).
// Methods keep per-layer metadata (Quest page bounds, Loki's low-rank keys, MagicPIG's hash tables) in step with
// the cache: each plan() call first takes in the keys appended since that layer's previous call.
// Thread-safety: one thread at a time (the owning context's); plan() may use the pool.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/attn-config.h"
#include "attn/decode/decode-plan.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "longctx/status.h"

namespace lc {

class model;

class decode_method {
  public:
    virtual ~decode_method()          = default;
    virtual const char * name() const = 0;

    // Whether decoding in layer il uses the method; other layers decode densely (Quest's first two layers,
    // MagicPIG's dense layers). Sliding-window layers are always windowed dense and never asked.
    virtual bool sparse_layer(int il) const = 0;

    // The plan of layer il for one decoding query: q [n_head][head_dim] f32 (post-RoPE) at position kv.n_kv - 1;
    // kv holds the layer's keys, the query's own included. Adds the bytes the selection read (metadata, low-rank
    // keys, hash tables, key rows) to *select_bytes. REQUIRES: sparse_layer(il).
    virtual void plan(int il, const float * q, int n_head, const kv_view & kv, float scale, decode_plan & plan,
                      thread_pool & pool, int64_t * select_bytes) = 0;

    // (optional) Layer il has just prefilled a prompt ending at kv.n_kv: a chance to take in its keys before the
    // first decode step (page bounds, low-rank keys, hash tables), so that step's latency stays that of a step.
    virtual void prepare(int il, const kv_view & kv, thread_pool & pool) {}

    // The cache was cut to its first n tokens (0: cleared): metadata of positions >= n is dropped.
    virtual void truncate(int64_t n) = 0;

    // Layer il's cache was rewritten (a KV policy evicted or merged tokens): its metadata is dropped and rebuilt
    // from the cache on the next call.
    virtual void invalidate(int il) = 0;
};

// The method of c.decode, nullptr for dense. Errors: a method that needs calibration data the sidecar lacks
// (Loki: longctx calibrate loki), parameters that do not suit the model.
result<std::unique_ptr<decode_method>> decode_method_create(const model & m, const attn_config & c);

// The always-dense part of a plan over n_kv keys: [0, n_sink) and [n_kv - n_local, n_kv), clipped and merged
// when they overlap; empty ranges are left out.
void decode_dense_part(int64_t n_kv, int n_sink, int n_local, std::vector<key_range> & out);

// The positions of the k highest scores among t in [0, n) outside `dense` (sorted, disjoint ranges), in
// ascending order; ties go to the lower position; NaN scores are never chosen before finite ones. Fewer than k
// when fewer positions are eligible. scores[t] is read only for eligible t. With a pool, a long vector is split
// across its threads (REQUIRES: not called from inside that pool's run()).
void decode_topk(const float * scores, int64_t n, int64_t k, const std::vector<key_range> & dense,
                 std::vector<int32_t> & out, thread_pool * pool = nullptr);

// decode_topk of n_lists score rows (scores [n_lists][n]) into plan.heads[e].idx: one list per pool thread when
// there are at least as many lists as threads, else each list split across the threads.
void decode_topk_lists(const float * scores, int n_lists, int64_t n, int64_t k, const std::vector<key_range> & dense,
                       decode_plan & plan, thread_pool & pool);

// KV-head-level selection scores: for each group of G consecutive query heads, out[t] = max over the group's heads
// of (s_h[t] - max_t' s_h[t']), each head's scores taken relative to its best eligible key so that no head's scale
// dominates. scores [n_head][n] -> out [n_head / G][n]; keys inside `dense` are neither read nor set. With a pool,
// long vectors are split across its threads (REQUIRES: not called from inside that pool's run()).
void decode_group_scores(const float * scores, int n_head, int G, int64_t n, const std::vector<key_range> & dense,
                         std::vector<float> & out, thread_pool * pool = nullptr);

// The number of keys a plan head attends (dense ranges plus indices).
int64_t decode_head_keys(const decode_head_plan & h);

} // namespace lc
