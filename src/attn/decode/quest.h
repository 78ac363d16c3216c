// Quest (METHODS.md sec. 1.5): query-aware page selection. The cache is cut into metadata pages of P tokens
// (--quest-page, 16); per page and channel the max and min of its keys are kept, computed when the page fills.
// A query scores each page by the upper bound sum_c max(q_c kmax_c, q_c kmin_c) of q . k inside it and attends
// the ceil(k / P) best pages, the newest incomplete page and the always-dense part. The first two layers stay
// dense.
#pragma once

#include <memory>

#include "attn/decode/decode-method.h"
#include "model/model.h"

namespace lc {

result<std::unique_ptr<decode_method>> quest_decode_create(const model_hparams & hp, const attn_config & c);

// Page bounds of keys [p * P, p * P + P) of KV head hk: kmax, kmin [head_dim] (f32).
void quest_page_bounds(const kv_view & kv, int hk, int64_t p, int P, float * kmax, float * kmin);

// Upper bounds of q . k (unscaled) for n_pages pages whose bounds are kmax/kmin [n_pages][D]: u [n_pages].
void quest_page_scores(const float * q, const float * kmax, const float * kmin, int64_t n_pages, int D, float * u);

} // namespace lc
