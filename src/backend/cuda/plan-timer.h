// Times prefill plans with the GPU's sparse prefill kernel (attn-sparse-prefill.cuh) on one layer's Q/K/V copied
// from the CPU cache to the device: the cost model of `longctx calibrate minference --device cuda`, which re-times
// its candidate patterns with the kernel that will run them. No CUDA header (STYLE.md §1).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/prefill-plan.h"
#include "kv/kv-cache.h"
#include "longctx/status.h"

namespace lc::cuda {

class plan_timer {
  public:
    // UNSUPPORTED when no CUDA device is present.
    static result<std::unique_ptr<plan_timer>> create(int device = 0);
    ~plan_timer();

    // Median kernel time in seconds (CUDA events, `reps` runs after one warm-up) of `plan` over q [n_q][n_head][D]
    // f32 (positions 0..n_q-1) and the cache kv (n_kv >= n_q), both rounded to bf16 on upload. The upload happens
    // when q, n_q, n_head or kv differ from the last call's (a layer is timed with many plans in a row).
    // o_out (optional, host): [n_q][n_head][D] f32, the last run's output (tests).
    // Errors: the kernel's (UNSUPPORTED head_dim or head ratio, INVALID_ARGUMENT shapes).
    result<double> time(const prefill_plan & plan, const float * q, int64_t n_q, int n_head, const kv_view & kv,
                        float scale, int reps = 3, std::vector<float> * o_out = nullptr);

  private:
    plan_timer();
    struct impl;
    std::unique_ptr<impl> p_;
};

} // namespace lc::cuda
