// KV-cache policies (ARCHITECTURE.md sec. 2; METHODS.md sec. 1.2, 1.3, 5): what the cache keeps. The context calls
// its policy when a prompt has been prefilled and after every decode step; a policy may evict tokens (compacting
// the layer's slots and freeing pages, kv_cache::keep_rows) and merge evicted tokens into kept ones (rewriting
// their K/V in place). Evicted tokens are never read again. Policies that score tokens by accumulated attention
// (H2O, D2O) receive the column sums of every attention call through attn_stats_sink.
//   full       keeps everything (the dense baseline)
//   streaming  StreamingLLM: sinks + a recent window
//   h2o        H2O: heavy hitters by accumulated attention + a recent window, the same budget in every layer
//   d2o        D2O: H2O's eviction with layer budgets from the variance of the prompt's column sums, merging of
//              evicted tokens into their most similar kept token (EMA threshold), first two and last layers whole
// Budgets are per layer, in slots, set at the end of each prompt from the tokens the context then holds.
// Sliding-window layers are not scored or budgeted; every policy but full trims them to their window (lossless).
// Thread-safety: called by the owning context's thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/attn-config.h"
#include "attn/attn-stats.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "longctx/status.h"

namespace lc {

class attention;
class model;

// What a policy did to one layer of one sequence (KV-head rows averaged over the KV heads).
struct kv_layer_report {
    bool    managed = false; // the policy may evict in this layer
    int64_t budget  = -1;    // slots kept after the last eviction (-1: no eviction yet)
    int64_t evicted = 0;     // tokens evicted (merged ones included)
    int64_t merged  = 0;     // evicted tokens merged into a kept token
};

class kv_policy {
  public:
    virtual ~kv_policy()              = default;
    virtual const char * name() const = 0;
    // (optional) Where the attention adds its column sums; nullptr when the policy does not score tokens.
    virtual attn_stats_sink * stats() { return nullptr; }
    // The sequence the next forward calls run on (the stats sink accumulates into it).
    virtual void begin(int seq) {}
    // A prompt has been prefilled into sequence seq: the context holds n_pos positions.
    virtual status on_prefill_end(kv_cache & kv, int seq, int64_t n_pos, attention & attn, thread_pool & pool) {
        return status::ok();
    }
    // One decode step appended a token; the context holds n_pos positions.
    virtual status on_decode_step(kv_cache & kv, int seq, int64_t n_pos, attention & attn, thread_pool & pool) {
        return status::ok();
    }
    // Sequence seq was cut to its first n slots (0: cleared). Only called while nothing was evicted past n.
    virtual void truncate(int seq, int64_t n) {}
    // Whether tokens of sequence seq have been evicted (its slots no longer equal its positions).
    virtual bool compressed(int seq) const { return false; }
    // Positions dropped from the front of layer il of seq while its slots stay consecutive positions (a trimmed
    // sliding window of a policy that is not compressed(): slot t holds position t + front).
    virtual int64_t front(int seq, int il) const { return 0; }
    // Per layer of sequence seq (empty for full).
    virtual std::vector<kv_layer_report> report(int seq) const { return {}; }
};

// Keeps every token: the dense baseline. Sliding-window layers (Gemma 3's local layers) keep their window and
// the kv_params::swa_slack tokens before it: whole pages before those go (lossless), unless kv_params::swa_full.
// The slack lets the context cut a sequence back by up to that many tokens (chat turns, bench repetitions).
class kv_policy_full final : public kv_policy {
  public:
    kv_policy_full() = default;
    kv_policy_full(const model & m, const kv_params & p, int n_seq);
    const char * name() const override { return "full"; }
    status on_prefill_end(kv_cache & kv, int seq, int64_t n_pos, attention & attn, thread_pool & pool) override;
    status on_decode_step(kv_cache & kv, int seq, int64_t n_pos, attention & attn, thread_pool & pool) override;
    void   truncate(int seq, int64_t n) override;
    int64_t front(int seq, int il) const override;

  private:
    void                              trim(kv_cache & kv, int seq, attention & attn);
    int64_t                           n_swa_ = 0, slack_ = 0;
    std::vector<bool>                 swa_;
    std::vector<std::vector<int64_t>> front_; // [seq][layer] positions dropped from the front
};

// Drops the whole pages of layer il of seq that lie before its last n_swa + slack slots (a sliding-window layer
// reads only its last n_swa). No row moves, so every token keeps its place within its page and the kernels tile
// the window as over the full cache: the attention is bit-identical. Returns the slots dropped.
int64_t kv_trim_window(kv_cache & kv, int seq, int il, int64_t n_swa, int64_t slack, attention & attn);

// The policy of c.kv for a model and n_seq sequences. Errors: parameters that do not suit the model (a whole
// layer out of range).
result<std::unique_ptr<kv_policy>> kv_policy_create(const model & m, const attn_config & c, int n_seq = 1);

// D2O's layer budget ratios (METHODS.md sec. 5.1) from the variance sigma[l][h] of each head's column sums, over the
// compressed layers (sigma.size() of them) at a mean ratio rho: sigma~ = min-max normalised over a layer's heads,
// sigma_l = its mean, r_l = clamp(n_layers * rho * softmax(-sigma)_l, 0.01, 1).
std::vector<double> d2o_layer_ratios(const std::vector<std::vector<double>> & sigma, double rho);

// Which slots a score-based eviction keeps out of n (ascending): [0, n_sink), the last n_recent, and the n_heavy
// highest scores in between (ties to the lower slot). Clipped so that at most n slots are kept.
void evict_keep_set(const float * score, int64_t n, int64_t n_sink, int64_t n_recent, int64_t n_heavy,
                    std::vector<int32_t> & keep);

// D2O merging of the evicted rows of KV head g in layer il (METHODS.md sec. 5.3): evicted[i] goes into kept row
// keep[arg[i]] when u[i] (its key's cosine similarity to that row) reaches tau; K and V of each kept row are
// rewritten by the rule (REFERENCE: (x_c + sum u_e x_e) / (1 + |E_c|); SOFTMAX: weights exp(u_e) and e for the
// kept row, normalised). Rows are read before any is written. Returns the number of rows merged.
int64_t d2o_merge_rows(kv_cache & kv, int il, int seq, int g, const std::vector<int32_t> & keep,
                       const std::vector<int32_t> & evicted, const float * u, const int32_t * arg, float tau,
                       d2o_merge rule);

} // namespace lc
