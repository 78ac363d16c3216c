// MagicPIG hybrid decode, host side (see magicpig-host.h): compact table build (counting sort per chunk and table),
// the table walk by collision count and the weighted attention over the sampled rows (AVX2/FMA, bf16 rows).
#include "backend/cuda/magicpig-host.h"

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/log.h"

namespace lc::cuda {

namespace {

#define LC_MPIG_AVX2 __attribute__((target("avx2,fma")))

LC_MPIG_AVX2 inline __m256 load_bf16x8(const bf16_t * p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

LC_MPIG_AVX2 inline float hsum(__m256 v) {
    alignas(32) float t[8];
    _mm256_store_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

// q [D] f32 . k [D] bf16 (D a multiple of 8).
LC_MPIG_AVX2 inline float dot_f32_bf16(const float * q, const bf16_t * k, int D) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int    d = 0;
    for (; d + 16 <= D; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load_bf16x8(k + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load_bf16x8(k + d + 8), a1);
    }
    for (; d < D; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load_bf16x8(k + d), a0);
    return hsum(_mm256_add_ps(a0, a1));
}

// acc [D] = acc * c + p * v [D] bf16.
LC_MPIG_AVX2 inline void scale_axpy_bf16(float * acc, float c, float p, const bf16_t * v, int D) {
    const __m256 cc = _mm256_set1_ps(c), pp = _mm256_set1_ps(p);
    for (int d = 0; d < D; d += 8)
        _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(pp, load_bf16x8(v + d), _mm256_mul_ps(cc, _mm256_loadu_ps(acc + d))));
}

inline void prefetch_row(const bf16_t * p, int D) {
    for (int d = 0; d < D; d += 32) _mm_prefetch(reinterpret_cast<const char *>(p + d), _MM_HINT_T0);
}

} // namespace

void mpig_free::operator()(void * p) const {
    std::free(p);
}

void * mpig_host_alloc_bytes(size_t bytes) {
    constexpr size_t huge = size_t(2) << 20;
    bytes                 = std::max<size_t>((bytes + huge - 1) / huge * huge, huge);
    void * p              = nullptr;
    LC_ASSERT(posix_memalign(&p, huge, bytes) == 0, "mpig: out of host memory (%zu bytes)", bytes);
    (void)madvise(p, bytes, MADV_HUGEPAGE); // advice only: 4 KiB pages where the kernel has no huge ones
    return p;
}

size_t mpig_host_tables::bytes() const {
    return (mu.size() + norm.size()) * sizeof(float) + (offset ? n_offset() * sizeof(uint32_t) : 0) +
           (key ? size_t(L) * size_t(n) * sizeof(uint16_t) : 0);
}

void mpig_host_layer::alloc(int n_head_kv_, int D_, int64_t begin_, int64_t n_) {
    n_head_kv = n_head_kv_;
    D         = D_;
    begin     = begin_;
    n         = n_;
    const size_t e = size_t(n_head_kv) * size_t(n) * size_t(D);
    k = mpig_host_alloc<bf16_t>(e);
    v = mpig_host_alloc<bf16_t>(e);
    heads.clear();
    heads.resize(size_t(n_head_kv));
}

void mpig_host_tables_build(const uint16_t * codes_t, int64_t n, int K, int L, int chunk_bits, mpig_host_tables & out,
                            thread_pool & pool) {
    LC_ASSERT(K >= 1 && K <= 16 && L >= 1 && chunk_bits >= 1 && chunk_bits <= 16, "mpig tables: K=%d L=%d chunk_bits=%d",
              K, L, chunk_bits);
    out.K          = K;
    out.L          = L;
    out.chunk_bits = chunk_bits;
    out.n          = n;
    const size_t  nb  = size_t(1) << K;
    const int64_t nch = out.n_chunk(), cs = int64_t(1) << chunk_bits;
    out.offset = mpig_host_alloc<uint32_t>(out.n_offset());
    out.key    = mpig_host_alloc<uint16_t>(size_t(L) * size_t(n));
    pool.run([&](int ith, int nth) {
        int64_t i0, i1;
        thread_pool::split(int64_t(L) * nch, ith, nth, i0, i1);
        for (int64_t it = i0; it < i1; ++it) {
            const int        t = int(it / nch);
            const int64_t    c = it % nch, b0 = c * cs, b1 = std::min(n, b0 + cs);
            const uint16_t * ct = codes_t + size_t(t) * size_t(n);
            uint32_t *       of = out.offset.get() + (size_t(c) * size_t(L) + size_t(t)) * (nb + 1);
            uint16_t *       ky = out.key.get() + size_t(t) * size_t(n) + size_t(b0);
            std::memset(of, 0, (nb + 1) * sizeof(uint32_t));
            for (int64_t i = b0; i < b1; ++i) ++of[ct[i] + 1];
            for (size_t b = 0; b < nb; ++b) of[b + 1] += of[b];
            for (int64_t i = b0; i < b1; ++i) ky[of[ct[i]]++] = uint16_t(i - b0);
            for (size_t b = nb; b > 0; --b) of[b] = of[b - 1];
            of[0] = 0;
        }
    });
}

LC_MPIG_AVX2 void mpig_host_attend(const mpig_host_layer & ly, int hk, const bf16_t * q, const uint16_t * codes,
                                   float scale, int min_hits, const lsh_log_weight & logw, mpig_host_scratch & sc,
                                   float * o, float * lse, std::vector<int32_t> * sampled) {
    const int                D  = ly.D;
    const mpig_host_tables & tb = ly.heads[size_t(hk)];
    const int                L  = tb.L;
    const size_t             nb = size_t(1) << tb.K;
    const int64_t            n = tb.n, nch = tb.n_chunk(), cs = int64_t(1) << tb.chunk_bits;
    const size_t             nw = size_t(cs + 63) / 64;
    const bool               bitmaps = min_hits <= 2;
    const uint16_t           m       = uint16_t(std::min(min_hits, 65535));
    if (bitmaps && sc.once.size() < nw) sc.once.resize(nw, 0), sc.twice.resize(nw, 0); // zero between calls
    if (!bitmaps && int64_t(sc.cnt.size()) < cs) sc.cnt.resize(size_t(cs), 0);        // zero between calls
    sc.hits.clear();
    const uint64_t tsc0 = __rdtsc();
    // 1. Walk: per chunk, the query's bucket in every table; a key is sampled on its min_hits-th collision. Up to
    // two collisions are counted in two bitmaps of the chunk (L1-resident, no branches), more in 16-bit counters.
    for (int64_t c = 0; c < nch && n > 0; ++c) {
        const uint32_t * of0 = tb.offset.get() + size_t(c) * size_t(L) * (nb + 1);
        const uint16_t * key = tb.key.get() + size_t(c * cs);
        constexpr int    ahead_of = 16, ahead_key = 8; // offsets, then the buckets' keys, prefetched ahead
        for (int t = 0; t < std::min(ahead_of, L); ++t)
            _mm_prefetch(reinterpret_cast<const char *>(of0 + size_t(t) * (nb + 1) + codes[t]), _MM_HINT_T0);
        if (!bitmaps) sc.touched.clear();
        for (int t = 0; t < L; ++t) {
            if (t + ahead_of < L)
                _mm_prefetch(reinterpret_cast<const char *>(of0 + size_t(t + ahead_of) * (nb + 1) + codes[t + ahead_of]),
                             _MM_HINT_T0);
            if (t + ahead_key < L) {
                const uint32_t * of2 = of0 + size_t(t + ahead_key) * (nb + 1) + codes[t + ahead_key];
                const uint16_t * ky2 = key + size_t(t + ahead_key) * size_t(n);
                for (uint32_t e = of2[0]; e < of2[1]; e += 32)
                    _mm_prefetch(reinterpret_cast<const char *>(ky2 + e), _MM_HINT_T0);
            }
            const uint32_t * of = of0 + size_t(t) * (nb + 1) + codes[t];
            const uint16_t * ky = key + size_t(t) * size_t(n);
            const uint32_t   e0 = of[0], e1 = of[1];
            sc.walked += e1 - e0;
            if (bitmaps) {
                uint64_t * once = sc.once.data();
                uint64_t * twice = sc.twice.data();
                for (uint32_t e = e0; e < e1; ++e) {
                    const uint32_t i = ky[e], w = i >> 6;
                    const uint64_t b = uint64_t(1) << (i & 63), x = once[w];
                    twice[w] |= x & b;
                    once[w] = x | b;
                }
                continue;
            }
            for (uint32_t e = e0; e < e1; ++e) {
                const uint32_t i  = ky[e];
                const uint16_t cn = sc.cnt[i];
                if (cn >= m) continue;
                if (cn == 0) sc.touched.push_back(i);
                sc.cnt[i] = uint16_t(cn + 1);
                if (cn + 1 == m) sc.hits.push_back(uint32_t(c * cs) + i);
            }
        }
        if (bitmaps) {
            // Hits in ascending order straight from the bitmap; both bitmaps cleared on the way.
            const uint64_t * res = min_hits <= 1 ? sc.once.data() : sc.twice.data();
            for (size_t w = 0; w < nw; ++w) {
                for (uint64_t x = res[w]; x; x &= x - 1)
                    sc.hits.push_back(uint32_t(c * cs) + uint32_t(w * 64) + uint32_t(__builtin_ctzll(x)));
                sc.once[w] = sc.twice[w] = 0;
            }
        } else {
            for (uint32_t i : sc.touched) sc.cnt[i] = 0;
        }
    }
    if (!bitmaps) std::sort(sc.hits.begin(), sc.hits.end()); // rows in memory order
    const int64_t  n_hit = int64_t(sc.hits.size());
    const uint64_t tsc1  = __rdtsc();
    sc.tsc_walk += tsc1 - tsc0;
    sc.sampled += n_hit;
    if (sampled) {
        sampled->clear();
        for (uint32_t i : sc.hits) sampled->push_back(int32_t(ly.begin + i));
    }
    if (n_hit == 0) {
        for (int d = 0; d < D; ++d) o[d] = 0.f;
        *lse = -INFINITY;
        return;
    }
    // 2. One pass over the sampled rows: score with the log-weight (the cosine to the centred key, as the CPU method
    // computes it), then the online softmax over the V rows.
    alignas(32) float qf[256];
    double            qq = 0.0, qmu = 0.0;
    for (int d = 0; d < D; ++d) {
        qf[d] = bf16_to_fp32(q[d]);
        qq += double(qf[d]) * qf[d];
        qmu += double(qf[d]) * tb.mu[size_t(d)];
    }
    const double  qn = std::sqrt(qq);
    sc.acc.assign(size_t(D), 0.f);
    float         zmax = -INFINITY, sum = 0.f;
    // Rows are random accesses: prefetched far ahead into L2 (more misses in flight than L1's fill buffers allow),
    // then into L1 a few rows ahead.
    constexpr int ahead = 4, ahead_l2 = 16;
    auto          prefetch = [&](int64_t j) {
        const uint32_t i = sc.hits[size_t(j)];
        prefetch_row(ly.k_row(hk, i), D);
        prefetch_row(ly.v_row(hk, i), D);
        _mm_prefetch(reinterpret_cast<const char *>(tb.norm.data() + i), _MM_HINT_T0);
    };
    auto prefetch_l2 = [&](int64_t j) {
        const uint32_t i = sc.hits[size_t(j)];
        for (int d = 0; d < D; d += 32) {
            _mm_prefetch(reinterpret_cast<const char *>(ly.k_row(hk, i) + d), _MM_HINT_T1);
            _mm_prefetch(reinterpret_cast<const char *>(ly.v_row(hk, i) + d), _MM_HINT_T1);
        }
    };
    for (int64_t j = 0; j < std::min<int64_t>(ahead_l2, n_hit); ++j) prefetch_l2(j);
    for (int64_t j = 0; j < std::min<int64_t>(ahead, n_hit); ++j) prefetch(j);
    for (int64_t j = 0; j < n_hit; ++j) {
        if (j + ahead_l2 < n_hit) prefetch_l2(j + ahead_l2);
        if (j + ahead < n_hit) prefetch(j + ahead);
        const uint32_t i     = sc.hits[size_t(j)];
        const float    qk    = dot_f32_bf16(qf, ly.k_row(hk, i), D);
        const double   denom = qn * double(tb.norm[i]);
        const float    z     = qk * scale + logw(denom > 0.0 ? (double(qk) - qmu) / denom : 0.0);
        float          c     = 1.f;
        if (z > zmax) {
            c    = zmax == -INFINITY ? 0.f : std::exp(zmax - z);
            zmax = z;
        }
        const float p = std::exp(z - zmax);
        sum           = sum * c + p;
        scale_axpy_bf16(sc.acc.data(), c, p, ly.v_row(hk, i), D);
    }
    for (int d = 0; d < D; ++d) o[d] = sc.acc[size_t(d)] / sum;
    *lse = zmax + std::log(sum);
    sc.tsc_rows += __rdtsc() - tsc1;
}

void mpig_host_attend_batch(const mpig_host_layer * const * layers, int n_seq, int n_head, const bf16_t * q,
                            const uint16_t * codes, float scale, int min_hits, const lsh_log_weight & logw,
                            std::vector<mpig_host_scratch> & scratch, float * o, float * lse, thread_pool & pool) {
    LC_ASSERT(int(scratch.size()) >= pool.n_threads(), "mpig: %zu scratch for %d threads", scratch.size(),
              pool.n_threads());
    pool.run([&](int ith, int nth) {
        int64_t i0, i1;
        thread_pool::split(int64_t(n_seq) * n_head, ith, nth, i0, i1);
        for (int64_t it = i0; it < i1; ++it) {
            const int               s = int(it / n_head), h = int(it % n_head);
            const mpig_host_layer & ly = *layers[s];
            const int               hk = h / (n_head / ly.n_head_kv);
            const int               L  = ly.heads[size_t(hk)].L;
            mpig_host_attend(ly, hk, q + size_t(it) * size_t(ly.D), codes + size_t(it) * size_t(L), scale, min_hits,
                             logw, scratch[size_t(ith)], o + size_t(it) * size_t(ly.D), lse + it);
        }
    });
}

} // namespace lc::cuda
