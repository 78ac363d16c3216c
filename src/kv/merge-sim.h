// Similarity search of D2O's KV merging (docs METHODS.md sec. 5.3): for every evicted key e, the most similar kept
// key c(e) = argmax_c cos(k_e, k_c) and u_e = that cosine. A GEMM of the evicted rows against the kept rows with a
// max/argmax epilogue, so the similarity matrix is never stored.
#pragma once

#include <cstdint>

#include "core/cpu-features.h"
#include "core/fp16.h"
#include "core/thread-pool.h"

namespace lc {

// For each row e of E: u[e] = max over rows c of C of dot(E[e], C[c]) and arg[e] = the first (lowest) c reaching it.
// E: [n_e][dim] f32, C: [n_c][dim] f32, both row-major with row stride dim (callers pass L2-normalised rows, so u is
// the cosine similarity). u: [n_e] f32, arg: [n_e] int32. n_c == 0: u = -inf, arg = -1. Dot products whose value is
// NaN never win (a row whose dots are all NaN gets -inf and -1). The dots are f32 sums over d in order (one FMA per
// d), so every ISA returns bit-identical results, and equal rows of C give equal dots: ties go to the lowest c.
// Threads over chunks of E rows with the pool (dynamic schedule); below 16 (AVX2) or 32 (AVX-512) rows per chunk,
// SIMD lanes are wasted on padding rows (n_e = 1 costs what n_e = 8 / 16 does).
// REQUIRES: n_e >= 0, n_c >= 0, 0 < n_c < 2^31 or n_c == 0, dim > 0.
void max_dot_argmax(const float * E, int64_t n_e, const float * C, int64_t n_c, int dim, float * u, int32_t * arg,
                    thread_pool & pool);
// The same with an explicit ISA (tests, benchmarks). REQUIRES: cpu_isa_available(isa).
void max_dot_argmax_isa(cpu_isa isa, const float * E, int64_t n_e, const float * C, int64_t n_c, int dim, float * u,
                        int32_t * arg, thread_pool & pool);

// Converts n rows of fp16 (rows[i] points at dim values) to f32 and L2-normalises them into out: [n][dim] f32,
// row-major. The norm is accumulated in double; a zero row stays zero.
void gather_normalized(const fp16_t * const * rows, int64_t n, int dim, float * out);

} // namespace lc
