// CPU forward-pass ops: AVX2 versions and their scalar references (see ops.h).
#include "backend/cpu/ops.h"

#include <immintrin.h>

#include <cmath>
#include <vector>

#include "backend/cpu/avx2/vec-math.h"

namespace lc::cpu {

namespace {
// Angles advance by repeated multiplication in fp32, pair by pair (theta_i = pos * scale^i): the same
// rounding as llama.cpp's rope cache, so logits agree with it to the last bits that matter.
template <typename F> void rope_angles(int64_t pos, int n_rot, float freq_base, F && f) {
    const float theta_scale = std::pow(freq_base, -2.0f / float(n_rot));
    float       theta       = float(pos);
    for (int i = 0; i < n_rot / 2; ++i) {
        f(i, std::cos(theta), std::sin(theta));
        theta *= theta_scale;
    }
}

void rope_impl(float * x, int64_t n_tok, int n_head, int head_dim, int n_rot, const int64_t * pos, float freq_base,
               rope_mode mode) {
    std::vector<float> cs(static_cast<size_t>(n_rot));
    for (int64_t t = 0; t < n_tok; ++t) {
        rope_angles(pos[t], n_rot, freq_base, [&](int i, float c, float s) {
            cs[size_t(2 * i)]     = c;
            cs[size_t(2 * i + 1)] = s;
        });
        for (int h = 0; h < n_head; ++h) {
            float * v = x + (t * n_head + h) * head_dim;
            for (int i = 0; i < n_rot / 2; ++i) {
                const float c = cs[size_t(2 * i)], s = cs[size_t(2 * i + 1)];
                const int   i0 = mode == rope_mode::NORM ? 2 * i : i;
                const int   i1 = mode == rope_mode::NORM ? 2 * i + 1 : i + n_rot / 2;
                const float a = v[i0], b = v[i1];
                v[i0] = a * c - b * s;
                v[i1] = a * s + b * c;
            }
        }
    }
}
} // namespace

void rmsnorm(const float * x, const float * w, float * y, int64_t n, float eps) {
    // Sum of squares in double (a 576-4096 element row: the cost is negligible next to the matmuls).
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(x[i] * x[i]);
    const float  mean  = float(sum / double(n));
    const float  scale = 1.0f / std::sqrt(mean + eps);
    const __m256 vs    = _mm256_set1_ps(scale);
    int64_t      i     = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
    for (; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void rope(float * x, int64_t n_tok, int n_head, int head_dim, int n_rot, const int64_t * pos, float freq_base,
          rope_mode mode) {
    rope_impl(x, n_tok, n_head, head_dim, n_rot, pos, freq_base, mode);
}

void silu_mul(float * g, const float * u, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(g + i, _mm256_mul_ps(avx2::silu_ps(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
    for (; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

namespace {
constexpr float k_gelu_a      = 0.044715f;
constexpr float k_sqrt_2_pi_2 = 1.5957691216057308f; // 2 sqrt(2 / pi)
} // namespace

void gelu_tanh_mul(float * g, const float * u, int64_t n) {
    const __m256 a   = _mm256_set1_ps(k_gelu_a);
    const __m256 c   = _mm256_set1_ps(-k_sqrt_2_pi_2);
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t      i   = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x  = _mm256_loadu_ps(g + i);
        const __m256 x2 = _mm256_mul_ps(x, x);
        // z = -2 sqrt(2/pi) (x + a x^3); gelu = x / (1 + e^z); e^z overflows to ~1.6e38 (clamped) -> ~0 for x << 0
        const __m256 z = _mm256_mul_ps(c, _mm256_mul_ps(x, _mm256_fmadd_ps(a, x2, one)));
        const __m256 y = _mm256_div_ps(x, _mm256_add_ps(one, avx2::exp_ps(z)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(y, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; ++i) {
        const float x = g[i];
        g[i]          = x / (1.0f + std::exp(-k_sqrt_2_pi_2 * x * (1.0f + k_gelu_a * x * x))) * u[i];
    }
}

void add_inplace(float * y, const float * x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

namespace ref {

void rmsnorm(const float * x, const float * w, float * y, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * x[i];
    const double scale = 1.0 / std::sqrt(sum / double(n) + eps);
    for (int64_t i = 0; i < n; ++i) y[i] = float(x[i] * scale * w[i]);
}

void rope(float * x, int64_t n_tok, int n_head, int head_dim, int n_rot, const int64_t * pos, float freq_base,
          rope_mode mode) {
    for (int64_t t = 0; t < n_tok; ++t) {
        for (int h = 0; h < n_head; ++h) {
            float * v = x + (t * n_head + h) * head_dim;
            for (int i = 0; i < n_rot / 2; ++i) {
                const double theta = double(pos[t]) * std::pow(double(freq_base), -2.0 * i / n_rot);
                const double c = std::cos(theta), s = std::sin(theta);
                const int    i0 = mode == rope_mode::NORM ? 2 * i : i;
                const int    i1 = mode == rope_mode::NORM ? 2 * i + 1 : i + n_rot / 2;
                const double a = v[i0], b = v[i1];
                v[i0] = float(a * c - b * s);
                v[i1] = float(a * s + b * c);
            }
        }
    }
}

void silu_mul(float * g, const float * u, int64_t n) {
    for (int64_t i = 0; i < n; ++i) g[i] = float(double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i]);
}

void gelu_tanh_mul(float * g, const float * u, int64_t n) {
    const double k = 0.79788456080286535588; // sqrt(2 / pi)
    for (int64_t i = 0; i < n; ++i) {
        const double x = g[i];
        g[i]           = float(0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x))) * u[i]);
    }
}

} // namespace ref

} // namespace lc::cpu
