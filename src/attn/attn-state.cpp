// Log-sum-exp merge of partial attention states; see attn-state.h.
#include "attn/attn-state.h"

#include <cmath>
#include <limits>

namespace lc {

void attn_state_merge(const float * o1, float lse1, const float * o2, float lse2, int head_dim, float * o,
                      float * lse) {
    const float m = std::fmax(lse1, lse2);
    if (m == -std::numeric_limits<float>::infinity()) {
        for (int d = 0; d < head_dim; ++d) o[d] = 0.0f;
        *lse = m;
        return;
    }
    // Weights relative to the larger state: one of them is exactly 1, so nothing overflows.
    const float w1  = std::exp(lse1 - m);
    const float w2  = std::exp(lse2 - m);
    const float sum = w1 + w2;
    const float a1  = w1 / sum;
    const float a2  = w2 / sum;
    for (int d = 0; d < head_dim; ++d) o[d] = a1 * o1[d] + a2 * o2[d];
    *lse = m + std::log(sum);
}

void attn_state_merge_parts(const float * o_parts, const float * lse_parts, int n_part, int64_t n_rows, int head_dim,
                            float * o, float * lse) {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t r = 0; r < n_rows; ++r) {
        float m = ninf;
        for (int p = 0; p < n_part; ++p) m = std::fmax(m, lse_parts[size_t(p) * size_t(n_rows) + size_t(r)]);
        float * out = o + size_t(r) * size_t(head_dim);
        for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
        if (m == ninf) {
            if (lse) lse[r] = ninf;
            continue;
        }
        double sum = 0.0;
        for (int p = 0; p < n_part; ++p) sum += std::exp(double(lse_parts[size_t(p) * size_t(n_rows) + size_t(r)] - m));
        for (int p = 0; p < n_part; ++p) {
            const float l = lse_parts[size_t(p) * size_t(n_rows) + size_t(r)];
            if (l == ninf) continue;
            const float   a   = float(std::exp(double(l - m)) / sum);
            const float * src = o_parts + (size_t(p) * size_t(n_rows) + size_t(r)) * size_t(head_dim);
            for (int d = 0; d < head_dim; ++d) out[d] += a * src[d];
        }
        if (lse) lse[r] = m + float(std::log(sum));
    }
}

} // namespace lc
