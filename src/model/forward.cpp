// forward_batch(): dispatch on the model's architecture.
#include "model/forward.h"

#include "core/log.h"

namespace lc {

status forward_batch(const model & m, kv_cache & kv, const int32_t * tokens, const std::vector<forward_seq> & seqs,
                     float * logits, thread_pool & pool, forward_scratch & s, forward_timings * timings) {
    forward_timings local;
    if (!timings) timings = &local;
    for (size_t i = 0; i < seqs.size(); ++i) {
        LC_ASSERT(seqs[i].n > 0 && seqs[i].n_logits >= 0 && seqs[i].n_logits <= seqs[i].n,
                  "forward: run %zu has %lld tokens and %lld logits", i, (long long)seqs[i].n,
                  (long long)seqs[i].n_logits);
        for (size_t j = 0; j < i; ++j)
            LC_ASSERT(seqs[j].seq != seqs[i].seq, "forward: sequence %d appears twice in one batch", seqs[i].seq);
    }
    if (seqs.empty()) return status::ok();
    for (const forward_seq & r : seqs) LC_RETURN_IF_ERROR(kv.reserve_append(r.seq, r.n));
    switch (m.hparams().arch) {
    case model_arch::GEMMA3:
        return forward_batch_gemma3(m, kv, tokens, seqs, logits, pool, s, *timings);
    case model_arch::LLAMA:
    case model_arch::QWEN2:
        break;
    }
    return forward_batch_llama(m, kv, tokens, seqs, logits, pool, s, *timings);
}

status forward_batch(const model & m, kv_cache & kv, int seq, const int32_t * tokens, int64_t n, int64_t pos0,
                     int64_t n_logits, float * logits, thread_pool & pool, forward_scratch & s,
                     forward_timings * timings, attention * attn) {
    return forward_batch(m, kv, tokens, {forward_seq{seq, n, pos0, n_logits, attn}}, logits, pool, s, timings);
}

} // namespace lc
