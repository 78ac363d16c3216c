// Inference context: chunked prefill and single-token decode over the paged KV cache.
#include "runtime/context.h"

#include <algorithm>
#include <thread>

#include "core/log.h"

namespace lc {

result<std::unique_ptr<context>> context::create(const model & m, const context_params & p) {
    const model_hparams & hp    = m.hparams();
    int64_t               n_ctx = p.n_ctx > 0 ? p.n_ctx : hp.n_ctx_train;
    if (n_ctx <= 0)
        return error(status_code::INVALID_ARGUMENT, "context: -c must be positive (got %lld)", (long long)n_ctx);
    if (n_ctx > hp.n_ctx_train)
        return error(status_code::OUT_OF_RANGE,
                     "context: -c %lld exceeds %s.context_length %lld and the model has no rope scaling; lower -c",
                     (long long)n_ctx, hp.arch_name.c_str(), (long long)hp.n_ctx_train);
    if (p.n_ubatch <= 0)
        return error(status_code::INVALID_ARGUMENT, "context: -ub must be positive (got %lld)", (long long)p.n_ubatch);
    int n_threads = p.n_threads > 0 ? p.n_threads : int(std::max(1u, std::thread::hardware_concurrency()));
    if (n_threads > 1024)
        return error(status_code::INVALID_ARGUMENT, "context: -t %d is more threads than makes sense (max 1024)",
                     n_threads);
    std::unique_ptr<context> c(new context(m, n_threads));
    c->n_ctx_    = n_ctx;
    c->n_ubatch_ = p.n_ubatch;
    c->kv_       = std::make_unique<kv_cache>(hp.n_layer, hp.n_head_kv, hp.head_dim, n_ctx, 1);
    LC_ASSIGN_OR_RETURN(c->attn_, attention::create(m, p.attn));
    LC_ASSIGN_OR_RETURN(c->policy_, kv_policy_create(m, p.attn, 1));
    c->attn_->set_stats_sink(c->policy_->stats());
    return c;
}

status context::decode(const std::vector<int32_t> & tokens, bool all_logits, const progress_fn & progress,
                       bool prompt_end) {
    const int64_t n = int64_t(tokens.size());
    if (n == 0) return error(status_code::INVALID_ARGUMENT, "context: nothing to decode (0 tokens)");
    if (n_past_ + n > n_ctx_)
        return error(status_code::OUT_OF_RANGE,
                     "context: %lld tokens after %lld already in the context exceed -c %lld; raise -c (the model was "
                     "trained on %lld) or shorten the prompt",
                     (long long)n, (long long)n_past_, (long long)n_ctx_, (long long)model_.hparams().n_ctx_train);
    const int64_t n_vocab = model_.hparams().n_vocab;
    logits_.resize(size_t((all_logits ? n : 1) * n_vocab));
    attn_->set_prompt_end(n_past_ + n);
    policy_->begin(0);
    std::vector<int64_t> slots(size_t(model_.hparams().n_layer));
    for (int64_t i = 0; i < n; i += n_ubatch_) {
        const int64_t nb    = std::min(n_ubatch_, n - i);
        const bool    last  = i + nb == n;
        for (int il = 0; il < model_.hparams().n_layer; ++il) slots[size_t(il)] = kv_->n_slots(il, 0);
        attn_->set_last_chunk(last);
        const int64_t n_out = all_logits ? nb : (last ? 1 : 0);
        float *       out   = all_logits ? logits_.data() + i * n_vocab : logits_.data();
        status        st = forward_batch(model_, *kv_, 0, tokens.data() + i, nb, n_past_, n_out, out, pool_, scratch_,
                                         &timings_, attn_.get());
        if (!st.is_ok()) {
            // Drop what this chunk wrote in the layers it reached.
            for (int il = 0; il < model_.hparams().n_layer; ++il)
                if (kv_->n_slots(il, 0) > slots[size_t(il)]) kv_->finish_keep(il, 0, slots[size_t(il)]);
            attn_->truncate(n_past_);
            return st;
        }
        n_past_ += nb;
        if (progress) progress(i + nb, n);
    }
    n_logits_ = all_logits ? n : 1;
    if (n == 1) timings_.decode_tokens += 1;
    if (n > 1 && !prompt_end) return status::ok();
    return n > 1 ? policy_->on_prefill_end(*kv_, 0, n_past_, *attn_, pool_)
                 : policy_->on_decode_step(*kv_, 0, n_past_, *attn_, pool_);
}

const float * context::logits() const {
    return logits_.data() + (n_logits_ - 1) * model_.hparams().n_vocab;
}

const float * context::logits(int64_t i) const {
    LC_ASSERT(i >= 0 && i < n_logits_, "logits(%lld) of %lld", (long long)i, (long long)n_logits_);
    return logits_.data() + i * model_.hparams().n_vocab;
}

void context::clear() {
    kv_->clear(0);
    attn_->truncate(0);
    policy_->truncate(0, 0);
    n_past_   = 0;
    n_logits_ = 0;
}

bool context::can_truncate(int64_t n) const {
    return n >= 0 && n <= n_past_ && (n == 0 || n == n_past_ || !policy_->compressed(0));
}

status context::truncate(int64_t n) {
    if (!can_truncate(n))
        return error(status_code::UNSUPPORTED,
                     "context: cannot cut %lld tokens back to %lld: %s", (long long)n_past_, (long long)n,
                     n > n_past_ || n < 0 ? "out of range" : "the KV policy evicted tokens; clear and prefill again");
    if (n == 0) {
        clear();
        return status::ok();
    }
    if (n == n_past_) return status::ok();
    kv_->truncate(0, n);
    attn_->truncate(n);
    policy_->truncate(0, n);
    n_past_ = n;
    return status::ok();
}

} // namespace lc
