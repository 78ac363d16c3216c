// The CPU sparse decode kernel: executes a decode plan (dense ranges plus gathered positions with optional
// log-weights, per query head) for one decoding query and produces (o, lse) per head. Long key lists are split
// across threads (split-K) and merged by log-sum-exp, so one head with many keys still uses every thread.
#pragma once

#include "attn/decode/decode-plan.h"
#include "core/cpu-features.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

// q [n_head][head_dim] f32; query head h reads KV head h / (n_head / kv.n_head_kv) and the keys of plan entry
// h / plan.group (an entry shared by a group is read once for all its heads); o [n_head][head_dim];
// lse (optional) [n_head]. Same result as attn_decode_plan_ref up to f32 rounding. Keys in the plan may be any
// positions < kv.n_kv (no causal mask: a decode plan lists only visible keys).
// REQUIRES: plan.n_head % kv.n_head_kv == 0, head_dim % 16 == 0, every key < kv.n_kv.
void attn_sparse_decode(const decode_plan & plan, const float * q, const kv_view & kv, float scale, float * o,
                        float * lse, thread_pool & pool);

void attn_sparse_decode_isa(cpu_isa isa, const decode_plan & plan, const float * q, const kv_view & kv, float scale,
                            float * o, float * lse, thread_pool & pool);

} // namespace lc
