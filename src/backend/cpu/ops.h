// Elementwise and normalisation ops of the forward pass on the CPU (fp32). Each has a scalar definition in
// ops.cpp's reference namespace and is tested against it in tests/backend/test-ops.cpp.
#pragma once

#include <cstdint>

namespace lc::cpu {

enum class rope_mode {
    NORM, // rotate adjacent pairs (x[2i], x[2i+1]): llama GGUFs, whose Q/K weights are permuted for it
    NEOX, // rotate halves (x[i], x[i + n_rot/2]): qwen2, gemma3
};

// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i] for one row of n; y may alias x.
void rmsnorm(const float * x, const float * w, float * y, int64_t n, float eps);

// Rotary position embedding, in place, on x: [n_tok][n_head][head_dim]; the first n_rot dims of each head
// rotate by angle pos[t] * freq_base^(-2i/n_rot) for pair i.
void rope(float * x, int64_t n_tok, int n_head, int head_dim, int n_rot, const int64_t * pos, float freq_base,
          rope_mode mode);

// g[i] = silu(g[i]) * u[i]
void silu_mul(float * g, const float * u, int64_t n);
// g[i] = gelu_tanh(g[i]) * u[i], gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// (Gemma's gated FFN). Computed as x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the same function.
void gelu_tanh_mul(float * g, const float * u, int64_t n);
// y[i] += x[i]
void add_inplace(float * y, const float * x, int64_t n);

namespace ref {
void rmsnorm(const float * x, const float * w, float * y, int64_t n, float eps);
void rope(float * x, int64_t n_tok, int n_head, int head_dim, int n_rot, const int64_t * pos, float freq_base,
          rope_mode mode);
void silu_mul(float * g, const float * u, int64_t n);
void gelu_tanh_mul(float * g, const float * u, int64_t n);
} // namespace ref

} // namespace lc::cpu
