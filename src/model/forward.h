// The forward pass of one batch of tokens through a model, on the CPU. Model code describes the computation;
// the ops live in backend/cpu and the attention in attn/.
#pragma once

#include <cstdint>
#include <vector>

#include "attn/attention.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "longctx/status.h"
#include "model/model.h"

namespace lc {

// Reusable activation buffers of one context (grown on demand).
struct forward_scratch {
    std::vector<float>   x, xn, q, k, v, attn, tmp, gate, up, norm_out;
    std::vector<int64_t> pos, slot0;
    std::vector<uint8_t> mm;
};

// Time spent per part of the forward pass, accumulated over calls (seconds).
struct forward_timings {
    double attn_s       = 0.0;
    double attn_index_s = 0.0; // of attn_s: building sparse prefill plans (index estimation)
    double attn_swa_s   = 0.0; // of attn_s: sliding-window layers (always windowed dense)
    double attn_stats_s = 0.0; // of attn_s: column sums of the attention probabilities for a KV policy
    double matmul_s     = 0.0;
    double other_s      = 0.0;
    // Prefill attention in the layers a sparse method may apply to (all but sliding-window layers): causal
    // (query, key) pairs, and how many of them the attention computed (equal under dense attention).
    int64_t attn_pairs_causal   = 0;
    int64_t attn_pairs_computed = 0;
    // Decode steps (single-token calls) in the layers a sparse decode method may apply to (all but sliding-window
    // layers): calls, those that ran a sparse decode plan, keys the queries could see (summed over query heads)
    // and keys they attended, bytes the selection read and K/V bytes the attention read (dense: each row once per
    // KV head; sparse: once per query head and key), and the selection time (part of attn_s).
    int64_t decode_tokens       = 0; // single-token decode() calls of the context
    int64_t decode_calls        = 0;
    int64_t decode_sparse_calls = 0;
    int64_t decode_keys_total   = 0;
    int64_t decode_keys_touched = 0;
    int64_t decode_bytes_select = 0;
    int64_t decode_bytes_attn   = 0;
    double  decode_select_s     = 0.0;
    // Fraction of the visible keys decode attended (1 when none were counted).
    double decode_keys_fraction() const {
        return decode_keys_total > 0 ? double(decode_keys_touched) / double(decode_keys_total) : 1.0;
    }
    // Fraction of causal pairs computed (1 when none were counted).
    double density() const { return attn_pairs_causal > 0 ? double(attn_pairs_computed) / attn_pairs_causal : 1.0; }
};

// One run of consecutive tokens of one sequence within a forward batch.
struct forward_seq {
    int         seq      = 0;       // KV-cache sequence
    int64_t     n        = 0;       // tokens (> 0)
    int64_t     pos0     = 0;       // position of the first (RoPE)
    int64_t     n_logits = 0;       // logits wanted for its last n_logits tokens (<= n)
    attention * attn     = nullptr; // its attention methods; nullptr: dense attention
};

// Runs a batch of tokens through the model: the runs of `seqs` one after another in `tokens`, each at its
// positions and appending its K/V after each layer's last cache slot of its sequence (equal to pos0 unless a KV
// policy compacted the layer). The products run once over every token of the batch (batched decode: one token of
// each of several sequences); attention runs per sequence. Sequences must be distinct.
// logits: the wanted rows of every run in order ([sum n_logits][n_vocab]).
// On error (RESOURCE_EXHAUSTED: the cache has no pages left) the caller rolls the cache back.
// Dispatches on the model's architecture (llama and qwen2: arch-llama.cpp; gemma3: arch-gemma3.cpp).
status forward_batch(const model & m, kv_cache & kv, const int32_t * tokens, const std::vector<forward_seq> & seqs,
                     float * logits, thread_pool & pool, forward_scratch & s, forward_timings * timings = nullptr);

// One sequence: tokens[0..n) at positions pos0.., logits of the last n_logits.
status forward_batch(const model & m, kv_cache & kv, int seq, const int32_t * tokens, int64_t n, int64_t pos0,
                     int64_t n_logits, float * logits, thread_pool & pool, forward_scratch & s,
                     forward_timings * timings = nullptr, attention * attn = nullptr);

// The per-architecture passes forward_batch() dispatches to; same contract.
status forward_batch_llama(const model & m, kv_cache & kv, const int32_t * tokens,
                           const std::vector<forward_seq> & seqs, float * logits, thread_pool & pool,
                           forward_scratch & s, forward_timings & timings);
status forward_batch_gemma3(const model & m, kv_cache & kv, const int32_t * tokens,
                            const std::vector<forward_seq> & seqs, float * logits, thread_pool & pool,
                            forward_scratch & s, forward_timings & timings);

} // namespace lc
