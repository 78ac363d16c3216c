// An inference context: one model, one KV cache, a thread pool and the buffers of the forward pass.
// decode() appends tokens (in chunks of n_ubatch for prompts) and leaves the logits of the last token.
// Thread-safety: a context is used by one thread at a time.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "attn/attn-config.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "kv/kv-policy.h"
#include "model/forward.h"
#include "model/model.h"

namespace lc {

struct context_params {
    int64_t     n_ctx     = 0;   // 0: the model's trained context
    int         n_threads = 0;   // 0: hardware concurrency
    int64_t     n_ubatch  = 512; // prompt tokens per forward pass (chunked prefill)
    attn_config attn;            // attention methods and budgets (dense by default)
};

// Called after each prompt chunk: tokens done so far and in total.
using progress_fn = std::function<void(int64_t done, int64_t total)>;

class context {
  public:
    static result<std::unique_ptr<context>> create(const model & m, const context_params & p);

    // Appends tokens at the current position; OUT_OF_RANGE when they do not fit in n_ctx.
    // all_logits: keep logits of every token (n x n_vocab), else only of the last one.
    // prompt_end = false: more of the same prompt follows in the next call (the KV policy compresses only at the
    // end of a prompt).
    status decode(const std::vector<int32_t> & tokens, bool all_logits = false, const progress_fn & progress = {},
                  bool prompt_end = true);

    const float * logits() const;          // last token's logits [n_vocab]
    const float * logits(int64_t i) const; // i-th token of the last decode() when all_logits
    int64_t       n_past() const { return n_past_; }
    int64_t       n_ctx() const { return n_ctx_; }
    int           n_threads() const { return pool_.n_threads(); }
    void          clear(); // forget all tokens
    // Keep the first n tokens, drop the rest. UNSUPPORTED when n is out of range or the KV policy has
    // evicted tokens (then only n == 0 and n == n_past() are possible).
    status truncate(int64_t n);
    bool   can_truncate(int64_t n) const;

    const model &           get_model() const { return model_; }
    const kv_cache &        kv() const { return *kv_; }
    const forward_timings & timings() const { return timings_; }
    attention &             attn() { return *attn_; }
    const kv_policy &       policy() const { return *policy_; }
    // KV bytes the cache holds for the context's tokens, and what it would hold keeping every token.
    size_t kv_bytes_held() const { return kv_->bytes_used(); }
    size_t kv_bytes_full() const { return size_t(n_past_) * kv_->slot_bytes() * size_t(kv_->n_layer()); }
    void                    reset_timings() { timings_ = {}; }

  private:
    context(const model & m, int n_threads) : model_(m), pool_(n_threads) {}
    const model &              model_;
    thread_pool                pool_;
    std::unique_ptr<kv_cache>  kv_;
    std::unique_ptr<attention> attn_;
    std::unique_ptr<kv_policy> policy_;
    forward_scratch            scratch_;
    forward_timings            timings_;
    std::vector<float>         logits_;
    int64_t                    n_logits_ = 0;
    int64_t                    n_past_   = 0;
    int64_t                    n_ctx_    = 0;
    int64_t                    n_ubatch_ = 512;
};

} // namespace lc
