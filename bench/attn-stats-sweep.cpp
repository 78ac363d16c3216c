// Cost of the attention column sums (attn/attn-stats.h) next to the attention itself, on synthetic data: chunked
// prefill (chunks of 512, each attending everything before it) and single decode steps, for the SmolLM2-135M and
// Gemma 3 270M attention shapes. Prints a markdown table; median of the runs.
// usage: longctx-attn-stats-sweep [runs=5] [threads=2] [max_prefill_tokens=16384] [shape=all|smollm2|gemma3]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-stats.h"
#include "core/cpu-features.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace {

struct shape {
    const char * key;
    const char * name;
    int          n_head, n_head_kv, head_dim;
};

constexpr int64_t k_chunk        = 512;
constexpr int     k_decode_steps = 32; // decode calls per timed run

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float>              x(n);
    for (float & v : x) v = dist(rng);
    return x;
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// One layer of one sequence holding n_kv random tokens.
struct cache {
    lc::kv_cache kv;
    cache(const shape & s, int64_t n_kv) : kv(1, s.n_head_kv, s.head_dim, n_kv) {
        if (!kv.reserve(0, n_kv).is_ok()) {
            std::fprintf(stderr, "attn-stats-sweep: cannot reserve %lld tokens\n", (long long)n_kv);
            std::exit(1);
        }
        const int64_t step = 4096;
        for (int64_t t0 = 0; t0 < n_kv; t0 += step) {
            const int64_t            n  = std::min(step, n_kv - t0);
            const std::vector<float> kr = random_floats(size_t(n * s.n_head_kv * s.head_dim), uint32_t(t0 + 1));
            const std::vector<float> vr = random_floats(kr.size(), uint32_t(t0 + 2));
            kv.write(0, 0, t0, n, kr.data(), vr.data());
        }
    }
};

struct timing {
    double dense_s, both_s, colsum_s; // colsum_s: the colsum calls of the combined run alone
};

// Median over runs of: fn(false, cs) (attention alone) and fn(true, cs) (attention then column sums, adding the
// time of the column-sum calls to cs), interleaved so that both see the same load.
template <class F> timing time_runs(int runs, F && fn) {
    std::vector<double> a, b, c;
    double              cs = 0;
    fn(false, cs); // warm-up: pages, pool, scratch
    fn(true, cs);
    for (int r = 0; r < runs; ++r) {
        double t0 = now_s();
        fn(false, cs);
        a.push_back(now_s() - t0);
        cs = 0;
        t0 = now_s();
        fn(true, cs);
        b.push_back(now_s() - t0);
        c.push_back(cs);
    }
    return {median(a), median(b), median(c)};
}

void row(const shape & s, const char * what, double unit, const char * unit_name, const timing & t) {
    std::printf("| %s | %s | %.2f %s | %.2f %s | %.2f %s | %+.0f%% | %.0f%% |\n", s.name, what, t.dense_s * unit,
                unit_name, t.both_s * unit, unit_name, t.colsum_s * unit, unit_name,
                100.0 * (t.both_s - t.dense_s) / t.dense_s, 100.0 * t.colsum_s / t.dense_s);
    std::fflush(stdout);
}

} // namespace

int main(int argc, char ** argv) {
    const int     runs     = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
    const int     nth      = argc > 2 ? std::max(1, std::atoi(argv[2])) : 2;
    const int64_t max_n    = argc > 3 ? std::atoll(argv[3]) : 16384;
    const char *  only     = argc > 4 ? argv[4] : "all";
    const shape   shapes[] = {{"smollm2", "SmolLM2-135M (9/3 heads, d 64)", 9, 3, 64},
                              {"gemma3", "Gemma 3 270M (4/1 heads, d 256)", 4, 1, 256}};

    lc::thread_pool pool(nth);
    std::printf("attention column sums: %s kernels, %d threads, median of %d runs; overhead = (dense + colsum) / dense "
                "- 1; colsum / dense: the column-sum calls of the combined runs timed alone\n\n",
                lc::cpu_isa_name(lc::cpu_isa_best()), nth, runs);
    std::printf("| shape | case | dense | dense + colsum | colsum calls | overhead | colsum / dense |\n");
    std::printf("|---|---|---:|---:|---:|---:|---:|\n");
    for (const shape & s : shapes) {
        if (std::strcmp(only, "all") != 0 && std::strcmp(only, s.key) != 0) continue;
        const float scale = 1.0f / std::sqrt(float(s.head_dim));
        for (int64_t n : {int64_t(4096), int64_t(8192), int64_t(16384)}) {
            if (n > max_n) continue;
            cache                    c(s, n);
            const lc::kv_view        view = c.kv.view(0, 0);
            const std::vector<float> q    = random_floats(size_t(k_chunk * s.n_head * s.head_dim), 7);
            std::vector<float>       o(q.size()), lse(size_t(k_chunk * s.n_head));
            std::vector<float>       colsum(size_t(s.n_head * n), 0.0f);
            const timing             t = time_runs(runs, [&](bool stats, double & cs) {
                for (int64_t p0 = 0; p0 < n; p0 += k_chunk) {
                    lc::attn_dense(q.data(), k_chunk, p0, s.n_head, view, scale, o.data(), lse.data(), pool);
                    if (stats) {
                        const double t0 = now_s();
                        lc::attn_colsum(q.data(), k_chunk, p0, s.n_head, view, scale, lse.data(), false, colsum.data(),
                                                    n, pool);
                        cs += now_s() - t0;
                    }
                }
            });
            char                     what[64];
            std::snprintf(what, sizeof(what), "prefill %lld (chunks of %lld)", (long long)n, (long long)k_chunk);
            row(s, what, 1e3, "ms", t);
        }
        for (int64_t depth : {int64_t(8192), int64_t(32768)}) {
            cache                    c(s, depth);
            const lc::kv_view        view = c.kv.view(0, 0);
            const std::vector<float> q    = random_floats(size_t(s.n_head * s.head_dim), 9);
            std::vector<float>       o(q.size()), lse(size_t(s.n_head));
            std::vector<float>       colsum(size_t(s.n_head * depth), 0.0f);
            timing                   t = time_runs(runs, [&](bool stats, double & cs) {
                for (int step = 0; step < k_decode_steps; ++step) {
                    lc::attn_dense(q.data(), 1, depth - 1, s.n_head, view, scale, o.data(), lse.data(), pool);
                    if (stats) {
                        const double t0 = now_s();
                        lc::attn_colsum(q.data(), 1, depth - 1, s.n_head, view, scale, lse.data(), false, colsum.data(),
                                                          depth, pool);
                        cs += now_s() - t0;
                    }
                }
            });
            t.dense_s /= k_decode_steps;
            t.both_s /= k_decode_steps;
            t.colsum_s /= k_decode_steps;
            char what[64];
            std::snprintf(what, sizeof(what), "decode step at depth %lld", (long long)depth);
            row(s, what, 1e6, "us", t);
        }
    }
    return 0;
}
