// forward_batch(): dispatch on the model's architecture.
#include "model/forward.h"

namespace lc {

status forward_batch(const model & m, kv_cache & kv, int seq, const int32_t * tokens, int64_t n, int64_t pos0,
                     int64_t n_logits, float * logits, thread_pool & pool, forward_scratch & s,
                     forward_timings * timings, attention * attn) {
    forward_timings local;
    if (!timings) timings = &local;
    switch (m.hparams().arch) {
    case model_arch::GEMMA3:
        return forward_batch_gemma3(m, kv, seq, tokens, n, pos0, n_logits, logits, pool, s, timings, attn);
    case model_arch::LLAMA:
    case model_arch::QWEN2:
        break;
    }
    return forward_batch_llama(m, kv, seq, tokens, n, pos0, n_logits, logits, pool, s, timings, attn);
}

} // namespace lc
