// Per-ISA CPU kernels for the D2O merge similarity search (kv/merge-sim.h): max/argmax of the dot products of one
// chunk of E rows against all of C. The dispatcher (kv/merge-sim.cpp) cuts E into chunks and schedules them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lc {

// E rows [0, n_e) of the chunk against C rows [0, n_c); writes u[0..n_e) and arg[0..n_e).
struct max_dot_args {
    const float * E; // [n_e][dim], row-major
    int64_t       n_e;
    const float * C; // [n_c][dim], row-major
    int64_t       n_c;
    int           dim;
    float *       u;       // [n_e]
    int32_t *     arg;     // [n_e]
    float *       scratch; // max_dot_scratch_floats(n_e, dim) floats, 64-byte aligned
};

// Panel of packed E rows: 32 rows (the AVX-512 panel; two AVX2 panels), [dim][32] transposed, plus the running
// maxima and their indices of those rows.
inline size_t max_dot_scratch_floats(int64_t n_e, int dim) {
    const size_t n_rows = size_t((n_e + 31) / 32 * 32);
    return n_rows * size_t(dim) + 2 * n_rows;
}

// REQUIRES: n_e >= 1, 1 <= n_c < 2^31. Thread-safe (scratch per call).
void max_dot_argmax_avx2(const max_dot_args & a);
void max_dot_argmax_avx512(const max_dot_args & a); // only in builds with LC_HAVE_AVX512_KERNELS

} // namespace lc
