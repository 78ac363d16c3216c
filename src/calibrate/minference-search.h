// Offline kernel-aware pattern search of MInference (METHODS.md sec. 2.4): run the model densely on one long
// calibration prompt; in every layer without a sliding window, re-time the candidate patterns with the sparse
// kernel that will run them (our CPU kernel, or the GPU's through plan_timer) on that layer's real Q/K/V and scale
// their budgets until each costs what the target costs; then give each head the candidate whose output is closest
// to dense (fewest elements off by more than 5e-3).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attn/minference/head-config.h"
#include "attn/prefill-plan.h"
#include "kv/kv-cache.h"
#include "longctx/status.h"
#include "model/model.h"

namespace lc {

// The kernel time (s) of a plan over one layer's q [n_q][n_head][D] f32 and cache (positions from 0).
using plan_time_fn = std::function<result<double>(const prefill_plan & plan, const float * q, int64_t n_q, int n_head,
                                                  const kv_view & kv, float scale)>;

// The GPU's sparse prefill kernel as a plan_time_fn (backend/cuda/plan-timer.h: Q/K/V copied to the device once
// per layer, median of 3 runs). UNSUPPORTED in a build without the CUDA backend or on a machine without a GPU.
result<plan_time_fn> minference_gpu_plan_time();

struct minference_search_params {
    // The cost every candidate is re-timed to: an A-shape plan in which each query sees about this many keys
    // (128 sink + the rest local), at the calibration length.
    int64_t target_keys = 4096;
    int     n_retime    = 3;    // re-timing rounds (0: budgets from nominal keys per query only)
    double  tolerance   = 5e-3; // an output element counts as wrong when off by more than this
    int     n_threads   = 0;    // 0: hardware concurrency
    // What re-times the candidates; empty: the CPU sparse kernel (best of 2 runs). `longctx calibrate minference
    // --timer cuda` passes minference_gpu_plan_time().
    plan_time_fn plan_time;
};

struct minference_candidate {
    head_budget budget;      // after re-timing
    head_budget initial;     // as listed in METHODS.md
    double      time_s  = 0; // measured kernel time of the plan with every head on this candidate (one layer)
    int64_t     n_heads = 0; // heads that chose it
};

struct minference_search_result {
    minference_config                 config;
    std::vector<minference_candidate> candidates;
    double                            target_time_s    = 0;
    double                            expected_density = 0; // of the chosen plans at the calibration length
    double                            mean_score       = 0; // mean fraction of output elements within tolerance
    int64_t                           n_tokens         = 0;
};

// Called after each searched layer: layers done, layers to search.
using search_progress_fn = std::function<void(int done, int total)>;

result<minference_search_result> minference_search(const model & m, const std::vector<int32_t> & prompt,
                                                   const minference_search_params & p,
                                                   const search_progress_fn &       progress = {});

} // namespace lc
