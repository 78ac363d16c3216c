// Scalar reference for the attention column sums (attn/attn-stats.h): brute force in double, each row's softmax
// computed from scratch, so the optimised kernels and the lse they are given are both checked against it.
#pragma once

#include <cstdint>

#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

// Same contract as attn_colsum(): adds (+=) to colsum[r * colsum_stride + j] the probability of key j summed over
// the queries (rows r per query head, or per KV head summing its group when per_kv_head). The probabilities use
// the lse this function computes itself, not the given one. lse (optional, may be nullptr): [n_q][n_head] natural
// log as attn_dense() returns it; the return value is max |lse - own lse| over all rows (0 when lse is nullptr).
// REQUIRES: kv.n_kv >= pos0 + n_q, n_head % kv.n_head_kv == 0.
double attn_colsum_ref(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                       const float * lse, bool per_kv_head, float * colsum, int64_t colsum_stride, thread_pool & pool,
                       int64_t window = 0);

} // namespace lc
