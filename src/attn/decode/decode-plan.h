// Sparse decode plans (ARCHITECTURE.md sec. 2): for one decoding query per (sequence, query head), the keys it
// attends: always-dense ranges (sink, local, recent) plus a list of token indices, each with an optional
// log-weight added to its score (0 for exact selection such as top-k, Quest and Loki; -ln u_i for MagicPIG's
// importance sampling). Dense decoding is the plan with one range [0, n_kv).
#pragma once

#include <cstdint>
#include <vector>

#include "attn/prefill-plan.h"
#include "kv/kv-cache.h"

namespace lc {

struct decode_head_plan {
    std::vector<key_range> dense; // sorted, disjoint
    std::vector<int32_t>   idx;   // distinct token positions outside the dense ranges
    std::vector<float>     logw;  // empty (all 0) or one per idx, added to scale * q . k
};

// group: query heads per entry of heads. 1: one selection per query head (heads has n_head entries); G (the query
// heads per KV head, or a divisor of it): entry e is shared by query heads e * group .. e * group + group - 1, which
// read the same KV head, so the kernel reads each selected row once for all of them (the KV-head-level
// selection METHODS.md sec. 0 allows).
struct decode_plan {
    int                           n_head = 0;
    int                           group  = 1;
    std::vector<decode_head_plan> heads; // [n_head / group]
};

// Every head attends keys [0, n_kv).
void decode_plan_full(decode_plan & plan, int n_head, int64_t n_kv);

// Scalar reference executor (double): q [n_head][head_dim] f32, query head h reads KV head h / (n_head /
// n_head_kv) and the keys of entry h / group; z_j = scale * q . k_j (+ logw); o [n_head][head_dim] = sum softmax(z)_j
// v_j; lse (optional) [n_head] = ln sum exp(z_j). A head with no keys gets o = 0, lse = -inf. REQUIRES: every key <
// kv.n_kv.
void attn_decode_plan_ref(const decode_plan & plan, const float * q, const kv_view & kv, float scale, float * o,
                          float * lse);

} // namespace lc
