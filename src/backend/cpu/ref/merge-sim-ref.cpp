// Scalar double-precision reference for the D2O merge similarity search. See merge-sim-ref.h.
#include "backend/cpu/ref/merge-sim-ref.h"

#include <limits>

namespace lc {

double max_dot_ref_dot(const float * e, const float * c, int dim) {
    double s = 0;
    for (int d = 0; d < dim; ++d) s += double(e[d]) * double(c[d]);
    return s;
}

void max_dot_argmax_ref(const float * E, int64_t n_e, const float * C, int64_t n_c, int dim, float * u, int32_t * arg) {
    for (int64_t e = 0; e < n_e; ++e) {
        double  best = -std::numeric_limits<double>::infinity();
        int32_t bc   = -1;
        for (int64_t c = 0; c < n_c; ++c) {
            const double s = max_dot_ref_dot(E + e * dim, C + c * dim, dim);
            if (s > best) {
                best = s;
                bc   = int32_t(c);
            }
        }
        u[e]   = float(best);
        arg[e] = bc;
    }
}

} // namespace lc
