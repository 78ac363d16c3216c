// Sparse decode attention on the GPU: executes device decode plans (attn/decode/decode-plan.h on the device) --
// per (sequence, entry) a few dense key ranges plus a list of token positions with optional log-weights -- by
// split-K gather over the bf16 paged cache, emitting (o, lse) like the dense kernel (attn-decode.cuh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

// Ranges per list a device plan may hold (sink, local window, Quest's newest page; merged when they touch).
constexpr int decode_plan_max_ranges = 4;

// A device decode plan in ELL layout (fixed stride per list, counts beside). List l = seq * n_entry + e with
// n_entry = n_head / group: entry e is shared by query heads e * group .. e * group + group - 1, which read the
// same KV head, so each selected row is read once for all of them (group = n_head / n_head_kv: one selection per
// KV head; group = 1: one per query head). All pointers are device pointers.
//   ranges:   [n_list][decode_plan_max_ranges][2] int32 {begin, end}: sorted, disjoint; the first n_ranges[l] hold
//   n_ranges: [n_list] int32
//   idx:      [n_list][idx_stride] int32 token positions outside the ranges (distinct; any order; the selectors
//             write them ascending); the first n_idx[l] hold
//   n_idx:    [n_list] int32
//   logw:     [n_list][idx_stride] f32, added to scale * q . k of idx entries (optional: nullptr for all 0)
// n_rows_max: a bound on range tokens + n_idx of every list (sizes the splits; a host value, no sync needed).
struct decode_plan_dev {
    int             group      = 1;
    const int32_t * ranges     = nullptr;
    const int32_t * n_ranges   = nullptr;
    const int32_t * idx        = nullptr;
    const int32_t * n_idx      = nullptr;
    const float *   logw       = nullptr;
    int64_t         idx_stride = 0;
    int64_t         n_rows_max = 0;
};

// Device storage for plans, grown on demand (device allocations; synchronous when they grow).
struct decode_plan_buf {
    int32_t * ranges   = nullptr;
    int32_t * n_ranges = nullptr;
    int32_t * idx      = nullptr;
    int32_t * n_idx    = nullptr;
    float *   logw     = nullptr;
    int64_t   n_list = 0, idx_stride = 0;
    size_t    cap_lists = 0, cap_idx = 0, cap_logw = 0;
    decode_plan_buf() = default;
    decode_plan_buf(const decode_plan_buf &) = delete;
    decode_plan_buf & operator=(const decode_plan_buf &) = delete;
    ~decode_plan_buf();
    // Room for n_list lists of idx_stride indices (with_logw: log-weights too); keeps nothing of the old contents.
    void reserve(int64_t n_list, int64_t idx_stride, bool with_logw);
};

// The plan as the kernel reads it (logw only when with_logw).
decode_plan_dev decode_plan_view(const decode_plan_buf & b, int group, int64_t n_rows_max, bool with_logw);

// Host copy of one list of a device plan (tests, tools): ranges {begin, end} and indices (and log-weights when
// the plan has them).
struct decode_plan_host_list {
    std::vector<int32_t> ranges; // 2 per range
    std::vector<int32_t> idx;
    std::vector<float>   logw;
};
std::vector<decode_plan_host_list> decode_plan_download(const decode_plan_buf & b, int64_t n_list, bool with_logw);

// A batch of n_seq sequences, one query token each, attending the keys of a device plan. Pointers are device
// pointers; q, pools, pages, o, lse as in attn_decode_args (attn-decode.cuh).
//   q:   [n_seq][n_head][head_dim] bf16;  o: [n_seq][n_head][head_dim] f32 (o_f32) or bf16;  lse: [n_seq][n_head] f32
// A list with no keys gives o = 0, lse = -inf. REQUIRES: every planned key < that sequence's n_kv.
// Supported: head_dim 64, 128, 256; plan.group in 1..8 dividing n_head / n_head_kv. Asynchronous on `stream`.
struct attn_sparse_decode_args {
    const bf16_t *  q               = nullptr;
    int             n_seq           = 0;
    int             n_head          = 0;
    const bf16_t *  k_pool          = nullptr;
    const bf16_t *  v_pool          = nullptr;
    int             n_head_kv       = 0;
    int             head_dim        = 0;
    const int32_t * pages           = nullptr;
    int64_t         pages_stride    = 0;
    decode_plan_dev plan            = {};
    float           scale           = 0;
    void *          o               = nullptr;
    bool            o_f32           = true;
    float *         lse             = nullptr;
    void *          workspace       = nullptr;
    size_t          workspace_bytes = 0;
    int             n_split         = 0; // 0: chosen from the shape and the number of SMs
};

int    attn_sparse_decode_n_split(int n_seq, int n_head, int group, int head_dim, int64_t n_rows_max);
size_t attn_sparse_decode_workspace_bytes(int n_seq, int n_head, int head_dim, int n_split);

status attn_sparse_decode(const attn_sparse_decode_args & a, cudaStream_t stream);

} // namespace lc::cuda
