// MagicPIG sparse decode (see magicpig.h): table life cycle per layer, per-head sampling by collision count and
// the importance weights -ln(u_i + 1e-4).
#include "attn/decode/magicpig.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/log.h"
#include "model/model.h"

namespace lc {

namespace {

// q [D] f32 . k [D] fp16.
float dot_f32_f16(const float * q, const fp16_t * k, int D) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int    d = 0;
    for (; d + 16 <= D; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d + 8))),
                             a1);
    }
    for (; d + 8 <= D; d += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), a0);
    a0 = _mm256_add_ps(a0, a1);
    alignas(32) float t[8];
    _mm256_store_ps(t, a0);
    float s = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    for (; d < D; ++d) s += q[d] * fp16_to_fp32(k[d]);
    return s;
}

inline void prefetch_row(const fp16_t * k, int D) {
    for (int d = 0; d < D; d += 32) _mm_prefetch((const char *)(k + d), _MM_HINT_T0);
}

} // namespace

status magicpig_params_check(const magicpig_params & p) {
    if (p.K < 1 || p.K > simhash_k_max)
        return error(status_code::INVALID_ARGUMENT,
                     "--lsh K,L: K = %d bits per table is outside 1..%d (2^K buckets per table; default 10)", p.K,
                     simhash_k_max);
    if (p.L < 1)
        return error(status_code::INVALID_ARGUMENT, "--lsh K,L: L = %d tables; use at least 1 (default 150)", p.L);
    if (p.min_hits < 1 || p.min_hits > p.L)
        return error(status_code::INVALID_ARGUMENT,
                     "--lsh-min-hits %d: a key is sampled after that many collisions, which must be in 1..L "
                     "(--lsh K,L: L = %d; default 2)",
                     p.min_hits, p.L);
    if (p.n_sink < 0 || p.n_local < 0)
        return error(status_code::INVALID_ARGUMENT, "magicpig: negative sink (%d) or local window (%d)", p.n_sink,
                     p.n_local);
    return status::ok();
}

lsh_inclusion::lsh_inclusion(int L, int min_hits) : L_(L), m_(min_hits), ln_choose_(size_t(std::max(L, 0)) + 1) {
    for (int j = 0; j <= L; ++j)
        ln_choose_[size_t(j)] =
            std::lgamma(double(L) + 1) - std::lgamma(double(j) + 1) - std::lgamma(double(L - j) + 1);
}

double lsh_inclusion::operator()(double P) const {
    if (m_ <= 0) return 1.0;
    if (!(P > 0.0)) return 0.0;
    if (P >= 1.0) return 1.0;
    const double lp = std::log(P), lq = std::log1p(-P), r = P / (1.0 - P);
    const double mean = double(L_) * P;
    auto         term = [&](int j) { return std::exp(ln_choose_[size_t(j)] + j * lp + (L_ - j) * lq); };
    if (double(m_) > mean) {
        // Upper tail j = m..L is the small side: terms fall once past the mean (t_{j+1}/t_j = (L-j)/(j+1) P/(1-P)).
        double t = term(m_), s = 0.0;
        for (int j = m_; j <= L_; ++j) {
            s += t;
            if (double(j) > mean && t <= s * 1e-17) break;
            t *= double(L_ - j) / double(j + 1) * r;
        }
        return std::min(s, 1.0);
    }
    // Lower tail j = 0..m-1 (below the mean, so terms fall going down): u = 1 - that.
    double t = term(m_ - 1), s = 0.0;
    for (int j = m_ - 1; j >= 0; --j) {
        s += t;
        if (t <= s * 1e-17) break;
        if (j > 0) t *= double(j) / double(L_ - j + 1) / r;
    }
    return std::max(0.0, 1.0 - s);
}

double simhash_collision_prob(double cos_theta, int K) {
    const double c = std::min(1.0, std::max(-1.0, cos_theta));
    return std::pow(1.0 - std::acos(c) / M_PI, double(K));
}

lsh_log_weight::lsh_log_weight(int K, int L, int min_hits)
    : K_(K), incl_(L, min_hits), tab_(size_t(n_cell) + 1), exact_(size_t(n_cell), 0) {
    const double h = 2.0 / n_cell;
    for (int i = 0; i <= n_cell; ++i) tab_[size_t(i)] = float(exact(std::acos(std::min(1.0, -1.0 + i * h))));
    for (int i = 0; i < n_cell; ++i)
        for (double f : {0.125, 0.25, 0.5, 0.75, 0.875}) {
            const double lerp = tab_[size_t(i)] + f * (double(tab_[size_t(i) + 1]) - tab_[size_t(i)]);
            if (std::fabs(lerp - exact(std::acos(-1.0 + (i + f) * h))) > 1e-4) exact_[size_t(i)] = 1;
        }
}

double lsh_log_weight::exact(double theta) const {
    const double p = 1.0 - theta / M_PI;
    return -std::log(incl_(p > 0.0 ? std::pow(p, double(K_)) : 0.0) + 1e-4);
}

float lsh_log_weight::operator()(double cos_theta) const {
    const double c = std::min(1.0, std::max(-1.0, cos_theta));
    const double x = (c + 1.0) * (n_cell / 2.0);
    const int    i = std::min(int(x), n_cell - 1);
    if (exact_[size_t(i)]) return float(exact(std::acos(c)));
    const double f = x - i;
    return float(tab_[size_t(i)] + f * (double(tab_[size_t(i) + 1]) - tab_[size_t(i)]));
}

int64_t lsh_tables_sample(const lsh_tables & tb, const uint16_t * qc, int min_hits, uint16_t * cnt,
                          std::vector<uint32_t> & touched, std::vector<uint32_t> & out) {
    const uint16_t m      = uint16_t(std::min(min_hits, 65535));
    int64_t        walked = 0;
    touched.clear();
    // Every table's bucket lies in a different region of memory (tables of one head: 4 n L bytes, far beyond the
    // caches at long context), so each table costs two dependent misses (offset, then keys): prefetch the offsets
    // 16 tables ahead and the bucket's keys 8 tables ahead so the misses overlap.
    constexpr int ahead_of = 16, ahead_key = 8;
    for (int t = 0; t < std::min(ahead_of, tb.L); ++t)
        _mm_prefetch((const char *)(tb.table_offset(t) + qc[t]), _MM_HINT_T0);
    for (int t = 0; t < tb.L; ++t) {
        if (t + ahead_of < tb.L)
            _mm_prefetch((const char *)(tb.table_offset(t + ahead_of) + qc[t + ahead_of]), _MM_HINT_T0);
        if (t + ahead_key < tb.L) {
            const uint32_t * of2 = tb.table_offset(t + ahead_key) + qc[t + ahead_key];
            const uint32_t * ky2 = tb.table_key(t + ahead_key);
            for (uint32_t e = of2[0]; e < of2[1]; e += 16) _mm_prefetch((const char *)(ky2 + e), _MM_HINT_T0);
        }
        const uint32_t * of = tb.table_offset(t);
        const uint32_t * ky = tb.table_key(t);
        const uint32_t   e0 = of[qc[t]], e1 = of[qc[t] + 1];
        walked += e1 - e0;
        for (uint32_t e = e0; e < e1; ++e) {
            const uint32_t i = ky[e];
            const uint16_t c = cnt[i];
            if (c >= m) continue;
            if (c == 0) touched.push_back(i);
            cnt[i] = uint16_t(c + 1);
            if (c + 1 == m) out.push_back(i);
        }
    }
    for (uint32_t i : touched) cnt[i] = 0;
    return walked;
}

magicpig_decode::magicpig_decode(int n_layer, int n_head_kv, int head_dim, const magicpig_params & p)
    : p_(p), n_head_kv_(n_head_kv), head_dim_(head_dim), W_(simhash_matrix_make(head_dim, p.K, p.L, p.seed)),
      logw_(p.K, p.L, p.min_hits), layers_(size_t(n_layer)) {}

const lsh_tables * magicpig_decode::tables(int il, int h) const {
    if (il < 0 || il >= int(layers_.size())) return nullptr;
    const layer_state & st = layers_[size_t(il)];
    if (st.n_kv_built < 0 || h < 0 || h >= int(st.heads.size())) return nullptr;
    return &st.heads[size_t(h)];
}

int64_t magicpig_decode::built_n_kv(int il) const {
    return il >= 0 && il < int(layers_.size()) ? layers_[size_t(il)].n_kv_built : -1;
}

size_t magicpig_decode::table_bytes() const {
    size_t b = 0;
    for (const layer_state & st : layers_)
        for (const lsh_tables & tb : st.heads) b += tb.bytes();
    return b;
}

void magicpig_decode::truncate(int64_t n) {
    for (layer_state & st : layers_)
        if (st.n_kv_built >= 0 && n < st.n_kv_built) {
            st.n_kv_built = -1;
            st.pending    = false;
            st.heads.clear();
            st.heads.shrink_to_fit();
        }
}

void magicpig_decode::invalidate(int il) {
    if (il < 0 || il >= int(layers_.size())) return;
    layer_state & st = layers_[size_t(il)];
    st.n_kv_built    = -1;
    st.pending       = false;
    st.heads.clear();
}

void magicpig_decode::build(layer_state & st, const kv_view & kv, thread_pool & pool) {
    const auto    t0    = std::chrono::steady_clock::now();
    const int64_t n_kv  = kv.n_kv;
    const int64_t begin = std::min<int64_t>(p_.n_sink, n_kv);
    const int64_t end   = std::max<int64_t>(n_kv - p_.n_local, begin);
    st.heads.clear();
    lsh_tables_build(kv, begin, end, W_, st.heads, pool);
    st.n_kv_built  = n_kv;
    st.pending     = false;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    build_seconds_ += s;
    LC_LOG_D("magicpig: tables of %lld keys x %d KV heads (K=%d L=%d) built in %.3f s", (long long)(end - begin),
             kv.n_head_kv, p_.K, p_.L, s);
}

void magicpig_decode::prepare(int il, const kv_view & kv, thread_pool & pool) {
    if (il < 0 || il >= int(layers_.size()) || !sparse_layer(il)) return;
    layer_state & st = layers_[size_t(il)];
    if (st.n_kv_built < 0 || kv.n_kv < st.n_kv_built) {
        build(st, kv, pool);
        return;
    }
    // Tables from an earlier call: this prompt (or its part so far) is attended densely until they are rebuilt.
    const int64_t n_mid    = st.heads.empty() ? 0 : st.heads[0].n;
    const int64_t appended = kv.n_kv - st.n_kv_built;
    if (appended > std::min<int64_t>(p_.rebuild_after, std::max<int64_t>(n_mid, p_.n_local))) st.pending = true;
}

void magicpig_decode::plan(int il, const float * q, int n_head, const kv_view & kv, float scale, decode_plan & plan,
                           thread_pool & pool, int64_t * select_bytes) {
    LC_ASSERT(il >= 0 && il < int(layers_.size()) && sparse_layer(il), "magicpig: layer %d is not sparse", il);
    LC_ASSERT(kv.head_dim == head_dim_ && kv.n_head_kv == n_head_kv_ && n_head % n_head_kv_ == 0,
              "magicpig: cache head_dim %d / %d KV heads / %d query heads, built for %d / %d", kv.head_dim,
              kv.n_head_kv, n_head, head_dim_, n_head_kv_);
    layer_state & st = layers_[size_t(il)];
    if (stale(st, kv)) build(st, kv, pool);

    const int     D = head_dim_, L = p_.L;
    const int     n_group = n_head / n_head_kv_;
    const int64_t n_kv    = kv.n_kv;
    const int64_t n_mid   = st.heads.empty() ? 0 : st.heads[0].n;
    const int64_t begin   = st.heads.empty() ? 0 : st.heads[0].begin;
    const int64_t end     = begin + n_mid;

    plan.n_head = n_head;
    plan.group  = 1;
    plan.heads.resize(size_t(n_head));
    const int nth = pool.n_threads();
    if (int(scratch_.size()) < nth) scratch_.resize(size_t(nth));
    std::vector<int64_t> bytes(size_t(nth), 0);
    const int64_t        w_bytes = int64_t(W_.w.size() * sizeof(float));

    pool.run([&](int ith, int nth_) {
        int64_t h0, h1;
        thread_pool::split(n_head, ith, nth_, h0, h1);
        if (h0 >= h1) return;
        scratch & sc = scratch_[size_t(ith)];
        if (n_mid > 0) {
            if (int64_t(sc.cnt.size()) < n_mid) sc.cnt.resize(size_t(n_mid), 0); // zero between calls
            sc.codes.resize(size_t(h1 - h0) * size_t(L));
            simhash_codes(q + size_t(h0) * size_t(D), h1 - h0, W_, sc.codes.data());
            bytes[size_t(ith)] += w_bytes;
        }
        for (int64_t h = h0; h < h1; ++h) {
            decode_head_plan & hp = plan.heads[size_t(h)];
            hp.dense.clear();
            hp.idx.clear();
            hp.logw.clear();
            if (n_mid == 0) {
                if (n_kv > 0) hp.dense.push_back({0, int32_t(n_kv)});
                continue;
            }
            if (begin > 0) hp.dense.push_back({0, int32_t(begin)});
            if (end < n_kv) hp.dense.push_back({int32_t(end), int32_t(n_kv)});

            const int          hk = int(h) / n_group;
            const lsh_tables & tb = st.heads[size_t(hk)];
            const float *      qh = q + size_t(h) * size_t(D);
            sc.hits.clear();
            const int64_t walked = lsh_tables_sample(tb, sc.codes.data() + size_t(h - h0) * size_t(L), p_.min_hits,
                                                     sc.cnt.data(), sc.touched, sc.hits);
            const int64_t n_hit  = int64_t(sc.hits.size());

            double qq = 0.0, qmu = 0.0;
            for (int d = 0; d < D; ++d) {
                qq += double(qh[d]) * qh[d];
                qmu += double(qh[d]) * tb.mu[size_t(d)];
            }
            const double qn = std::sqrt(qq);
            hp.idx.resize(size_t(n_hit));
            hp.logw.resize(size_t(n_hit));
            // Ascending positions (the kernel then reads rows in cache order): a bitmap over the hit range, scanned
            // word by word, instead of a sort (n/64 words at most).
            if (n_hit > 0) {
                uint32_t lo = sc.hits[0], hi = sc.hits[0];
                for (uint32_t i : sc.hits) lo = std::min(lo, i), hi = std::max(hi, i);
                const size_t w0 = lo / 64, w1 = hi / 64 + 1;
                if (sc.bits.size() < w1) sc.bits.resize(w1, 0); // zero between calls
                for (uint32_t i : sc.hits) sc.bits[i / 64] |= uint64_t(1) << (i % 64);
                size_t j = 0;
                for (size_t w = w0; w < w1; ++w)
                    for (uint64_t x = sc.bits[w]; x; x &= x - 1)
                        sc.hits[j++] = uint32_t(w * 64 + size_t(__builtin_ctzll(x)));
                for (size_t w = w0; w < w1; ++w) sc.bits[w] = 0;
            }
            constexpr int64_t ahead = 8; // key rows and norms prefetched this many hits ahead
            for (int64_t j = 0; j < std::min(ahead, n_hit); ++j)
                prefetch_row(kv.k_row(begin + sc.hits[size_t(j)], hk), D);
            for (int64_t j = 0; j < n_hit; ++j) {
                if (j + ahead < n_hit) {
                    const uint32_t ia = sc.hits[size_t(j + ahead)];
                    prefetch_row(kv.k_row(begin + ia, hk), D);
                    _mm_prefetch((const char *)(tb.norm.data() + ia), _MM_HINT_T0);
                }
                const uint32_t i     = sc.hits[size_t(j)];
                const int64_t  t     = begin + i;
                const double   qk    = dot_f32_f16(qh, kv.k_row(t, hk), D);
                const double   denom = qn * double(tb.norm[i]);
                hp.idx[size_t(j)]    = int32_t(t);
                hp.logw[size_t(j)]   = logw_(denom > 0.0 ? (qk - qmu) / denom : 0.0);
            }
            bytes[size_t(ith)] +=
                int64_t(D) * 4 + int64_t(L) * 8 + walked * 6 + int64_t(sc.hits.size()) * (int64_t(D) * 2 + 4);
        }
    });
    (void)scale;
    if (select_bytes)
        for (int64_t b : bytes) *select_bytes += b;
}

result<std::unique_ptr<decode_method>> magicpig_decode_create(const model_hparams & hp, const attn_config & c) {
    const decode_params & o = c.decode_opts;
    magicpig_params       p;
    p.K        = o.lsh_k;
    p.L        = o.lsh_l;
    p.min_hits = o.lsh_min_hits;
    p.n_sink   = o.sink();
    p.n_local  = o.local();
    LC_RETURN_IF_ERROR(magicpig_params_check(p));
    return std::unique_ptr<decode_method>(std::make_unique<magicpig_decode>(hp.n_layer, hp.n_head_kv, hp.head_dim, p));
}

result<std::unique_ptr<decode_method>> magicpig_decode_create(const model & m, const attn_config & c) {
    return magicpig_decode_create(m.hparams(), c);
}

} // namespace lc
