// MInference online index building (METHODS.md sec. 2.2): per query head, the keys each 64-query block attends,
// written into a prefill plan (attn/prefill-plan.h). Vertical-slash is estimated from the last 64 queries of
// the call against all keys so far; block-sparse from mean-pooled Q and K; A-shape is static. GQA: query head
// h reads KV head h / (n_head / n_head_kv); KV is never repeated. Each step is a separate function so that
// tests can hold it against a brute-force version.
#pragma once

#include <cstdint>
#include <vector>

#include "attn/prefill-plan.h"
#include "kv/kv-cache.h"

namespace lc {

constexpr int     vslash_last_q  = 64;  // queries the estimate uses
constexpr int64_t vslash_n_sink  = 30;  // first key columns always kept
constexpr int64_t vslash_n_local = 100; // diagonal offsets 0..99 always kept
constexpr int64_t vslash_v_min   = 30;
constexpr int64_t vslash_s_min   = 50;

// Vertical and slash scores of query head h: with the last nl = min(64, n_q) queries of the call (positions
// pos0 + n_q - nl ..) against keys 0..N-1 (N = pos0 + n_q), A = softmax(scale * q k^T) per row (f32; causal
// inside the corner: row r sees keys <= its position), vertical[j] = sum_r A[r, j] for j < N,
// slash[o] = sum_r A[r, pos_r - o] for offsets 0 <= o < N (only diagonals a row reaches contribute).
// q: [n_q][n_head][head_dim] f32 (RoPE'd, as attention sees it). scratch is grown as needed.
void vslash_estimate(const float * q, int64_t n_q, int64_t pos0, int n_head, int h, const kv_view & kv, float scale,
                     std::vector<float> & vertical, std::vector<float> & slash, std::vector<float> & scratch);

// Top v columns and top s offsets of the scores above, with the first 30 columns and offsets 0..99 forced in
// and v, s clamped to [30, N] and [50, N]. Ties go to the lower index. cols: ascending; offsets: descending.
void vslash_select(const std::vector<float> & vertical, const std::vector<float> & slash, int64_t n_keys, int64_t v,
                   int64_t s, std::vector<int32_t> & cols, std::vector<int32_t> & offsets);

// Writes head h's items: for query block [p0, p1] each offset o adds the key range [p0 - o, p1 - o] (clipped to
// >= 0; ranges merged), then every column <= p1 outside those ranges. REQUIRES: plan.reset() done, offsets
// descending, cols ascending.
void vslash_plan_head(const std::vector<int32_t> & cols, const std::vector<int32_t> & offsets, prefill_plan & plan,
                      int h);

// Block-sparse: Q mean-pooled over each 64-query block of the call, K over each aligned 64-key block
// (t in [64 kb, 64 kb + 64) ∩ [0, N)); score Q̂ · K̂ (unscaled: the order is all that matters); key block kb is
// causal for query block b when 64 kb <= its last query. Keeps the top k_b causal blocks (ties: lower kb),
// clipped to the number of causal blocks, ascending. blocks: [n_qblk] lists.
void block_estimate(const float * q, int64_t n_q, int64_t pos0, int n_head, int h, const kv_view & kv, int64_t k_b,
                    std::vector<std::vector<int32_t>> & blocks, std::vector<float> & scratch);
// Writes head h's items from those block lists: ranges [64 kb, min(64 kb + 64, p1 + 1)).
void block_plan_head(const std::vector<std::vector<int32_t>> & blocks, prefill_plan & plan, int h);

// A-shape: each query block sees keys [0, n_init) and its local band [p0 - n_local + 1, p1] (at block
// granularity: every query sees at least its last n_local keys, at most n_local + 63).
void a_shape_plan_head(int64_t n_init, int64_t n_local, prefill_plan & plan, int h);

// Oracle (an upper bound for analysis, not a method to run for speed): for each 64-query block of the call, the
// exact attention probabilities of its queries against every causal key (as vslash_estimate computes them for the
// last 64 queries), summed per key column; the block keeps its ceil(fraction * n) heaviest columns, n = its last
// query's position + 1 (ties: the lower column), written as ranges. No plan in this format that computes as
// many pairs for the block captures more of its summed attention mass, so it bounds what any vertical-slash,
// block-sparse or A-shape index can reach at that density. Costs a dense pass of scores on top of the attention.
void oracle_plan_head(const float * q, int64_t n_q, int64_t pos0, int n_head, int h, const kv_view & kv, float scale,
                      double fraction, prefill_plan & plan, std::vector<float> & mass, std::vector<float> & slash,
                      std::vector<float> & scratch, std::vector<int32_t> & cols);

} // namespace lc
