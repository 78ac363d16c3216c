// An inference context: one model, one KV cache holding up to n_seq sequences, a thread pool and the buffers of the
// forward pass. decode_seq() appends tokens to one sequence (in chunks of n_ubatch for prompts) and leaves the logits
// of its last token; decode_step() appends one token to each of several sequences in one forward pass (continuous
// batching: the weights are read once for the whole batch). Each sequence has its own attention methods and KV
// policy (set_methods()); the calls without a sequence act on sequence 0.
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
#include "runtime/sampling.h"

namespace lc {

struct context_params {
    int64_t     n_ctx     = 0;   // 0: the model's trained context
    int         n_threads = 0;   // 0: hardware concurrency
    int64_t     n_ubatch  = 512; // prompt tokens per forward pass (chunked prefill)
    attn_config attn;            // attention methods and budgets of every sequence (dense by default)
    int         n_seq     = 1;   // sequences held at once
    // KV-cache memory for all sequences together, in bytes (0: room for n_ctx tokens in every sequence). Pages are
    // shared by all layers and sequences, so a KV policy that evicts leaves room for more sequences.
    size_t kv_memory = 0;
    // Run the model on the GPU (the CUDA backend, src/backend/cuda/cuda-model.h): bf16 weights and KV cache on the
    // device, one sequence, dense attention, full KV cache. UNSUPPORTED in a build without LONGCTX_CUDA, or with
    // other methods or several sequences.
    bool cuda = false;
};

namespace cuda {
class cuda_model;
}

// Called after each prompt chunk: tokens done so far and in total.
using progress_fn = std::function<void(int64_t done, int64_t total)>;

class context {
  public:
    static result<std::unique_ptr<context>> create(const model & m, const context_params & p);

    // Appends tokens to sequence seq at its current position. Errors: OUT_OF_RANGE when they do not fit in n_ctx,
    // RESOURCE_EXHAUSTED when the KV memory is full (nothing of the call is kept), INVALID_ARGUMENT for a bad seq.
    // all_logits: keep logits of every token (n x n_vocab), else only of the last one.
    // prompt_end = false: more of the same prompt follows in the next call (the KV policy compresses only at the
    // end of a prompt).
    status decode_seq(int seq, const std::vector<int32_t> & tokens, bool all_logits = false,
                      const progress_fn & progress = {}, bool prompt_end = true);
    status decode(const std::vector<int32_t> & tokens, bool all_logits = false, const progress_fn & progress = {},
                  bool prompt_end = true) {
        return decode_seq(0, tokens, all_logits, progress, prompt_end);
    }
    // decode_seq(), then the next token from smp: on the GPU the sampler runs on the device (inside the decode
    // step's CUDA graph) and only the token id comes back; on the CPU smp.sample(logits_of(seq)). The same seed
    // gives the same tokens on both, up to float rounding at the sampler's boundaries (backend/cuda/sampling.cuh).
    // The logits stay readable (logits_of() then copies them from the GPU).
    result<int32_t> decode_sample(int seq, const std::vector<int32_t> & tokens, sampler & smp,
                                  const progress_fn & progress = {}, bool prompt_end = true);
    result<int32_t> decode_sample(const std::vector<int32_t> & tokens, sampler & smp,
                                  const progress_fn & progress = {}) {
        return decode_sample(0, tokens, smp, progress);
    }
    // One token for each of several distinct sequences (tokens[i] to seqs[i]) in one forward pass; logits_of(seq)
    // then holds each one's next-token logits. On error no sequence changes.
    status decode_step(const std::vector<int> & seqs, const std::vector<int32_t> & tokens);

    const float * logits() const { return logits_of(0); } // sequence 0's last token's logits [n_vocab]
    const float * logits(int64_t i) const; // i-th token of sequence 0's last decode_seq() when all_logits
    const float * logits_of(int seq) const; // sequence seq's last token's logits
    int64_t       n_past(int seq = 0) const { return seqs_[size_t(seq)].n_past; }
    int64_t       n_ctx() const { return n_ctx_; }
    int           n_seq() const { return int(seqs_.size()); }
    int           n_threads() const { return pool_.n_threads(); }
    void          clear(int seq = 0); // forget the sequence's tokens
    // Keep the first n tokens of seq, drop the rest. UNSUPPORTED when n is out of range or the KV policy has
    // evicted tokens (then only n == 0 and n == n_past(seq) are possible).
    status truncate(int64_t n) { return truncate(0, n); }
    status truncate(int seq, int64_t n);
    bool   can_truncate(int64_t n) const { return can_truncate(0, n); }
    bool   can_truncate(int seq, int64_t n) const;
    // The attention methods and KV policy of sequence seq (from then on; the sequence must be empty).
    // Errors: those of attention::create and kv_policy_create, INVALID_ARGUMENT when the sequence holds tokens.
    status set_methods(int seq, const attn_config & c);

    const model &           get_model() const { return model_; }
    const kv_cache &        kv() const { return *kv_; }
    const forward_timings & timings() const { return timings_; }
    attention &             attn(int seq = 0) { return *seqs_[size_t(seq)].attn; }
    const kv_policy &       policy(int seq = 0) const { return *seqs_[size_t(seq)].policy; }
    // KV bytes the cache holds (for all sequences, or one), and what sequence 0 would hold keeping every token.
    size_t kv_bytes_held() const { return cuda_ ? kv_bytes_full(0) : kv_->bytes_used(); }
    size_t kv_bytes_held(int seq) const;
    size_t kv_bytes_full(int seq = 0) const {
        return size_t(n_past(seq)) * kv_->slot_bytes() * size_t(kv_->n_layer());
    }
    // KV memory: the pool, what is free of it, and what n tokens take in every layer (no eviction).
    size_t kv_bytes_capacity() const { return size_t(kv_->n_pages_total()) * kv_->page_bytes() * 2; }
    size_t kv_bytes_free() const { return size_t(kv_->n_pages_free()) * kv_->page_bytes() * 2; }
    size_t kv_bytes_for(int64_t n_tokens) const {
        return size_t(kv_cache::pages_for(n_tokens)) * size_t(kv_->n_layer()) * kv_->page_bytes() * 2;
    }
    void reset_timings() { timings_ = {}; }

    ~context();
    bool on_gpu() const { return cuda_ != nullptr; }

  private:
    struct cuda_deleter {
        void operator()(cuda::cuda_model * p) const;
    };
    struct seq_state {
        std::unique_ptr<attention> attn;
        std::unique_ptr<kv_policy> policy;
        // On the GPU the last token's logits stay on the device until logits_of() asks (logits_on_gpu).
        mutable std::vector<float> logits;
        mutable bool               logits_on_gpu = false;
        int64_t                    n_logits      = 0;
        int64_t                    n_past        = 0;
    };
    context(const model & m, int n_threads) : model_(m), pool_(n_threads) {}
    status check_seq(int seq) const;
    // The GPU path of decode_seq(); next (with all_logits false): the sampled token (smp, or the argmax without).
    status decode_gpu(seq_state & S, const std::vector<int32_t> & tokens, bool all_logits,
                      const progress_fn & progress, sampler * smp = nullptr, int32_t * next = nullptr);
    // Cuts every layer of seq back to the slot counts in `slots` (and frees pages reserved past them).
    void   roll_back(int seq, const std::vector<int64_t> & slots);
    const model &             model_;
    thread_pool               pool_;
    std::unique_ptr<kv_cache> kv_;
    std::vector<seq_state>    seqs_;
    forward_scratch           scratch_;
    forward_timings           timings_;
    std::vector<float>        batch_logits_;
    std::unique_ptr<cuda::cuda_model, cuda_deleter> cuda_; // the model on the GPU (context_params::cuda)
    int64_t                   n_ctx_    = 0;
    int64_t                   n_ubatch_ = 512;
};

} // namespace lc
