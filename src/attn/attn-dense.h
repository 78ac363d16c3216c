// Dense causal attention over the paged fp16 KV cache, producing the output and its log-sum-exp (flash-style:
// 64-key tiles against blocks of queries with an online softmax; never an N x N matrix).
#pragma once

#include <cstdint>

#include "core/cpu-features.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

constexpr int64_t attn_window_none = 0;

// q: [n_q][n_head][head_dim] f32, already RoPE'd; query i has position p = pos0 + i and sees keys 0..p, or with
// window > 0 (sliding-window layers) only keys j with p - window < j <= p (the last `window` keys). Tiles of
// keys outside every query's window are not read. window = attn_window_none (0): no window.
// GQA: query head h reads KV head h / (n_head / kv.n_head_kv).
// o: [n_q][n_head][head_dim] f32. lse (optional, may be nullptr): [n_q][n_head], natural-log sum of exp of
// the scaled scores (scale * q . k) over the keys each query sees.
// Prefill runs (KV head, query block) items on the pool; when there are too few items for the threads
// (decode, short chunks) the keys are split across threads and the partial states merged (attn-state.h).
// REQUIRES: kv.n_kv >= pos0 + n_q, n_head % kv.n_head_kv == 0, pos0 + n_q < 2^31.
// Uses the best kernel for this CPU (cpu_isa_best(): AVX-512 unless LONGCTX_NO_AVX512=1, else AVX2).
void attn_dense(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale, float * o,
                float * lse, thread_pool & pool, int64_t window = attn_window_none);

// As attn_dense() with an explicit kernel ISA, for tests and benchmarks. REQUIRES: cpu_isa_available(isa).
void attn_dense_isa(cpu_isa isa, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                    float scale, float * o, float * lse, thread_pool & pool, int64_t window = attn_window_none);

} // namespace lc
