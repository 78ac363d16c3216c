// Speed of the D2O merge similarity search (kv/merge-sim.h) on random unit rows: GFLOP/s (2 * n_e * n_c * dim flops)
// per shape and ISA, one thread and the pool. Prints a markdown table; median of the runs after one warm-up.
// usage: longctx-merge-sim-sweep [runs=3] [threads=2]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/cpu-features.h"
#include "core/thread-pool.h"
#include "kv/merge-sim.h"

namespace {

std::vector<float> unit_rows(int64_t n, int dim, uint32_t seed) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float>              x(size_t(n * dim));
    for (int64_t i = 0; i < n; ++i) {
        double ss = 0;
        for (int d = 0; d < dim; ++d) {
            x[i * dim + d] = dist(rng);
            ss += double(x[i * dim + d]) * x[i * dim + d];
        }
        for (int d = 0; d < dim; ++d) x[i * dim + d] = float(x[i * dim + d] / std::sqrt(ss));
    }
    return x;
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct shape {
    int64_t n_e, n_c;
    int     dim;
};

} // namespace

int main(int argc, char ** argv) {
    const int runs = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
    const int nth  = argc > 2 ? std::max(1, std::atoi(argv[2])) : 2;
    // Prompt compression at 20% budget keeps n_c ~ n_e / 4; the last row: a long prompt (~40k tokens).
    const shape shapes[] = {{64, 8000, 128},   {1024, 1024, 64},  {2048, 512, 128},   {4096, 1024, 128},
                            {4096, 1024, 256}, {16384, 4096, 64}, {16384, 4096, 128}, {30000, 8000, 128}};

    lc::thread_pool pool1(1), pooln(nth);
    std::printf(
        "merge similarity search (max/argmax of E . C^T): GFLOP/s = 2 n_e n_c dim / time, median of %d runs\n\n", runs);
    std::printf("| n_e | n_c | dim | isa | 1 thread ms | GFLOP/s | %d threads ms | GFLOP/s |\n", nth);
    std::printf("|---:|---:|---:|---|---:|---:|---:|---:|\n");
    for (const shape & s : shapes) {
        const std::vector<float> E = unit_rows(s.n_e, s.dim, 1), C = unit_rows(s.n_c, s.dim, 2);
        std::vector<float>       u(size_t(s.n_e));
        std::vector<int32_t>     arg(size_t(s.n_e));
        const double             flops = 2.0 * double(s.n_e) * double(s.n_c) * s.dim;
        for (lc::cpu_isa isa : {lc::cpu_isa::AVX2, lc::cpu_isa::AVX512}) {
            if (!lc::cpu_isa_available(isa)) continue;
            double ms[2];
            for (int k = 0; k < 2; ++k) {
                lc::thread_pool & pool = k == 0 ? pool1 : pooln;
                // The largest shape is 61 GFLOP: one run on one thread, none as warm-up.
                const int n_runs = flops > 1e10 ? 1 : runs;
                if (flops <= 1e10)
                    lc::max_dot_argmax_isa(isa, E.data(), s.n_e, C.data(), s.n_c, s.dim, u.data(), arg.data(), pool);
                std::vector<double> t;
                for (int r = 0; r < n_runs; ++r) {
                    const double t0 = now_s();
                    lc::max_dot_argmax_isa(isa, E.data(), s.n_e, C.data(), s.n_c, s.dim, u.data(), arg.data(), pool);
                    t.push_back(now_s() - t0);
                }
                std::sort(t.begin(), t.end());
                ms[k] = t[t.size() / 2] * 1e3;
            }
            std::printf("| %lld | %lld | %d | %s | %.2f | %.1f | %.2f | %.1f |\n", (long long)s.n_e, (long long)s.n_c,
                        s.dim, lc::cpu_isa_name(isa), ms[0], flops / ms[0] * 1e-6, ms[1], flops / ms[1] * 1e-6);
        }
    }
    return 0;
}
