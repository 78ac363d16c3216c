// D2O merge similarity search dispatcher: cuts E into chunks of rows, each packed and run against all of C by the ISA
// kernel (backend/cpu/merge-sim.h), scheduled on the pool from a shared counter; and the fp16 gather/normalise
// helper. See merge-sim.h.
#include "kv/merge-sim.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "backend/cpu/merge-sim.h"
#include "core/log.h"

namespace lc {

namespace {

using max_dot_fn = void (*)(const max_dot_args &);

// Chunks are whole AVX-512 panels (32 rows; two AVX2 panels). Their packed rows stay within k_chunk_bytes (fits L2
// beside the kernel's 128 KiB block of C: dim 128, 512 rows), and there are about k_chunks_per_thread per thread
// so that the dynamic schedule evens out a thread slowed by the rest of the machine. Packing a chunk costs 1/n_c of
// its FMAs, so small chunks cost nothing but the re-reads of C from L3 (once per chunk).
constexpr int64_t k_chunk_rows_unit   = 32;
constexpr int64_t k_chunk_bytes       = 256 * 1024;
constexpr int64_t k_chunks_per_thread = 4;

float * aligned_floats(std::vector<float> & buf, size_t n) {
    if (buf.size() < n + 16) buf.resize(n + 16);
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<float *>((p + 63) & ~uintptr_t(63));
}

} // namespace

void max_dot_argmax(const float * E, int64_t n_e, const float * C, int64_t n_c, int dim, float * u, int32_t * arg,
                    thread_pool & pool) {
    max_dot_argmax_isa(cpu_isa_best(), E, n_e, C, n_c, dim, u, arg, pool);
}

void max_dot_argmax_isa(cpu_isa isa, const float * E, int64_t n_e, const float * C, int64_t n_c, int dim, float * u,
                        int32_t * arg, thread_pool & pool) {
    LC_ASSERT(n_e >= 0 && n_c >= 0 && dim > 0, "merge sim: bad shape n_e %lld, n_c %lld, dim %d", (long long)n_e,
              (long long)n_c, dim);
    LC_ASSERT(n_c <= std::numeric_limits<int32_t>::max(), "merge sim: n_c %lld does not fit the int32 argmax",
              (long long)n_c);
    LC_ASSERT(cpu_isa_available(isa), "merge sim: %s kernels are not available on this machine or build",
              cpu_isa_name(isa));
    if (n_e == 0) return;
    if (n_c == 0) {
        std::fill(u, u + n_e, -std::numeric_limits<float>::infinity());
        std::fill(arg, arg + n_e, int32_t(-1));
        return;
    }

    max_dot_fn fn = max_dot_argmax_avx2;
#ifdef LC_HAVE_AVX512_KERNELS
    if (isa == cpu_isa::AVX512) fn = max_dot_argmax_avx512;
#endif

    const int     nth      = pool.n_threads();
    const int64_t unit     = k_chunk_rows_unit;
    const int64_t rows_max = std::max<int64_t>(unit, k_chunk_bytes / (int64_t(dim) * 4) / unit * unit);
    const int64_t want     = (n_e + k_chunks_per_thread * nth - 1) / (k_chunks_per_thread * nth);
    const int64_t rows     = std::clamp<int64_t>((want + unit - 1) / unit * unit, unit, rows_max);
    const int64_t n_chunks = (n_e + rows - 1) / rows;
    const size_t  scratchn = max_dot_scratch_floats(rows, dim);

    std::atomic<int64_t> next{0};
    auto                 work = [&](int, int) {
        thread_local std::vector<float> buf;
        float *                         scratch = aligned_floats(buf, scratchn);
        for (;;) {
            const int64_t w = next.fetch_add(1, std::memory_order_relaxed);
            if (w >= n_chunks) break;
            const int64_t e0 = w * rows;
            max_dot_args  a{};
            a.E       = E + e0 * dim;
            a.n_e     = std::min(rows, n_e - e0);
            a.C       = C;
            a.n_c     = n_c;
            a.dim     = dim;
            a.u       = u + e0;
            a.arg     = arg + e0;
            a.scratch = scratch;
            fn(a);
        }
    };
    if (n_chunks == 1 || nth == 1) {
        work(0, 1); // one chunk: no pool wake-up
    } else {
        pool.run(work);
    }
}

void gather_normalized(const fp16_t * const * rows, int64_t n, int dim, float * out) {
    for (int64_t i = 0; i < n; ++i) {
        const fp16_t * src = rows[i];
        float *        dst = out + i * dim;
        int            d   = 0;
        for (; d + 8 <= dim; d += 8) // F16C is part of the x86-64-v3 baseline
            _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(src + d))));
        for (; d < dim; ++d) dst[d] = fp16_to_fp32(src[d]);
        double ss = 0;
        for (d = 0; d < dim; ++d) ss += double(dst[d]) * double(dst[d]);
        if (ss == 0) continue; // zero row (stays zero)
        const float inv = float(1.0 / std::sqrt(ss));
        for (d = 0; d < dim; ++d) dst[d] *= inv;
    }
}

} // namespace lc
