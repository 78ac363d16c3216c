// Elementwise and normalisation ops of the forward pass on the GPU: the CUDA twins of backend/cpu/ops.h
// (embedding gather, RMSNorm, QK-norm + RoPE + K/V write into the paged cache, SwiGLU / GELU-tanh gating,
// argmax), plus the fills that build synthetic models. Each is tested against the CPU reference in
// tests/cuda/test-cuda-ops.cpp. All pointers are device pointers; every launch is asynchronous on `stream` and
// checked (LC_CUDA_CHECK_LAUNCH). Positions are read from device memory so that decode steps can be replayed
// from a CUDA graph.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "core/fp16.h"

namespace lc::cuda {

// x[t][0..n_embd) = table[tokens[t]][0..n_embd) * scale.
//   table: [n_vocab][n_embd] bf16; tokens: [n] int32; x: [n][n_embd] f32
void embed_rows(const bf16_t * table, const int32_t * tokens, int64_t n, int n_embd, float scale, float * x,
                cudaStream_t stream);

// RMSNorm of n_rows rows of dim: y[r][i] = x[r][i] / sqrt(mean(x[r]^2) + eps) * w[i] (cpu::rmsnorm).
//   x: rows at stride ldx f32; y: rows at stride ldy, bf16 when y_bf16 else f32 (may alias x when f32)
void rmsnorm_rows(const float * x, int64_t ldx, const float * w, int64_t n_rows, int dim, float eps, void * y,
                  int64_t ldy, bool y_bf16, cudaStream_t stream);

// x[r] += rmsnorm(t[r]) * w for n_rows rows of dim (Gemma 3's post-norms before the residual add).
//   x, t: [n_rows][dim] f32
void rmsnorm_add_rows(float * x, const float * t, const float * w, int64_t n_rows, int dim, float eps,
                      cudaStream_t stream);

// Finishes the fused QKV projection of n tokens: optional bias (qwen2), optional per-head RMSNorm of Q and K
// (gemma3), RoPE on the first n_rot dims of each Q and K head (adjacent pairs or NEOX halves, angles as in
// cpu::rope: theta_i = pos * theta_scale^i by repeated fp32 multiplication, theta_scale = freq_base^(-2/n_rot)
// computed on the host), then writes Q as bf16 and K, V as bf16 rows into the paged cache at slot pos[t].
struct qkv_finish_args {
    const float *   qkv         = nullptr; // [n][ld] f32: Q [n_head][head_dim] at 0, K at n_q, V at n_q + n_kv
    int64_t         ld          = 0;
    int64_t         n           = 0;
    const int32_t * pos         = nullptr; // [n] positions (also the cache slots)
    int             n_head      = 0;
    int             n_head_kv   = 0;
    int             head_dim    = 0;
    int             n_rot       = 0;
    float           theta_scale = 1.0f; // freq_base^(-2/n_rot), from the host's std::pow
    bool            neox        = false;
    const float *   bq = nullptr, *bk = nullptr, *bv = nullptr; // optional [n_q], [n_kv], [n_kv] f32
    const float *   q_norm = nullptr, *k_norm = nullptr;        // optional [head_dim] f32
    float           eps    = 1e-6f;
    bf16_t *        q_out  = nullptr; // [n][n_head][head_dim] bf16
    bf16_t *        k_pool = nullptr; // [n_pages][n_head_kv][64][head_dim] bf16 (kv-paged.cuh)
    bf16_t *        v_pool = nullptr;
    const int32_t * pages  = nullptr; // logical page -> physical page
};
void qkv_finish(const qkv_finish_args & a, cudaStream_t stream);

enum class glu_act { SILU, GELU_TANH };
// h[t][i] = act(gu[t][i]) * gu[t][n_ff + i] as bf16 (cpu::silu_mul, cpu::gelu_tanh_mul).
//   gu: [n][2 * n_ff] f32 (gate, then up); h: [n][n_ff] bf16
void glu_rows(const float * gu, int64_t n, int n_ff, glu_act act, bf16_t * h, cudaStream_t stream);

// out[r] = index of the largest x[r][i] (the first on ties); x: [n_rows][n] f32.
void argmax_rows(const float * x, int64_t n_rows, int n, int32_t * out, cudaStream_t stream);

// y[i] = bf16(x[i]) (round to nearest even).
void f32_to_bf16(const float * x, bf16_t * y, int64_t n, cudaStream_t stream);

// Synthetic weights: y[i] = uniform in [-amp, amp) from a counter hash of (seed, i); deterministic.
void fill_uniform_bf16(bf16_t * y, int64_t n, uint64_t seed, float amp, cudaStream_t stream);
void fill_f32(float * y, int64_t n, float value, cudaStream_t stream);

} // namespace lc::cuda
