// Matmul dispatcher: activation quantization, row partitioning over threads, integer tiles or the
// dequantize-and-FMA fallback. See matmul.h.
#include "backend/cpu/matmul.h"

#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/avx2/quant-avx2.h"
#include "backend/cpu/avx512/quant-avx512.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/ref/dequant.h"
#include "core/log.h"

namespace lc::cpu {

dtype vec_dot_type(dtype wt) {
    switch (wt) {
    case dtype::Q4_1:
        return dtype::Q8_1;
    case dtype::Q4_0:
    case dtype::Q5_0:
    case dtype::Q8_0:
        return dtype::Q8_0;
    case dtype::Q4_K:
    case dtype::Q5_K:
    case dtype::Q6_K:
        return dtype::Q8_K;
    default:
        return dtype::F32;
    }
}

void quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n) {
    avx2::quantize_row_q8_0(x, y, n);
}
void quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n) {
    avx2::quantize_row_q8_1(x, y, n);
}
void quantize_row_q8_K(const float * x, block_q8_K * y, int64_t n) {
    avx2::quantize_row_q8_K(x, y, n);
}

namespace {

// vec_dot_type(), or F32 where rows do not split into whole activation blocks (K-quants need n_in % 256 == 0).
dtype act_type(dtype wt, int64_t n_in) {
    const dtype at = vec_dot_type(wt);
    return at != dtype::F32 && n_in % dtype_info(at).block_size != 0 ? dtype::F32 : at;
}

void quantize_act(dtype at, const float * x, void * y, int64_t n) {
    if (at == dtype::Q8_1)
        quantize_row_q8_1(x, (block_q8_1 *)y, n);
    else if (at == dtype::Q8_K)
        quantize_row_q8_K(x, (block_q8_K *)y, n);
    else
        quantize_row_q8_0(x, (block_q8_0 *)y, n);
}

float dot_f32(const float * a, const float * b, int64_t n) {
    __m256  acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    acc0        = _mm256_add_ps(acc0, acc1);
    __m128 s    = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
    s           = _mm_hadd_ps(s, s);
    s           = _mm_hadd_ps(s, s);
    float total = _mm_cvtss_f32(s);
    for (; i < n; ++i) total += a[i] * b[i];
    return total;
}

// Tokens processed per pass over a thread's rows: 64 activation rows of a 1536-wide Q8 matrix are ~100 KiB,
// which stays in L2 while every weight row of the thread streams past.
constexpr int64_t k_tok_chunk = 64;

} // namespace

void matmul(const matmul_weight & w, const float * x, int64_t n_tok, int64_t ldx, float * y, int64_t ldy,
            thread_pool & pool, std::vector<uint8_t> & scratch, cpu_isa isa) {
    const matmul_weight * ws[1] = {&w};
    float *               ys[1] = {y};
    const int64_t         ld[1] = {ldy};
    matmul_multi(ws, 1, x, n_tok, ldx, ys, ld, pool, scratch, isa);
}

void matmul_multi(const matmul_weight * const * ws, int n_w, const float * x, int64_t n_tok, int64_t ldx,
                  float * const * ys, const int64_t * ldys, thread_pool & pool, std::vector<uint8_t> & scratch,
                  cpu_isa isa) {
    const dtype   wt   = ws[0]->type;
    const dtype   at   = act_type(wt, ws[0]->n_in);
    const int     nth  = pool.n_threads();
    const int64_t n_in = ws[0]->n_in;
    for (int i = 1; i < n_w; ++i)
        LC_ASSERT(ws[i]->type == wt && ws[i]->n_in == n_in, "matmul_multi: weights differ in type or width");

    if (at == dtype::F32) {
        // Fallback: dequantize each weight row once, dot it with every activation row.
        scratch.resize(size_t(nth) * size_t(n_in) * sizeof(float));
        pool.run([&](int ith, int nth_) {
            float * row = (float *)scratch.data() + size_t(ith) * size_t(n_in);
            for (int i = 0; i < n_w; ++i) {
                const matmul_weight & w        = *ws[i];
                const size_t          w_stride = w.row_bytes();
                int64_t               r0, r1;
                thread_pool::split(w.n_out, ith, nth_, r0, r1);
                for (int64_t r = r0; r < r1; ++r) {
                    ::lc::ref::dequantize_row(w.type, (const uint8_t *)w.data + r * w_stride, row, n_in);
                    for (int64_t t = 0; t < n_tok; ++t) ys[i][t * ldys[i] + r] = dot_f32(row, x + t * ldx, n_in);
                }
            }
        });
        return;
    }

    const size_t a_stride = dtype_row_size(at, n_in);
    scratch.resize(size_t(n_tok) * a_stride);
    uint8_t * act = scratch.data();
    if (n_tok == 1) {
        quantize_act(at, x, act, n_in);
    } else {
        pool.run([&](int ith, int nth_) {
            int64_t t0, t1;
            thread_pool::split(n_tok, ith, nth_, t0, t1);
            for (int64_t t = t0; t < t1; ++t) quantize_act(at, x + t * ldx, act + t * a_stride, n_in);
        });
    }

    auto gemm = avx2::gemm_tiles;
#ifdef LC_HAVE_AVX512_KERNELS
    if (isa == cpu_isa::AVX512 && cpu_isa_available(cpu_isa::AVX512) && cpu_has_avx512vnni()) gemm = avx512::gemm_tiles;
#endif
    pool.run([&](int ith, int nth_) {
        for (int i = 0; i < n_w; ++i) {
            const matmul_weight & w        = *ws[i];
            const size_t          w_stride = w.row_bytes();
            const auto *          wbytes   = (const uint8_t *)w.data;
            // Rows in groups of 4 so every thread but the last runs full 4-row tiles.
            const int64_t n_groups = (w.n_out + 3) / 4;
            int64_t       g0, g1;
            thread_pool::split(n_groups, ith, nth_, g0, g1);
            const int64_t r0 = g0 * 4, r1 = std::min(w.n_out, g1 * 4);
            if (r0 >= r1) continue;
            for (int64_t t0 = 0; t0 < n_tok; t0 += k_tok_chunk) {
                const int64_t nt = std::min(k_tok_chunk, n_tok - t0);
                gemm(wt, n_in, wbytes + r0 * w_stride, w_stride, r1 - r0, act + t0 * a_stride, a_stride, nt,
                     ys[i] + t0 * ldys[i] + r0, ldys[i]);
            }
        }
    });
}

void matmul_ref(const matmul_weight & w, const float * x, int64_t n_tok, int64_t ldx, float * y, int64_t ldy) {
    const dtype          at       = act_type(w.type, w.n_in);
    const size_t         w_stride = w.row_bytes();
    const auto *         wbytes   = (const uint8_t *)w.data;
    std::vector<uint8_t> act(dtype_row_size(at == dtype::F32 ? dtype::Q8_0 : at, w.n_in));
    std::vector<float>   row(size_t(w.n_in));
    for (int64_t t = 0; t < n_tok; ++t) {
        const float * xt = x + t * ldx;
        if (at == dtype::Q8_1) ref::quantize_row_q8_1(xt, (block_q8_1 *)act.data(), w.n_in);
        if (at == dtype::Q8_0) ref::quantize_row_q8_0(xt, (block_q8_0 *)act.data(), w.n_in);
        if (at == dtype::Q8_K) ref::quantize_row_q8_K(xt, (block_q8_K *)act.data(), w.n_in);
        for (int64_t r = 0; r < w.n_out; ++r) {
            const uint8_t * wr = wbytes + r * w_stride;
            float           v  = 0.0f;
            switch (at == dtype::F32 ? dtype::F32 : w.type) { // F32: no integer path for this shape
            case dtype::Q4_1:
                v = ref::vec_dot_q4_1_q8_1(w.n_in, (const block_q4_1 *)wr, (const block_q8_1 *)act.data());
                break;
            case dtype::Q4_0:
                v = ref::vec_dot_q4_0_q8_0(w.n_in, (const block_q4_0 *)wr, (const block_q8_0 *)act.data());
                break;
            case dtype::Q5_0:
                v = ref::vec_dot_q5_0_q8_0(w.n_in, (const block_q5_0 *)wr, (const block_q8_0 *)act.data());
                break;
            case dtype::Q8_0:
                v = ref::vec_dot_q8_0_q8_0(w.n_in, (const block_q8_0 *)wr, (const block_q8_0 *)act.data());
                break;
            case dtype::Q4_K:
                v = ref::vec_dot_q4_K_q8_K(w.n_in, (const block_q4_K *)wr, (const block_q8_K *)act.data());
                break;
            case dtype::Q5_K:
                v = ref::vec_dot_q5_K_q8_K(w.n_in, (const block_q5_K *)wr, (const block_q8_K *)act.data());
                break;
            case dtype::Q6_K:
                v = ref::vec_dot_q6_K_q8_K(w.n_in, (const block_q6_K *)wr, (const block_q8_K *)act.data());
                break;
            default: {
                ::lc::ref::dequantize_row(w.type, wr, row.data(), w.n_in);
                double acc = 0.0;
                for (int64_t i = 0; i < w.n_in; ++i) acc += double(row[size_t(i)]) * xt[i];
                v = float(acc);
            }
            }
            y[t * ldy + r] = v;
        }
    }
}

} // namespace lc::cpu
