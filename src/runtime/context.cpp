// Inference context: chunked prefill and single-token decode over the paged KV cache.
#include "runtime/context.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "core/log.h"
#if LC_HAVE_CUDA
#include "attn/decode/loki.h"
#include "attn/minference/head-config.h"
#include "backend/cuda/cuda-model.h"
#include "calibrate/sidecar.h"
#endif

namespace lc {

#if LC_HAVE_CUDA
namespace {

// The GPU's sparse decode settings from the attention config (the CPU methods were created and checked before:
// for Loki that means the sidecar exists and has a basis for every full-attention layer).
status cuda_decode_options(const model & m, const attn_config & c, cuda::cuda_model_options & o) {
    switch (c.decode) {
        case decode_kind::DENSE: return status::ok();
        case decode_kind::TOPK: o.decode = cuda::decode_method_gpu::TOPK; break;
        case decode_kind::QUEST: o.decode = cuda::decode_method_gpu::QUEST; break;
        case decode_kind::LOKI: o.decode = cuda::decode_method_gpu::LOKI; break;
        case decode_kind::MAGICPIG: return error(status_code::UNSUPPORTED, "context: MagicPIG decode on the GPU");
    }
    if (c.decode_keys.mode == decode_budget::kind::TOKENS)
        o.decode_tokens = std::max<int64_t>(1, int64_t(c.decode_keys.value));
    else
        o.decode_frac = c.decode_keys.value;
    o.decode_sink      = c.decode_opts.sink();
    o.decode_local     = c.decode_opts.local();
    o.decode_kv_select = c.decode_opts.kv_select;
    o.quest_page       = c.decode_opts.quest_page;
    if (o.decode != cuda::decode_method_gpu::LOKI) return status::ok();
    const model_hparams & hp   = m.hparams();
    std::string           path = c.sidecar == "auto" ? sidecar_path_for(m.file().path()) : c.sidecar;
    LC_ASSIGN_OR_RETURN(sidecar sc, sidecar_read(path, hp.n_layer, hp.n_head));
    if (!sc.loki) return error(status_code::NOT_FOUND, "--decode loki: sidecar %s has no Loki section", path.c_str());
    LC_ASSIGN_OR_RETURN(o.loki_d, loki_ranks(*sc.loki, hp.n_layer, c.decode_opts));
    o.loki_basis = sc.loki->basis;
    return status::ok();
}

} // namespace
#endif

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
    if (p.n_seq < 1 || p.n_seq > 4096)
        return error(status_code::INVALID_ARGUMENT, "context: %d sequences (-np) is out of range 1..4096", p.n_seq);
    std::unique_ptr<context> c(new context(m, n_threads));
    c->n_ctx_    = n_ctx;
    c->n_ubatch_ = p.n_ubatch;
    int64_t n_pages = 0; // the default: n_ctx tokens for every sequence
    const int64_t page_pair = int64_t(hp.n_head_kv) * hp.head_dim * kv_page_tokens * int64_t(sizeof(fp16_t)) * 2;
    if (p.kv_memory > 0) {
        n_pages = int64_t(p.kv_memory / size_t(page_pair));
        if (n_pages < hp.n_layer)
            return error(status_code::INVALID_ARGUMENT,
                         "context: --kv-memory %zu bytes is less than one page of %d tokens per layer (%lld bytes)",
                         p.kv_memory, kv_page_tokens, (long long)(page_pair * hp.n_layer));
    } else {
        n_pages = int64_t(hp.n_layer) * kv_cache::pages_for(n_ctx) * p.n_seq;
    }
    c->kv_ = std::make_unique<kv_cache>(hp.n_layer, hp.n_head_kv, hp.head_dim, n_ctx, p.n_seq, n_pages);
    c->seqs_.resize(size_t(p.n_seq));
    for (int seq = 0; seq < p.n_seq; ++seq) LC_RETURN_IF_ERROR(c->set_methods(seq, p.attn));
    if (p.cuda) {
#if LC_HAVE_CUDA
        // The GPU runs MInference's patterns (vertical-slash, block-sparse, A-shape, per head for minference);
        // the oracle bound, MagicPIG and the KV policies only on the CPU.
        if (p.n_seq != 1 || p.attn.prefill == prefill_method::ORACLE || p.attn.decode == decode_kind::MAGICPIG ||
            p.attn.kv != kv_method::FULL)
            return error(status_code::UNSUPPORTED,
                         "context: the GPU runs one sequence with dense, a-shape, vslash, block or minference prefill, "
                         "dense, top-k, Quest or Loki decode and a full KV cache so far (got %d sequences, %s)",
                         p.n_seq, attn_config_describe(p.attn).c_str());
        cuda::cuda_model_options o;
        o.n_ctx = n_ctx;
        LC_RETURN_IF_ERROR(cuda_decode_options(m, p.attn, o));
        if (p.attn.prefill != prefill_method::DENSE) {
            LC_ASSIGN_OR_RETURN(const minference_config heads, prefill_heads_for(m, p.attn));
            o.prefill_heads  = heads.heads;
            o.prefill_budget = p.attn.budget;
            o.sparse_min_len = p.attn.sparse_min_len;
        }
        LC_ASSIGN_OR_RETURN(std::unique_ptr<cuda::cuda_model> g, cuda::cuda_model::upload(m, o));
        LC_LOG_I("context: model on %s (%.1f MiB of bf16 weights, KV cache %.1f MiB for %lld tokens)",
                 g->device_name().c_str(), double(g->weight_bytes()) / (1 << 20), double(g->kv_bytes()) / (1 << 20),
                 (long long)n_ctx);
        c->cuda_.reset(g.release());
#else
        return error(status_code::UNSUPPORTED,
                     "context: this longctx was built without the CUDA backend; rebuild with -DLONGCTX_CUDA=ON");
#endif
    }
    return c;
}

void context::cuda_deleter::operator()(cuda::cuda_model * p) const {
#if LC_HAVE_CUDA
    delete p;
#else
    (void)p; // never set without the backend
#endif
}

context::~context() = default;

status context::check_seq(int seq) const {
    if (seq < 0 || seq >= n_seq())
        return error(status_code::INVALID_ARGUMENT, "context: sequence %d out of range; the context holds %d", seq,
                     n_seq());
    return status::ok();
}

status context::set_methods(int seq, const attn_config & c) {
    LC_RETURN_IF_ERROR(check_seq(seq));
    seq_state & S = seqs_[size_t(seq)];
    if (S.n_past > 0)
        return error(status_code::INVALID_ARGUMENT,
                     "context: the methods of sequence %d change only while it is empty (it holds %lld tokens)", seq,
                     (long long)S.n_past);
    std::unique_ptr<attention> a;
    std::unique_ptr<kv_policy> pol;
    LC_ASSIGN_OR_RETURN(a, attention::create(model_, c));
    LC_ASSIGN_OR_RETURN(pol, kv_policy_create(model_, c, n_seq()));
    a->set_stats_sink(pol->stats());
    S.attn   = std::move(a);
    S.policy = std::move(pol);
    return status::ok();
}

void context::roll_back(int seq, const std::vector<int64_t> & slots) {
    for (int il = 0; il < model_.hparams().n_layer; ++il) kv_->finish_keep(il, seq, slots[size_t(il)]);
}

status context::decode_seq(int seq, const std::vector<int32_t> & tokens, bool all_logits,
                           const progress_fn & progress, bool prompt_end) {
    LC_RETURN_IF_ERROR(check_seq(seq));
    seq_state &   S = seqs_[size_t(seq)];
    const int64_t n = int64_t(tokens.size());
    if (n == 0) return error(status_code::INVALID_ARGUMENT, "context: nothing to decode (0 tokens)");
    if (S.n_past + n > n_ctx_)
        return error(status_code::OUT_OF_RANGE,
                     "context: %lld tokens after %lld already in the context exceed -c %lld; raise -c (the model was "
                     "trained on %lld) or shorten the prompt",
                     (long long)n, (long long)S.n_past, (long long)n_ctx_, (long long)model_.hparams().n_ctx_train);
    const int64_t n_vocab = model_.hparams().n_vocab;
    S.logits.resize(size_t((all_logits ? n : 1) * n_vocab));
    if (cuda_) {
        // The argmax comes along (cheap); the logits stay on the device until logits_of() asks for them.
        int32_t next = -1;
        return decode_gpu(S, tokens, all_logits, progress, nullptr, &next);
    }
    S.attn->set_prompt_end(S.n_past + n);
    S.policy->begin(seq);
    std::vector<int64_t> slots(size_t(model_.hparams().n_layer));
    for (int64_t i = 0; i < n; i += n_ubatch_) {
        const int64_t nb   = std::min(n_ubatch_, n - i);
        const bool    last = i + nb == n;
        for (int il = 0; il < model_.hparams().n_layer; ++il) slots[size_t(il)] = kv_->n_slots(il, seq);
        S.attn->set_last_chunk(last);
        const int64_t n_out = all_logits ? nb : (last ? 1 : 0);
        float *       out   = all_logits ? S.logits.data() + i * n_vocab : S.logits.data();
        status st = forward_batch(model_, *kv_, seq, tokens.data() + i, nb, S.n_past, n_out, out, pool_, scratch_,
                                  &timings_, S.attn.get());
        if (!st.is_ok()) {
            // Drop what this chunk wrote (and reserved) in every layer; earlier chunks stay.
            roll_back(seq, slots);
            S.attn->truncate(S.n_past);
            return st;
        }
        S.n_past += nb;
        if (progress) progress(i + nb, n);
    }
    S.n_logits = all_logits ? n : 1;
    if (n == 1) timings_.decode_tokens += 1;
    if (n > 1 && !prompt_end) return status::ok();
    return n > 1 ? S.policy->on_prefill_end(*kv_, seq, S.n_past, *S.attn, pool_)
                 : S.policy->on_decode_step(*kv_, seq, S.n_past, *S.attn, pool_);
}

status context::decode_gpu(seq_state & S, const std::vector<int32_t> & tokens, bool all_logits,
                           const progress_fn & progress, sampler * smp, int32_t * next) {
#if LC_HAVE_CUDA
    const int64_t n = int64_t(tokens.size()), n_vocab = model_.hparams().n_vocab;
    // Chunks of at least 4096 tokens: the GPU wants large products; progress is reported per chunk.
    const int64_t chunk = std::max<int64_t>(n_ubatch_, 4096);
    S.logits_on_gpu     = false;
    for (int64_t i = 0; i < n; i += chunk) {
        const int64_t nb   = std::min(chunk, n - i);
        const bool    last = i + nb == n;
        if (all_logits) {
            LC_RETURN_IF_ERROR(cuda_->forward(tokens.data() + i, nb, S.n_past, nb, S.logits.data() + i * n_vocab));
        } else if (!last) {
            LC_RETURN_IF_ERROR(cuda_->forward(tokens.data() + i, nb, S.n_past, 0, nullptr));
        } else {
            // The last token's logits stay on the device (logits_of() copies them when asked); the token is sampled
            // there: the argmax, or smp's chain with the uniform number smp draws here (as its sample() would).
            cuda::device_sampling ds;
            const bool            draw = smp && !smp->params().greedy();
            if (draw) {
                const sampling_params & sp = smp->params();
                ds.temp                    = sp.temp;
                ds.top_k                   = sp.top_k;
                ds.top_p                   = sp.top_p;
                ds.min_p                   = sp.min_p;
                ds.u                       = smp->next_uniform();
            }
            int32_t tok = -1;
            LC_RETURN_IF_ERROR(cuda_->forward(tokens.data() + i, nb, S.n_past, 0, nullptr, &tok, draw ? &ds : nullptr));
            S.logits_on_gpu = true;
            if (next) *next = tok;
        }
        S.n_past += nb;
        if (progress) progress(i + nb, n);
    }
    S.n_logits = all_logits ? n : 1;
    if (n == 1) timings_.decode_tokens += 1;
    return status::ok();
#else
    (void)S, (void)tokens, (void)all_logits, (void)progress, (void)smp, (void)next;
    return error(status_code::INTERNAL, "context: no GPU");
#endif
}

result<int32_t> context::decode_sample(int seq, const std::vector<int32_t> & tokens, sampler & smp,
                                       const progress_fn & progress, bool prompt_end) {
    LC_RETURN_IF_ERROR(check_seq(seq));
    const int32_t n_vocab = int32_t(model_.hparams().n_vocab);
    if (!cuda_) {
        LC_RETURN_IF_ERROR(decode_seq(seq, tokens, false, progress, prompt_end));
        return smp.sample(logits_of(seq), n_vocab);
    }
    seq_state & S = seqs_[size_t(seq)];
    if (tokens.empty()) return error(status_code::INVALID_ARGUMENT, "context: nothing to decode (0 tokens)");
    if (S.n_past + int64_t(tokens.size()) > n_ctx_)
        return error(status_code::OUT_OF_RANGE,
                     "context: %zu tokens after %lld already in the context exceed -c %lld; raise -c or shorten the "
                     "prompt",
                     tokens.size(), (long long)S.n_past, (long long)n_ctx_);
    S.logits.resize(size_t(n_vocab));
    int32_t next = -1;
    LC_RETURN_IF_ERROR(decode_gpu(S, tokens, false, progress, &smp, &next));
    return next;
}

status context::decode_step(const std::vector<int> & seqs, const std::vector<int32_t> & tokens) {
    if (cuda_) {
        if (seqs.size() != 1 || tokens.size() != 1 || seqs[0] != 0)
            return error(status_code::UNSUPPORTED, "context: the GPU decodes one sequence (sequence 0)");
        return decode_seq(0, tokens);
    }
    if (seqs.size() != tokens.size())
        return error(status_code::INVALID_ARGUMENT, "context: %zu sequences but %zu tokens in a decode step",
                     seqs.size(), tokens.size());
    if (seqs.empty()) return error(status_code::INVALID_ARGUMENT, "context: nothing to decode (0 sequences)");
    std::vector<forward_seq> runs(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
        LC_RETURN_IF_ERROR(check_seq(seqs[i]));
        for (size_t j = 0; j < i; ++j)
            if (seqs[j] == seqs[i])
                return error(status_code::INVALID_ARGUMENT, "context: sequence %d twice in one decode step", seqs[i]);
        seq_state & S = seqs_[size_t(seqs[i])];
        if (S.n_past + 1 > n_ctx_)
            return error(status_code::OUT_OF_RANGE, "context: sequence %d is full (-c %lld tokens)", seqs[i],
                         (long long)n_ctx_);
        runs[i] = forward_seq{seqs[i], 1, S.n_past, 1, S.attn.get()};
    }
    const int     n_layer = model_.hparams().n_layer;
    const int64_t n_vocab = model_.hparams().n_vocab;
    std::vector<int64_t> slots(seqs.size() * size_t(n_layer));
    for (size_t i = 0; i < seqs.size(); ++i) {
        seq_state & S = seqs_[size_t(seqs[i])];
        S.attn->set_prompt_end(S.n_past + 1);
        S.attn->set_last_chunk(true);
        S.policy->begin(seqs[i]);
        for (int il = 0; il < n_layer; ++il) slots[i * size_t(n_layer) + size_t(il)] = kv_->n_slots(il, seqs[i]);
    }
    batch_logits_.resize(seqs.size() * size_t(n_vocab));
    status st = forward_batch(model_, *kv_, tokens.data(), runs, batch_logits_.data(), pool_, scratch_, &timings_);
    if (!st.is_ok()) {
        for (size_t i = 0; i < seqs.size(); ++i) {
            roll_back(seqs[i], std::vector<int64_t>(slots.begin() + std::ptrdiff_t(i * size_t(n_layer)),
                                                    slots.begin() + std::ptrdiff_t((i + 1) * size_t(n_layer))));
            seqs_[size_t(seqs[i])].attn->truncate(seqs_[size_t(seqs[i])].n_past);
        }
        return st;
    }
    timings_.decode_tokens += int64_t(seqs.size());
    status first = status::ok();
    for (size_t i = 0; i < seqs.size(); ++i) {
        seq_state & S = seqs_[size_t(seqs[i])];
        S.logits.assign(batch_logits_.begin() + std::ptrdiff_t(i * size_t(n_vocab)),
                        batch_logits_.begin() + std::ptrdiff_t((i + 1) * size_t(n_vocab)));
        S.n_logits = 1;
        S.n_past += 1;
        status pst = S.policy->on_decode_step(*kv_, seqs[i], S.n_past, *S.attn, pool_);
        if (!pst.is_ok() && first.is_ok()) first = pst;
    }
    return first;
}

const float * context::logits_of(int seq) const {
    const seq_state & S = seqs_[size_t(seq)];
    LC_ASSERT(S.n_logits > 0, "context: sequence %d has no logits yet", seq);
#if LC_HAVE_CUDA
    if (S.logits_on_gpu) {
        const status st = cuda_->last_logits(S.logits.data());
        LC_ASSERT(st.is_ok(), "context: %s", st.message().c_str());
        S.logits_on_gpu = false;
    }
#endif
    return S.logits.data() + (S.n_logits - 1) * model_.hparams().n_vocab;
}

const float * context::logits(int64_t i) const {
    const seq_state & S = seqs_[0];
    LC_ASSERT(i >= 0 && i < S.n_logits, "logits(%lld) of %lld", (long long)i, (long long)S.n_logits);
    if (S.logits_on_gpu) return logits_of(0); // n_logits is 1
    return S.logits.data() + i * model_.hparams().n_vocab;
}

size_t context::kv_bytes_held(int seq) const {
    size_t n = 0;
    for (int il = 0; il < kv_->n_layer(); ++il) n += size_t(kv_->n_slots(il, seq));
    return n * kv_->slot_bytes();
}

void context::clear(int seq) {
    seq_state & S = seqs_[size_t(seq)];
#if LC_HAVE_CUDA
    if (cuda_) cuda_->clear();
#endif
    kv_->clear(seq);
    S.attn->truncate(0);
    S.policy->truncate(seq, 0);
    S.n_past        = 0;
    S.n_logits      = 0;
    S.logits_on_gpu = false;
}

bool context::can_truncate(int seq, int64_t n) const {
    const seq_state & S = seqs_[size_t(seq)];
    if (n < 0 || n > S.n_past) return false;
    if (n == 0 || n == S.n_past) return true;
    if (S.policy->compressed(seq)) return false;
    // A trimmed sliding-window layer must still hold the window of the next query (position n sees keys past
    // n - n_swa).
    const model_hparams & hp = model_.hparams();
    for (int il = 0; il < hp.n_layer; ++il)
        if (S.policy->front(seq, il) > std::max<int64_t>(0, n - hp.n_swa + 1)) return false;
    return true;
}

status context::truncate(int seq, int64_t n) {
    LC_RETURN_IF_ERROR(check_seq(seq));
    seq_state & S = seqs_[size_t(seq)];
    if (!can_truncate(seq, n))
        return error(status_code::UNSUPPORTED, "context: cannot cut %lld tokens back to %lld: %s",
                     (long long)S.n_past, (long long)n,
                     n > S.n_past || n < 0 ? "out of range"
                                           : "the KV policy evicted tokens or a sliding window was trimmed past them; "
                                             "clear and prefill again");
    if (n == 0) {
        clear(seq);
        return status::ok();
    }
    if (n == S.n_past) return status::ok();
#if LC_HAVE_CUDA
    if (cuda_) cuda_->truncate(n);
#endif
    S.logits_on_gpu = false; // the device's logits row belongs to the dropped token (S.logits may be stale too)
    for (int il = 0; il < model_.hparams().n_layer; ++il)
        kv_->finish_keep(il, seq, std::min(kv_->n_slots(il, seq), n - S.policy->front(seq, il)));
    S.attn->truncate(n);
    S.policy->truncate(seq, n);
    S.n_past = n;
    return status::ok();
}

} // namespace lc
