// The one CPU sparse prefill kernel: executes any prefill plan (prefill-plan.h) over the paged fp16 KV cache,
// tile by tile with an online softmax (the dense tile kernel's transposed layout, fed key ranges page by page
// and single columns gathered 64 at a time), producing (o, lse) like attn_dense().
#pragma once

#include <cstdint>

#include "attn/prefill-plan.h"
#include "core/cpu-features.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

// q: [plan.n_q][plan.n_head][head_dim] f32, RoPE'd, query i at position plan.pos0 + i. Query head h reads KV
// head h / (n_head / kv.n_head_kv) (GQA without repeating KV). o: [n_q][n_head][head_dim] f32; lse (optional):
// [n_q][n_head], natural log; a query that sees no key gets o = 0, lse = -inf.
// Items are (query head, 64-query block), scheduled dynamically, the blocks with the most keys first.
// REQUIRES: prefill_plan_valid(plan), kv.n_kv >= pos0 + n_q, n_head % kv.n_head_kv == 0.
void attn_sparse_prefill(const prefill_plan & plan, const float * q, const kv_view & kv, float scale, float * o,
                         float * lse, thread_pool & pool);
void attn_sparse_prefill_isa(cpu_isa isa, const prefill_plan & plan, const float * q, const kv_view & kv, float scale,
                             float * o, float * lse, thread_pool & pool);

} // namespace lc
