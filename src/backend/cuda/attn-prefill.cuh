// Dense causal prefill attention on the GPU (flash-attention style: one pass over the keys with an online
// softmax, Dao et al. 2022/2023), reading K and V from the paged bf16 KV cache and emitting (o, lse) so the
// sparse methods can merge partial states (attn/attn-state.h).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

enum class attn_prefill_kernel {
    AUTO,          // WGMMA when the device is sm_90 and head_dim is 128, else MMA_SYNC
    MMA_SYNC,      // FlashAttention-2 style: 4 warps, 64 query rows, mma.sync m16n8k16, cp.async double buffer
    WGMMA,         // Hopper: TMA producer warpgroup + 2 consumer warpgroups (128 query rows), wgmma m64n128k16,
                   // softmax overlapped with the tensor cores within and across warpgroups, 3 stages
    WGMMA_OVERLAP, // the same with the overlap within each warpgroup only
    WGMMA_BASIC,   // the same with no overlap (S, softmax, P V in turn), 2 stages: the reference point
};

// Causal attention of n_q query rows against the paged cache: query i has position pos0 + i and sees keys
// 0..pos0+i. GQA: query head h reads KV head h / (n_head / n_head_kv).
//   q:   [n_q][n_head][head_dim] bf16 (device)
//   o:   [n_q][n_head][head_dim], f32 when o_f32 else bf16 (device)
//   lse: [n_q][n_head] f32, natural log of the softmax denominator of the scaled scores (device; optional)
// Softmax statistics and accumulation are f32. Supported: head_dim 64, 128, 256 (the wgmma kernels: 128; AUTO
// picks mma.sync for the others), n_head % n_head_kv == 0.
// Errors: UNSUPPORTED for other shapes, INVALID_ARGUMENT when kv.n_kv < pos0 + n_q or window < 0.
// Asynchronous on `stream`; launch errors abort (LC_CUDA_CHECK).
struct attn_prefill_args {
    const bf16_t * q      = nullptr;
    int64_t        n_q    = 0;
    int64_t        pos0   = 0;
    int            n_head = 0;
    attn_kv_paged  kv;
    float          scale  = 0;
    int64_t        window = 0; // > 0: sliding window, query p sees keys p - window < j <= p (attn_dense_ref's)
    void *         o      = nullptr;
    bool           o_f32  = true;
    float *        lse    = nullptr;
};

status attn_prefill(const attn_prefill_args & a, attn_prefill_kernel kernel, cudaStream_t stream);

} // namespace lc::cuda
