// The attention of a context: runs each layer's attention call with the configured methods. Dense by default
// (sliding-window layers always windowed dense). During a prefill whose prompt reaches --sparse-min-len, every
// layer without a window builds a sparse prefill plan per query head from this call's queries and keys (the
// online index of MInference, per chunk under chunked prefill) and runs the sparse kernel on it. Single-token
// calls (decode steps) in layers without a window use the decode method (--decode) where it applies: it builds a
// decode plan and the sparse decode kernel executes it.
// Thread-safety: one thread at a time (the owning context's).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/attn-config.h"
#include "attn/attn-stats.h"
#include "attn/decode/decode-method.h"
#include "attn/minference/head-config.h"
#include "attn/prefill-plan.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "longctx/status.h"

namespace lc {

struct forward_timings;
class model;

// (optional) Sees every attention call after it ran: the queries and cache as the kernels saw them, the plan
// (nullptr when the call was dense), the output o [n_q][n_head][head_dim] and the context's thread pool (free to
// use). Used by calibration (the search runs inside the dense prefill) and by fidelity evaluation
// (attention-mass recall and output error per layer).
class attn_observer {
  public:
    virtual ~attn_observer()                      = default;
    virtual void on_attention(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                              float scale, int64_t window, const prefill_plan * plan, const float * o,
                              thread_pool & pool) = 0;
    // (optional) The plan of a sparse decode step of layer il, before on_attention() of the same call (valid
    // during it). Dense decode steps have none.
    virtual void on_decode_plan(int il, const decode_plan & plan) {}
};

class attention {
  public:
    // Loads the MInference head config for --prefill minference: the sidecar (config.sidecar "auto": beside the
    // model file when present), else the documented defaults (VS(1000, 6096) for every head). Errors: a sidecar
    // that is named but unreadable or made for another shape.
    // Also creates the decode method (errors: see decode_method_create).
    static result<std::unique_ptr<attention>> create(const model & m, const attn_config & c);

    // The context's cache was cut to its first n tokens (0: cleared).
    void truncate(int64_t n) {
        if (decode_) decode_->truncate(n);
    }
    // A KV policy rewrote layer il's cache (evicted or merged tokens): the decode method's metadata of the layer is
    // rebuilt on its next call.
    void invalidate(int il) {
        if (decode_) decode_->invalidate(il);
    }
    // Whether the next forward call is the last chunk of a prompt (the decode method takes in the prompt's keys).
    void set_last_chunk(bool last) { last_chunk_ = last; }
    // (optional) Receives the column sums of the attention probabilities of every call in layers without a window
    // (a KV policy's scores); nullptr: none are computed.
    void set_stats_sink(attn_stats_sink * s) { stats_ = s; }

    // The number of tokens the context will hold at the end of the current prompt: sparse prefill applies to
    // this prompt's calls when it reaches sparse_min_len. Set by the context before each decode().
    void set_prompt_end(int64_t n_tokens) { prompt_end_ = n_tokens; }

    // Attention of layer il: q [n_q][n_head][head_dim] at cache slots pos0.., keys of `kv` (n_kv >= pos0 + n_q),
    // o [n_q][n_head][head_dim]. window > 0: sliding-window layer (always dense). Adds index time and pair counts
    // and decode statistics to t (may be nullptr).
    void run(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale, float * o,
             thread_pool & pool, int64_t window, forward_timings * t);

    // Whether calls of n_q queries (at the current prompt end) use a sparse plan in layers without a window.
    bool sparse_active(int64_t n_q) const;

    const attn_config &       config() const { return cfg_; }
    const minference_config & heads() const { return heads_; }
    decode_method *           decoder() { return decode_.get(); }
    void                      set_heads(const minference_config & h) { heads_ = h; }
    void                      set_observer(attn_observer * obs) { observer_ = obs; }

    // Builds the plan of layer il for one call (exposed for calibration and tests).
    void build_plan(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                    prefill_plan & plan, thread_pool & pool);

  private:
    attention(const attn_config & c) : cfg_(c) {}
    void run_prefill(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                     float * o, thread_pool & pool, int64_t window, forward_timings * t, bool counted);
    void run_decode(int il, const float * q, int64_t pos0, int n_head, const kv_view & kv, float scale, float * o,
                    thread_pool & pool, forward_timings * t);
    attn_config                    cfg_;
    minference_config              heads_;
    prefill_plan                   plan_;
    std::unique_ptr<decode_method> decode_;
    decode_plan                    dplan_;
    void add_stats(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                   thread_pool & pool, forward_timings * t);
    int64_t                        prompt_end_ = 0;
    bool                           last_chunk_ = true;
    attn_observer *                observer_   = nullptr;
    attn_stats_sink *              stats_      = nullptr;
    std::vector<float>             lse_;
};

// Each (layer, query head)'s prefill pattern and budgets for c.prefill: the method's pattern with its default
// budgets, or for MINFERENCE the sidecar's search results (c.sidecar: auto finds MODEL.longctx.gguf, none skips it)
// or the defaults. Errors: a sidecar that cannot be read.
result<minference_config> prefill_heads_for(const model & m, const attn_config & c);

// The budgets head h of a pattern uses for a call ending at n_keys keys under the --prefill-budget setting.
head_budget head_budget_effective(const head_budget & hb, const prefill_budget & b, int64_t n_keys);

// The plan of layer il for one call with each head's pattern from `heads` (threads over heads).
void prefill_plan_build(const minference_config & heads, const prefill_budget & b, int il, const float * q, int64_t n_q,
                        int64_t pos0, int n_head, const kv_view & kv, float scale, prefill_plan & plan,
                        thread_pool & pool);

} // namespace lc
