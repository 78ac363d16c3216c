// Scalar reference for the D2O merge similarity search (kv/merge-sim.h): every dot product in double, brute force.
#pragma once

#include <cstdint>

namespace lc {

// Same contract as max_dot_argmax(): u[e] = max over c of dot(E[e], C[c]) (accumulated in double, then rounded to
// f32) and arg[e] = the lowest c reaching that double maximum; n_c == 0: -inf and -1; NaN dots never win.
void max_dot_argmax_ref(const float * E, int64_t n_e, const float * C, int64_t n_c, int dim, float * u, int32_t * arg);

// dot(E row, C row) in double: tests check the optimised kernels' argmax against it.
double max_dot_ref_dot(const float * e, const float * c, int dim);

} // namespace lc
