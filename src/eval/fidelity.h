// Fidelity to dense attention on long text (METHODS.md sec. 6), independent of the model's skill: the same tokens
// run once densely and once with the method under test, chunk by chunk (-ub tokens, all logits kept), and every
// position's next-token distributions compared: KL(dense || method) and top-1 agreement, overall and per bucket.
// With decode_tail > 0 the last decode_tail tokens of each document are fed one at a time (teacher-forced decode
// steps, EVAL_TASKS.md sec. 3.5), so that decode methods and KV policies act; the record then also reports KL and
// top-1 over those positions alone and the share of the cache the method's decode steps attended.
// Per layer (layers without a sliding window), an observer on the method's context measures the attention-mass
// recall of its sparse prefill plans and the relative error of its attention output against dense attention
// recomputed on the same queries and cache (definitions and sampling: eval/attn-fidelity.h); the record holds them
// under "layers" with means and the worst layer. They measure each layer's attention given identical inputs, not
// the drift through the network. Decode steps add a per-layer output error (their recall is not measured).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/eval-common.h"
#include "eval/results.h"

namespace lc::eval {

struct fidelity_params {
    std::vector<int64_t> lengths;       // tokens per document (BOS included)
    int                  docs   = 1;    // documents per length: consecutive slices of the text
    int64_t              bucket = 1024; // positions per bucket in the record
    int64_t              decode_tail = 0; // last positions of each document run as single-token decode steps
    int                  layer_sample = 4; // per-layer metrics on every layer_sample-th 64-query block; 0: off
};

// The n tokens of document j of a token stream (body: the text without BOS): BOS (when the file's flag says so)
// followed by body[j * m .. j * m + m), m = n or n - 1. Empty when the body is too short.
std::vector<int32_t> document_slice(const tokenizer & tok, const std::vector<int32_t> & body, int64_t n, int j);

// Compares slot 1 (the method) with slot 0 (dense). REQUIRES: env.slots holds both.
status fidelity_run(const fidelity_params & p, const std::vector<int32_t> & body, eval_env & env, result_file & out);

} // namespace lc::eval
