// Building blocks shared by the per-architecture forward passes (arch-*.cpp): scratch sizing, products that
// share an input, row-parallel norms and gated activations, the output head, and per-phase timing.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

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

// Tokens in a batch.
int64_t batch_tokens(const std::vector<forward_seq> & seqs);

// Sizes the activation buffers for the batch's tokens and fills s.pos with each run's positions.
void prepare(forward_scratch & s, const std::vector<forward_seq> & seqs, int64_t n_embd, int64_t n_q, int64_t n_kv,
             int64_t n_ff);

// Products sharing input x ([n][ldx]); consecutive weights of one type and width share one activation
// quantization and one parallel region. Outputs are [n][w.n_out].
void matmul_group(std::initializer_list<std::pair<const cpu::matmul_weight *, float *>> outs, const float * x,
                  int64_t n, int64_t ldx, thread_pool & pool, std::vector<uint8_t> & scratch);

// out[r] = rmsnorm(x[r]) * w for n_rows rows of dim floats (out may alias x); threads over rows when large.
void norm_rows(const float * x, float * out, int64_t n_rows, int64_t dim, const float * w, float eps,
               thread_pool & pool);

// y[t] += b for each of n_tok rows of n (no-op when b is null).
void add_bias(float * y, const float * b, int64_t n_tok, int64_t n);

// Stores the batch's K/V of layer il after each sequence's last slot (k, v: [n][n_head_kv * head_dim]) and
// returns those first slots in slot0 (one per run); then attend() runs the attention.
void store_kv(kv_cache & kv, int il, const std::vector<forward_seq> & seqs, const float * k, const float * v,
              std::vector<int64_t> & slot0);

// Attention of layer il for every run through its methods (dense when its attn is nullptr), its queries at the
// slots store_kv() returned. q, o: [n][n_head][head_dim]; window > 0 for sliding-window layers.
void attend(const std::vector<forward_seq> & seqs, const std::vector<int64_t> & slot0, int il, const float * q,
            int n_head, const kv_cache & kv, float scale, float * o, thread_pool & pool, int64_t window,
            forward_timings & t);

// Gated activation over n_tok rows of n_ff: g = act(g) * u, threads over rows.
enum class glu { SILU, GELU_TANH };
void glu_rows(glu act, float * g, const float * u, int64_t n_tok, int64_t n_ff, thread_pool & pool);

// Final norm of the rows of s.x whose logits the runs want and the output projection into logits
// [sum n_logits][n_vocab].
void output_head(const model & m, forward_scratch & s, const std::vector<forward_seq> & seqs, float * logits,
                 thread_pool & pool, phase_timer & timer);

} // namespace lc::fwd
