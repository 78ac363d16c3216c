// Partial attention states and their merge by log-sum-exp. A state over a key set K for one query row is
// (o, lse): o = sum_{k in K} softmax weight * v_k normalised over K, lse = ln sum_{k in K} exp(score_k);
// an empty K is (o = 0, lse = -inf). Merging the states of two disjoint key sets gives the state of their
// union; the merge is commutative and associative (up to rounding). Used by split-K and the sparse methods.
#pragma once

#include <cstdint>

namespace lc {

// (o, lse) = merge((o1, lse1), (o2, lse2)). o1, o2, o: [head_dim] f32; o may alias o1 or o2.
void attn_state_merge(const float * o1, float lse1, const float * o2, float lse2, int head_dim, float * o, float * lse);

// In place: (o_acc, lse_acc) = merge((o_acc, lse_acc), (o2, lse2)).
inline void attn_state_merge_into(float * o_acc, float * lse_acc, const float * o2, float lse2, int head_dim) {
    attn_state_merge(o_acc, *lse_acc, o2, lse2, head_dim, o_acc, lse_acc);
}

// Merges n_part states per row: o_parts: [n_part][n_rows][head_dim], lse_parts: [n_part][n_rows]
// -> o: [n_rows][head_dim], lse: [n_rows] (lse may be nullptr). Rows whose parts are all empty get o = 0,
// lse = -inf.
void attn_state_merge_parts(const float * o_parts, const float * lse_parts, int n_part, int64_t n_rows, int head_dim,
                            float * o, float * lse);

} // namespace lc
