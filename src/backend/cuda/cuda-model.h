// The whole forward pass of a model on one NVIDIA GPU: bf16 weights (dequantized from the GGUF at load, or
// random of a real model's shape: "synthetic"), a bf16 paged KV cache on the device, cuBLASLt GEMMs, the fused
// ops of ops.cuh and the attention kernels (attn-prefill.cuh, attn-decode.cuh); sampling on the device (greedy, or
// the sampler chain of sampling.cuh) and decode steps replayed from a CUDA graph. The same computation as
// arch-llama.cpp / arch-gemma3.cpp, op by op.
// This header includes no CUDA header (STYLE.md §1): the runtime may include it wherever LC_HAVE_CUDA is set.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "longctx/status.h"
#include "attn/attn-config.h"
#include "attn/minference/head-config.h"
#include "model/model.h"

namespace lc::cuda {

// Sparse decode methods the GPU runs (attn_config's decode_kind less MagicPIG).
enum class decode_method_gpu { DENSE, TOPK, QUEST, LOKI };

struct cuda_model_options {
    int64_t n_ctx    = 8192; // KV cache capacity in tokens (one sequence)
    int64_t n_ubatch = 4096; // prefill runs in chunks of at most this many tokens (bounds activation memory)
    bool    graphs   = true; // replay single-token decode steps from a CUDA graph
    int     device   = 0;
    // MInference sparse prefill (METHODS.md sec. 2.2) in the full-attention layers: each query head's pattern and
    // budgets, [n_layer][n_head] (empty: dense), under prefill_budget (head_budget_effective, per chunk). Per prefill chunk and layer, the index
    // of every head (vertical-slash from the chunk's last 64 queries, block-sparse from pooled Q and K, A-shape
    // static), then the sparse kernel over the plan (minference_attention_gpu in vslash-index.cuh). Chunks that end
    // before sparse_min_len tokens, sliding-window layers and decode steps stay dense.
    std::vector<head_budget> prefill_heads;
    lc::prefill_budget       prefill_budget;
    int64_t                  sparse_min_len = 4096;
    // A layer whose plan needs more 64-key steps than this share of the dense kernel's tiles runs the dense kernel
    // instead (0.5: where dense is the faster on the H100; >= 1: always sparse).
    float prefill_dense_ratio = 0.5f;
    // Prefill layer by layer over the whole prompt instead of chunk by chunk through every layer: all layers share
    // one KV pool, so a prompt whose cache does not fit the GPU (Llama-3-8B at 1M tokens: 137 GB of bf16 KV) still
    // prefills, for its first token (TTFT). The hidden states of the whole prompt stay on the device (n_ctx x n_embd
    // f32). One prompt from position 0, the last token's logits only; the sequence cannot continue (clear() to start
    // over). Not with sparse decode.
    bool layer_major = false;
    // Sparse decode in the full-attention layers (decode-select.cuh, attn-sparse-decode.cuh): the keys each query
    // head (or KV head, decode_kv_select) attends, selected on the device within the decode step's graph, as the
    // CPU methods select them (attn/decode/{topk,quest,loki}.h).
    decode_method_gpu decode           = decode_method_gpu::DENSE;
    double            decode_frac      = 0.25; // keys selected: this share of the cache ...
    int64_t           decode_tokens    = 0;    // ... or this many when > 0
    int               decode_sink      = 4;    // first and last tokens always attended
    int               decode_local     = 64;
    bool              decode_kv_select = false; // one selection per KV head for its query heads
    int               quest_page       = 16;    // tokens per Quest metadata page (divides 64)
    // Loki: the rank of each layer (0: the layer decodes densely) and the bases of the calibration sidecar
    // (sidecar_loki::basis: [n_layer][n_head_kv][head_dim][head_dim] f32, component j in column j).
    std::vector<int>   loki_d;
    std::vector<float> loki_basis;
};

// True when a CUDA device is present and usable (tests skip without one).
bool device_available();

// Hyper-parameters of a synthetic model of a real model's shape: "llama3-8b" (Llama 3 / 3.1 8B), "llama3-1b"
// (Llama 3.2 1B), "smollm2-135m", "qwen2.5-7b". INVALID_ARGUMENT for other names (the message lists them).
result<model_hparams> synthetic_hparams(const std::string & name);

// One draw of the sampler chain of runtime/sampling.h on the device (backend/cuda/sampling.cuh): the settings of
// a sampling_params and the uniform number the host sampler drew for it (sampler::next_uniform()).
struct device_sampling {
    float   temp  = 0.8f; // > 0; greedy decoding passes no device_sampling (argmax)
    int32_t top_k = 40;
    float   top_p = 0.95f;
    float   min_p = 0.05f;
    double  u     = 0.0; // in [0, 1)
};

// Thread-safety: one call at a time (one stream, one set of activation buffers).
class cuda_model {
  public:
    // Dequantizes every weight of m to bf16 (through the scalar dequantizers) and uploads it; allocates the KV
    // cache for opt.n_ctx tokens. RESOURCE_EXHAUSTED when the device memory is too small, UNSUPPORTED for shapes
    // the attention kernels lack.
    static result<std::unique_ptr<cuda_model>> upload(const model & m, const cuda_model_options & opt);
    // Random weights of the given shape, generated on the device (uniform, amplitude ~ 1/sqrt(n_in); norms 1).
    // Results are meaningless: for speed only; is_synthetic() is true and every report must say so.
    static result<std::unique_ptr<cuda_model>> synthetic(const model_hparams & hp, const cuda_model_options & opt,
                                                         uint64_t seed = 1);
    ~cuda_model();

    const model_hparams & hparams() const;
    bool                  is_synthetic() const;
    std::string           device_name() const;
    uint64_t              weight_bytes() const; // device bytes of weights
    uint64_t              kv_bytes() const;     // device bytes of the KV cache

    // Runs tokens[0..n) at positions pos0.. of the sequence, appending their K/V to the cache (opt.layer_major:
    // INVALID_ARGUMENT unless pos0 == 0 and n_logits <= 1).
    // REQUIRES-like checks (INVALID_ARGUMENT): pos0 == n_past() (the cache is append-only), pos0 + n <= n_ctx.
    // logits (optional, host): [n_logits][n_vocab] f32 for the last n_logits tokens (n_logits <= n).
    // next (optional, host): the token sampled on the device from the last token's logits: their argmax (greedy)
    // without `sampling`, else the draw of the sampler chain with sampling's settings and uniform number; only the
    // token id is copied back. n == 1 replays a CUDA graph of the decode step, sampler included (opt.graphs).
    status forward(const int32_t * tokens, int64_t n, int64_t pos0, int64_t n_logits, float * logits,
                   int32_t * next = nullptr, const device_sampling * sampling = nullptr);
    // Copies the last token's logits [n_vocab] of the last forward() to the host (for a caller that wants them
    // after sampling on the device). INVALID_ARGUMENT when that forward computed none (n_logits 0, no next).
    status last_logits(float * logits);

    int64_t n_past() const;
    // Sparse prefill so far (opt.prefill_heads): (chunk, layer) pairs it ran, and of those the ones whose plan was
    // dense enough that the dense kernel ran instead.
    struct prefill_counts {
        int64_t layers = 0, dense = 0;
    };
    prefill_counts sparse_prefill_stats() const;
    // Forgets the sequence (n_past = 0).
    void clear();
    // Keeps the first min(n, n_past()) tokens (the next forward() overwrites the rest of the cache).
    void truncate(int64_t n);
    // Waits for the device (for timing).
    void sync();

  private:
    cuda_model();
    struct impl;
    std::unique_ptr<impl> p_;
};

} // namespace lc::cuda
