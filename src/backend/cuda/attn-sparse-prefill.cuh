// Sparse prefill attention on the GPU: executes any prefill plan (attn/prefill-plan.h: per query head and
// 64-query block, merged key ranges plus single key columns) over the paged bf16 KV cache, with the online-softmax
// tile loop of the dense mma.sync kernel (attn-prefill.cu) or, on Hopper, wgmma, emitting (o, lse). Ranges are
// walked 64 keys at a time (any alignment: each key row is addressed through the page table), then the columns
// gathered 64 at a time.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "attn/prefill-plan.h"
#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

// A prefill plan on the device, all heads flattened: item i = h * n_qblk + b (b: 64-query block).
// Its ranges are ranges[range_off[i] .. range_off[i+1]) ({begin, end} key positions), its columns
// cols[col_off[i] .. col_off[i+1]); same invariants as prefill_head_plan (sorted, merged, disjoint).
struct prefill_plan_dev {
    int64_t         n_q       = 0;
    int64_t         pos0      = 0;
    int             n_head    = 0;
    const int64_t * range_off = nullptr; // [n_head * n_qblk + 1]
    const int32_t * ranges    = nullptr; // [n_ranges][2] {begin, end}
    const int64_t * col_off   = nullptr; // [n_head * n_qblk + 1]
    const int32_t * cols      = nullptr; // [n_cols]
    int64_t         n_qblk() const { return (n_q + prefill_qblock - 1) / prefill_qblock; }
};

// Owns the device arrays of a plan (grown, never shrunk, by the uploads and builders that fill it).
struct prefill_plan_buf {
    prefill_plan_dev view;
    int64_t *        range_off = nullptr;
    int32_t *        ranges    = nullptr;
    int64_t *        col_off   = nullptr;
    int32_t *        cols      = nullptr;
    int64_t          cap_items = 0, cap_ranges = 0, cap_cols = 0;
    int64_t          n_ranges = 0, n_cols = 0; // totals of the plan held
    int64_t *        counter  = nullptr;          // one device word for prefill_plan_steps_gpu
    prefill_plan_buf() = default;
    prefill_plan_buf(const prefill_plan_buf &) = delete;
    prefill_plan_buf & operator=(const prefill_plan_buf &) = delete;
    ~prefill_plan_buf();
    // Makes room (device allocations; synchronous) and sets view's shape and pointers.
    void reserve(int64_t n_q, int64_t pos0, int n_head, int64_t n_ranges, int64_t n_cols);
};

// Host <-> device copies (synchronous), for tests and for plans built on the CPU.
void prefill_plan_upload(const prefill_plan & plan, prefill_plan_buf & out);
void prefill_plan_download(const prefill_plan_buf & in, prefill_plan & plan);

// q: [n_q][n_head][head_dim] bf16; o: [n_q][n_head][head_dim] f32 (o_f32) or bf16; lse (optional): [n_q][n_head]
// f32, natural log. A query that sees no key gets o = 0, lse = -inf. Causality is applied on top of the plan.
// GQA: query head h reads KV head h / (n_head / n_head_kv), KV is not repeated. head_dim 64 or 128.
// Errors: UNSUPPORTED (head_dim, head ratio), INVALID_ARGUMENT (kv.n_kv < pos0 + n_q). Asynchronous on stream.
// REQUIRES: the plan is valid (prefill_plan_valid on its host form): no key past its block's last query.
enum class attn_sparse_prefill_kernel {
    AUTO,       // WGMMA_PAIR on sm_90 with head_dim 128, else MMA_SYNC
    MMA_SYNC,   // 4 warps, 64 query rows, mma.sync m16n8k16, cp.async double buffer
    WGMMA,      // Hopper (sm_90a, head_dim 128): one warpgroup, S as wgmma m64n64k16, P V as m64n128k16
    WGMMA_PAIR, // Hopper: two warpgroups serve two adjacent 64-query blocks, each K/V window of the union of the
                // two blocks' keys gathered once; each warpgroup masks the keys its block's plan does not hold;
                // software-pipelined consumers (S of a step issued before P V of the previous one)
    WGMMA_PAIR_SERIAL, // WGMMA_PAIR with each step's S, softmax and P V in turn (the first version, for comparison)
};
struct attn_sparse_prefill_args {
    const bf16_t *   q = nullptr;
    prefill_plan_dev plan;
    attn_kv_paged    kv;
    float            scale = 0;
    void *           o     = nullptr;
    bool             o_f32 = true;
    float *          lse   = nullptr;
    attn_sparse_prefill_kernel kernel = attn_sparse_prefill_kernel::AUTO;
};

status attn_sparse_prefill(const attn_sparse_prefill_args & a, cudaStream_t stream);

// Work of a plan in 64-key steps: `sparse`, the steps attn_sparse_prefill walks (each range in windows of 64 keys,
// then the columns 64 at a time, summed over all items); `dense`, the 64x64 causal tiles a dense kernel visits for
// the same queries (every key up to each block's last query). Their ratio predicts the sparse kernel's time against
// the dense one. Counts on the device and synchronizes the stream once.
struct prefill_plan_steps {
    int64_t sparse = 0;
    int64_t dense  = 0;
};
prefill_plan_steps prefill_plan_steps_gpu(prefill_plan_buf & plan, cudaStream_t stream);

} // namespace lc::cuda
