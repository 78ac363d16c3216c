// Per-layer fidelity of a method's attention to dense attention given the same inputs (METHODS.md sec. 6):
// an attention observer on the method's context recomputes dense attention (attn_dense) on the very queries and
// cache each call saw, for a sample of 64-query blocks, and measures the attention-mass recall of the call's
// sparse plan and the relative error of its output. Layers with a sliding window are skipped (always dense).
//
// Definitions, per layer without a window, over the sampled query blocks of its prefill calls (n_q > 1):
//   recall(i, h) = sum over keys k of the plan's item (h, block of i) of p_dense(i, h, k), the share of the dense
//                  softmax mass of row (query i, head h) on the (query, key) pairs the plan computed; 1 for a
//                  dense call. p_dense is recomputed from q . k and the dense lse (attn_colsum per block: no N x N).
//   recall_mean  = mean of recall(i, h) over sampled rows and heads; recall_min = the smallest mean over one
//                  (head, 64-query block) item.
//   rel_err      = ||o_method - o_dense||_2 / ||o_dense||_2 over all sampled rows and heads of the layer, o_dense
//                  from attn_dense on the same q and KV view. It is the attention's own error given identical
//                  layer inputs, not the drift accumulated through earlier layers (that shows in KL and top-1).
// Decode steps (n_q = 1) add decode_rel_err the same way (every step, no sampling) and decode_recall: per head the
// dense softmax mass on the keys of the step's decode plan (its dense ranges and selected tokens; 1 for a dense
// step), averaged over heads and steps. Under a KV policy the reference is dense attention over the cache the
// context holds, so eviction loss is not in these numbers.
// Sampling: query block b of a call at positions pos0.. is measured when (pos0 / 64 + b) % stride == stride - 1,
// i.e. every stride-th block of the document whatever the chunking; cost per sampled block is one dense attention
// and one column-sum pass over its keys (about 1.5 dense attentions of the block).
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "attn/attention.h"

namespace lc::eval {

// Sums over one layer's calls.
struct layer_fidelity {
    int     il          = 0;
    int64_t n_rows      = 0; // sampled prefill query rows (each over all heads)
    int64_t n_row_heads = 0; // sampled (row, head) pairs
    double  recall_sum  = 0; // sum over sampled rows and heads of recall(i, h)
    double  recall_min  = 1; // min over sampled (head, query block) items of the item's mean recall
    double  err_sq      = 0; // sum of (o_method - o_dense)^2 over sampled rows
    double  ref_sq      = 0; // sum of o_dense^2 over the same
    int64_t n_decode    = 0; // decode steps
    double  dec_err_sq  = 0; // the same sums over decode steps
    double  dec_ref_sq  = 0;
    double  dec_recall_sum = 0; // sum over decode steps of the mean over heads of the plan's dense mass

    double recall_mean() const;    // NaN without rows
    double rel_err() const;        // NaN without rows
    double decode_rel_err() const; // NaN without decode steps
    double decode_recall() const;  // NaN without decode steps
};

// Dense softmax mass of each query head on the keys of a decode plan: q [n_head][head_dim], lse [n_head] the dense
// row log-sum-exp over kv (attn_dense); returns the mean over heads (double precision dot products).
double decode_plan_mass(const decode_plan & plan, const float * q, const kv_view & kv, float scale,
                        const float * lse);

// The mass the plan's item (head h, query block b) covers: sum over its range keys and columns k of colsum[k].
// colsum: [>= plan.q_last(b) + 1] f32, column sums of the dense probabilities of the block's queries for head h
// (attn_colsum), so the result is the sum over the block's rows of recall(i, h).
double plan_item_mass(const prefill_plan & plan, int h, int64_t b, const float * colsum);

// The observer. Thread-safety: called on the owning context's thread; uses the context's pool.
class fidelity_observer : public attn_observer {
  public:
    // stride >= 1: measure every stride-th query block (1: all).
    fidelity_observer(int n_layer, int stride);
    void on_attention(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                      int64_t window, const prefill_plan * plan, const float * o, thread_pool & pool) override;
    void on_decode_plan(int il, const decode_plan & plan) override { dplan_ = &plan, dplan_layer_ = il; }

    // Layers with at least one measured call, by layer index.
    std::vector<layer_fidelity> layers() const;
    void                        clear();                             // a new document
    double                      seconds() const { return seconds_; } // time spent in on_attention since clear()
    int                         stride() const { return stride_; }

  private:
    int                         stride_;
    std::vector<layer_fidelity> layers_;
    std::vector<char>           seen_;
    std::vector<float>          o_dense_, lse_, colsum_;
    double                      seconds_ = 0;
    const decode_plan *         dplan_       = nullptr; // the current call's decode plan (on_decode_plan)
    int                         dplan_layer_ = -1;
};

// The record fields of a document's per-layer numbers:
//   "layers": [{"layer", "rows", "recall_mean", "recall_min", "rel_err", ["decode_steps", "decode_rel_err",
//   "decode_recall"]}...]
//   "attn_recall_mean", "attn_rel_err_mean": means over the layers with rows (unweighted);
//   "attn_recall_worst": {"layer", "value"} (lowest recall_mean), "attn_rel_err_worst": {"layer", "value"}
//   (highest rel_err); "attn_decode_rel_err_mean" and "attn_decode_recall_mean" with decode steps. Layers without rows are left out of the
//   prefill summaries. Empty object when no layer was measured.
nlohmann::json layer_fidelity_json(const std::vector<layer_fidelity> & layers);

} // namespace lc::eval
