// Scalar reference for dense causal attention over the paged fp16 KV cache: full softmax in double, one
// query row at a time (O(n_kv) memory per row). The optimised kernels are tested against it.
#pragma once

#include <cstdint>
#include <functional>

#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

// Same contract as attn_dense() (attn/attn-dense.h): q: [n_q][n_head][head_dim] f32; query i has position
// pos0 + i and sees keys 0..pos0+i (window > 0: only keys j with pos0 + i - window < j); o: [n_q][n_head][head_dim]
// f32; lse (optional): [n_q][n_head].
// REQUIRES: kv.n_kv >= pos0 + n_q, n_head % kv.n_head_kv == 0.
void attn_dense_ref(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale, float * o,
                    float * lse, thread_pool & pool, int64_t window = 0);

// Attention under an arbitrary mask: query i (position pos0 + i) of query head h sees key t iff t <= pos0 + i and
// visible(h, i, t). Rows that see no key get o = 0, lse = -inf. The reference for every sparse kernel.
using attn_visible_fn = std::function<bool(int h, int64_t i, int64_t t)>;
void attn_masked_ref(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                     const attn_visible_fn & visible, float * o, float * lse, thread_pool & pool);

} // namespace lc
