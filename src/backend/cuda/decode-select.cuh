// Sparse decode selection on the GPU (the CPU methods are attn/decode/{loki,quest,topk}.h): per-token or per-page
// scores, the KV-head-level group scores of decode_group_scores(), a top-k per (sequence, entry) and the device
// decode plan (attn-sparse-decode.cuh) with the always-dense part (sinks, local window; Quest's newest page).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "backend/cuda/attn-sparse-decode.cuh"
#include "backend/cuda/kv-paged.cuh"
#include "core/fp16.h"
#include "longctx/status.h"

namespace lc::cuda {

// The batch a selector plans for. Device pointers: q [n_seq][n_head][head_dim] bf16 (post-RoPE), the paged cache
// of attn_decode_args (k_pool, pages [n_seq][pages_stride]), n_kv [n_seq] int32 (tokens of each sequence, the
// query's own included). Host values: n_kv_max >= every n_kv; the budget is decode_budget's (attn-config.h):
// budget_tokens > 0 selects that many keys, else ceil(budget_frac * n_kv), at least 1, at most n_kv; n_sink and
// n_local as decode_params::sink()/local(); group: query heads per selection (1, or n_head / n_head_kv for one
// selection per KV head as decode_params::kv_select).
struct decode_select_args {
    const bf16_t *  q             = nullptr;
    int             n_seq         = 0;
    int             n_head        = 0;
    int             n_head_kv     = 0;
    int             head_dim      = 0;
    const bf16_t *  k_pool        = nullptr;
    const int32_t * pages         = nullptr;
    int64_t         pages_stride  = 0;
    const int32_t * n_kv          = nullptr;
    int64_t         n_kv_max      = 0;
    int             group         = 1;
    int             n_sink        = 4;
    int             n_local       = 64;
    double          budget_frac   = 0.25;
    int64_t         budget_tokens = 0;
    float           scale         = 0; // exact top-k scores are scale * q . k (as the CPU's)
    bool            loki_separate = false; // Loki: always the separate score, group-key and top-k kernels (for
                                           // measurements; the same selection)
    bool            loki_pipe     = false; // Loki above batch 1: the whole selection in one persistent launch
                                           // (measured slower than the default; for measurements)
};

// Scratch of the selectors, grown on demand (device allocations; synchronous when they grow).
struct decode_select_workspace {
    float *    scores = nullptr;  // [n_seq][n_head][n_items] per-head scores
    uint32_t * keys   = nullptr;  // [n_list][n_items] order keys of the selection scores (0: not eligible)
    uint32_t * zeroed = nullptr;  // head maxima, candidate counts (cleared each call)
    uint32_t * hist   = nullptr;  // [n_list][512] coarse and fine key histograms (left cleared by each call)
    uint64_t * cand   = nullptr;  // [n_list][cand_cap] candidates of the threshold bin
    int32_t *  chunk  = nullptr;  // [n_list][n_chunks] selected tokens per chunk
    uint32_t * info   = nullptr;  // [n_list][4] threshold of each list
    float *    qrot   = nullptr;  // [n_seq][n_head][d_pad] Loki's rotated queries
    size_t     cap[8] = {};
    decode_select_workspace() = default;
    decode_select_workspace(const decode_select_workspace &) = delete;
    decode_select_workspace & operator=(const decode_select_workspace &) = delete;
    ~decode_select_workspace();
};

// Loki's low-rank key store (loki.h) on the device, kept beside the paged cache in the same pages:
// keys [n_pages_total][n_head_kv][d_pad / 8][64][8] fp16 holds the first d_pad rotated dims of each key (k P[:, :d],
// zero past d), so that a warp reading one 8-dim chunk of 32 tokens reads 512 contiguous bytes;
// proj [n_head_kv][head_dim][d_pad] f32 is P[:, :d] zero-padded (the CPU's layout).
struct loki_store_gpu {
    fp16_t *      keys          = nullptr;
    const float * proj          = nullptr;
    int           d_pad         = 0; // multiple of 8, <= head_dim
    int64_t       n_pages_total = 0;
};

// Rotates the keys of tokens [t0, n_kv[s]) of every sequence into the store (whole 64-token pages: rows of the
// page before t0 are rewritten with the same values).
status loki_take_in_gpu(const decode_select_args & a, const loki_store_gpu & st, int64_t t0, cudaStream_t stream);

// Loki: approximate scores q P[:, :d] . K' of every key (unscaled, as the CPU), top-k per list, plan.
status loki_select_gpu(const decode_select_args & a, const loki_store_gpu & st, decode_select_workspace & ws,
                       decode_plan_buf & plan, cudaStream_t stream);

// Quest's page bounds (quest.h) on the device: bounds [n_pages_total][n_head_kv][64 / P][2][head_dim] bf16, the
// channel-wise max then min of each P-token metadata page (exact in bf16: the keys are bf16). P divides 64.
struct quest_store_gpu {
    bf16_t * bounds        = nullptr;
    int      page          = 16;
    int64_t  n_pages_total = 0;
};

// Bounds of the full metadata pages holding tokens [t0, n_kv[s]) of every sequence.
status quest_take_in_gpu(const decode_select_args & a, const quest_store_gpu & st, int64_t t0, cudaStream_t stream);

// Quest: upper bounds sum_c max(q_c kmax_c, q_c kmin_c) of each full page, the ceil(k / P) best pages per list,
// plan: the dense part and the newest incomplete page as ranges, the selected pages' other tokens as indices.
status quest_select_gpu(const decode_select_args & a, const quest_store_gpu & st, decode_select_workspace & ws,
                        decode_plan_buf & plan, cudaStream_t stream);

// Exact top-k: scale * q . k of every key (reads all of K), top-k per list, plan.
status topk_select_gpu(const decode_select_args & a, decode_select_workspace & ws, decode_plan_buf & plan,
                       cudaStream_t stream);

// The top-k and plan stage alone, on given per-head scores [n_seq][n_head][n_items_stride] f32 (device) of
// tokens (page = 1) or of metadata pages of `page` tokens: group scores as decode_group_scores() when
// a.group > 1, the k highest per list outside the dense part (ties to the lower position, NaN last; the CPU
// decode_topk()), plan. Scores past each sequence's item count are not read.
status decode_topk_plan_gpu(const decode_select_args & a, const float * scores, int64_t n_items_stride, int page,
                            decode_select_workspace & ws, decode_plan_buf & plan, cudaStream_t stream);

// The bound on range tokens + indices of any list of a plan these selectors write (decode_plan_dev::n_rows_max).
int64_t decode_select_rows_max(const decode_select_args & a, int page);

} // namespace lc::cuda
