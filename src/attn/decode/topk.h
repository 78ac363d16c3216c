// Exact top-k decoding (METHODS.md sec. 1.4), the oracle selection: every key's exact score q . k is computed,
// the k highest per query head are attended (plus the always-dense part, none by default). It reads the whole
// key cache to select, so it saves only the softmax-V part: an accuracy reference for Loki, Quest and MagicPIG,
// not a speed-up.
#pragma once

#include <memory>

#include "attn/decode/decode-method.h"
#include "model/model.h"

namespace lc {

result<std::unique_ptr<decode_method>> topk_decode_create(const model_hparams & hp, const attn_config & c);

// Exact scores of every key: s [n_head][kv.n_kv] = scale * q_h . k_t (f32 from fp16 keys; each key row is read
// once for all query heads of its group). Threads over KV heads and key ranges.
void decode_scores_exact(const float * q, int n_head, const kv_view & kv, float scale, float * s, thread_pool & pool);

// Scalar reference of decode_scores_exact (double accumulation).
void decode_scores_exact_ref(const float * q, int n_head, const kv_view & kv, float scale, float * s);

} // namespace lc
