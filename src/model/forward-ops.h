// Building blocks shared by the per-architecture forward passes (arch-*.cpp): scratch sizing, products that
// share an input, row-parallel norms and gated activations, the output head, and per-phase timing.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "backend/cpu/matmul.h"
#include "model/forward.h"

namespace lc::fwd {

// Accumulates wall time into the forward_timings field of the phase that just ended.
class phase_timer {
  public:
    explicit phase_timer(forward_timings & tm) : tm_(tm), t0_(clock::now()) {}
    void end(double forward_timings::*phase) {
        const auto t = clock::now();
        tm_.*phase += std::chrono::duration<double>(t - t0_).count();
        t0_ = t;
    }

  private:
    using clock = std::chrono::steady_clock;
    forward_timings & tm_;
    clock::time_point t0_;
};

// Sizes the activation buffers for n tokens and fills s.pos with pos0..pos0+n-1.
void prepare(forward_scratch & s, int64_t n, int64_t pos0, int64_t n_embd, int64_t n_q, int64_t n_kv, int64_t n_ff);

// Products sharing input x ([n][ldx]); consecutive weights of one type and width share one activation
// quantization and one parallel region. Outputs are [n][w.n_out].
void matmul_group(std::initializer_list<std::pair<const cpu::matmul_weight *, float *>> outs, const float * x,
                  int64_t n, int64_t ldx, thread_pool & pool, std::vector<uint8_t> & scratch);

// out[r] = rmsnorm(x[r]) * w for n_rows rows of dim floats (out may alias x); threads over rows when large.
void norm_rows(const float * x, float * out, int64_t n_rows, int64_t dim, const float * w, float eps,
               thread_pool & pool);

// y[t] += b for each of n_tok rows of n (no-op when b is null).
void add_bias(float * y, const float * b, int64_t n_tok, int64_t n);

// Attention of layer il through the context's methods (attn), or dense when attn is nullptr.
// q, o: [n][n_head][head_dim]; window > 0 for sliding-window layers.
void attend(attention * attn, int il, const float * q, int64_t n, int64_t pos0, int n_head, const kv_view & kv,
            float scale, float * o, thread_pool & pool, int64_t window, forward_timings * t);

// Gated activation over n_tok rows of n_ff: g = act(g) * u, threads over rows.
enum class glu { SILU, GELU_TANH };
void glu_rows(glu act, float * g, const float * u, int64_t n_tok, int64_t n_ff, thread_pool & pool);

// Final norm of the last n_logits rows of s.x and the output projection into logits [n_logits][n_vocab].
void output_head(const model & m, forward_scratch & s, int64_t n, int64_t n_logits, float * logits, thread_pool & pool,
                 phase_timer & timer);

} // namespace lc::fwd
