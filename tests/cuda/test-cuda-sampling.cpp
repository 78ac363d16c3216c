// The device sampler (backend/cuda/sampling.cuh) against the CPU sampler (runtime/sampling.h) on random logits:
// for many settings, seeds and draws, the token picked from the same uniform number must be the CPU's, except
// where that number lies within float rounding of a boundary of the CPU's CDF (counted and printed). Also: the
// sampler replayed from a CUDA graph with changing settings, and its time per row. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cuda/sampling.cuh"
#include "runtime/sampling.h"

namespace {

using namespace lc;

bool have_gpu() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return n > 0;
}

#define CK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// Logit rows of several shapes: gaussian of a few widths, coarse values with many exact ties, a peaked row, and
// one with NaN, -inf and -0/+0 entries.
std::vector<std::vector<float>> make_rows(int n_vocab, uint32_t seed) {
    std::mt19937                    g(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<std::vector<float>> rows;
    for (float sd : {1.0f, 3.0f, 8.0f}) {
        std::vector<float> r(static_cast<size_t>(n_vocab));
        for (float & v : r) v = sd * nd(g);
        rows.push_back(std::move(r));
    }
    { // ties: multiples of 1/4 in [-3, 3]
        std::vector<float> r(static_cast<size_t>(n_vocab));
        for (float & v : r) v = std::round(nd(g) * 4.0f) / 4.0f;
        rows.push_back(std::move(r));
    }
    { // peaked: a few tokens far above a flat floor, some of them tied
        std::vector<float> r(static_cast<size_t>(n_vocab));
        for (float & v : r) v = 0.5f * nd(g);
        for (int i = 0; i < 12; ++i) r[size_t(g() % uint32_t(n_vocab))] = 9.0f + float(i % 4) * 0.7f;
        rows.push_back(std::move(r));
    }
    { // NaN, -inf, signed zeros
        std::vector<float> r(static_cast<size_t>(n_vocab));
        for (float & v : r) v = 2.0f * nd(g);
        for (int i = 0; i < n_vocab; i += 97) r[size_t(i)] = std::numeric_limits<float>::quiet_NaN();
        for (int i = 5; i < n_vocab; i += 101) r[size_t(i)] = -std::numeric_limits<float>::infinity();
        for (int i = 7; i < n_vocab; i += 89) r[size_t(i)] = (i / 89) % 2 ? -0.0f : 0.0f;
        rows.push_back(std::move(r));
    }
    return rows;
}

// Distance of u to the nearest boundary of the CPU's CDF (its walk order, float probabilities).
double cdf_distance(sampler & s, const std::vector<float> & row, double u) {
    std::vector<token_prob> d;
    s.distribution(row.data(), int32_t(row.size()), d);
    double cum = 0.0, best = std::abs(u);
    for (const token_prob & t : d) {
        cum += t.p;
        best = std::min(best, std::abs(u - cum));
    }
    return best;
}

struct dev_sampler {
    int       n_vocab = 0;
    float *   logits  = nullptr;
    void *    ws      = nullptr;
    size_t    ws_bytes = 0;
    int32_t * out     = nullptr;
    cuda::sample_params * params = nullptr;
    explicit dev_sampler(int n) : n_vocab(n) {
        ws_bytes = cuda::sample_workspace_bytes(n);
        EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&logits), size_t(n) * 4), cudaSuccess);
        EXPECT_EQ(cudaMalloc(&ws, ws_bytes), cudaSuccess);
        EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&out), 4), cudaSuccess);
        EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&params), sizeof(cuda::sample_params)), cudaSuccess);
    }
    ~dev_sampler() {
        cudaFree(logits);
        cudaFree(ws);
        cudaFree(out);
        cudaFree(params);
    }
    int32_t sample(const cuda::sample_params & p) {
        EXPECT_EQ(cudaMemcpy(params, &p, sizeof(p), cudaMemcpyHostToDevice), cudaSuccess);
        EXPECT_EQ(cudaMemset(out, 0xff, 4), cudaSuccess);
        cuda::sample_row(logits, n_vocab, params, p.top_k, ws, ws_bytes, out, nullptr);
        int32_t t = -2;
        EXPECT_EQ(cudaMemcpy(&t, out, 4, cudaMemcpyDeviceToHost), cudaSuccess);
        return t;
    }
};

TEST(CudaSampling, MatchesCpuSampler) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const double tol   = 1e-6; // a draw this close to a CDF boundary (float probabilities) may fall either side
    long         n_all = 0, n_diff = 0, n_exc = 0;
    for (int n_vocab : {49152, 151936, 7}) {
        dev_sampler ds(n_vocab);
        const auto  rows = make_rows(n_vocab, uint32_t(n_vocab));
        for (size_t ir = 0; ir < rows.size(); ++ir) {
            const auto & row = rows[ir];
            CK(cudaMemcpy(ds.logits, row.data(), row.size() * 4, cudaMemcpyHostToDevice));
            int i_set = 0;
            for (float temp : {0.4f, 1.0f, 1.7f})
                for (int32_t top_k : {0, 1, 40, 600, 1000})
                    for (float top_p : {1.0f, 0.9f, 0.5f, 0.05f})
                        for (float min_p : {0.0f, 0.05f, 0.3f}) {
                            sampling_params sp;
                            sp.temp  = temp;
                            sp.top_k = top_k;
                            sp.top_p = top_p;
                            sp.min_p = min_p;
                            sp.seed  = 1000u * uint64_t(ir) + uint64_t(i_set++);
                            sampler cpu(sp), dev(sp), dist(sp);
                            for (int draw = 0; draw < 6; ++draw) {
                                const double  u = dev.next_uniform();
                                const int32_t g = ds.sample(cuda::make_sample_params(temp, top_k, top_p, min_p, u));
                                const int32_t c = cpu.sample(row.data(), n_vocab);
                                ++n_all;
                                if (g == c) continue;
                                ++n_diff;
                                const double dist_u = cdf_distance(dist, row, u);
                                if (dist_u < tol) {
                                    ++n_exc;
                                    continue;
                                }
                                ADD_FAILURE() << "V " << n_vocab << " row " << ir << " temp " << temp << " top_k "
                                              << top_k << " top_p " << top_p << " min_p " << min_p << " draw "
                                              << draw << " u " << u << ": gpu " << g << ", cpu " << c
                                              << " (u is " << dist_u << " from the nearest CDF boundary)";
                            }
                        }
        }
    }
    std::printf("device sampler vs CPU: %ld draws, %ld differ, %ld of them within %.0e of a CDF boundary\n", n_all,
                n_diff, n_exc, tol);
    EXPECT_EQ(n_diff, n_exc);
    EXPECT_LE(n_exc, 2);
}

// Draws at u right next to each CDF boundary of the CPU: on either side of it by 1e-9 the device picks the CPU's
// token (its sums agree with the CPU's to far better than 1e-9).
TEST(CudaSampling, BoundariesOfTheCdf) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const int   n_vocab = 49152;
    dev_sampler ds(n_vocab);
    const auto  rows = make_rows(n_vocab, 77);
    int         n    = 0;
    for (size_t ir = 0; ir < rows.size(); ++ir) {
        const auto & row = rows[ir];
        CK(cudaMemcpy(ds.logits, row.data(), row.size() * 4, cudaMemcpyHostToDevice));
        for (int32_t top_k : {0, 40}) {
            sampling_params sp;
            sp.temp  = 1.0f;
            sp.top_k = top_k;
            sp.top_p = 0.9f;
            sp.min_p = 0.02f;
            sp.seed  = 1;
            sampler                 s(sp);
            std::vector<token_prob> d;
            s.distribution(row.data(), n_vocab, d);
            // The CPU's own boundaries in double: its sums walk the same order.
            double sum = 0.0;
            for (const token_prob & t : d) sum += t.p;
            double cum = 0.0;
            for (size_t i = 0; i + 1 < d.size() && i < 30; ++i) {
                cum += d[i].p;
                for (double eps : {-1e-5, 1e-5}) { // float p: boundaries known to ~1e-7
                    const double u = cum / sum + eps;
                    // the CPU's pick for this u, from its distribution
                    double  c2   = 0.0;
                    int32_t want = d.back().id;
                    for (const token_prob & t : d) {
                        c2 += double(t.p) / sum;
                        if (u < c2) {
                            want = t.id;
                            break;
                        }
                    }
                    const int32_t g = ds.sample(cuda::make_sample_params(1.0f, top_k, 0.9f, 0.02f, u));
                    EXPECT_EQ(g, want) << "row " << ir << " top_k " << top_k << " boundary " << i << " eps " << eps;
                    ++n;
                }
            }
        }
    }
    std::printf("%d draws next to CDF boundaries\n", n);
}

// The sampler inside a CUDA graph: one capture per kernel path (sample_row_path), replayed with other settings and
// draws written to the same parameter buffer, gives what eager calls give; and its time per row.
TEST(CudaSampling, GraphReplayAndTiming) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    for (int n_vocab : {49152, 151936}) {
        dev_sampler  ds(n_vocab);
        const auto   rows = make_rows(n_vocab, 5);
        cudaStream_t st   = nullptr;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CK(cudaMemcpy(ds.logits, rows[1].data(), size_t(n_vocab) * 4, cudaMemcpyHostToDevice));
        cuda::sample_params * hp = nullptr;
        CK(cudaMallocHost(reinterpret_cast<void **>(&hp), sizeof(*hp)));
        *hp = cuda::make_sample_params(0.8f, 40, 0.95f, 0.05f, 0.5);
        CK(cudaMemcpy(ds.params, hp, sizeof(*hp), cudaMemcpyHostToDevice));
        cudaGraph_t     gs[2]  = {};
        cudaGraphExec_t ges[2] = {};
        for (int32_t k : {0, 40}) { // path 0, path 1
            const int path = cuda::sample_row_path(n_vocab, k);
            ASSERT_EQ(path, k ? 1 : 0);
            cuda::sample_row(ds.logits, n_vocab, ds.params, k, ds.ws, ds.ws_bytes, ds.out, st); // warm-up
            CK(cudaStreamSynchronize(st));
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            cuda::sample_row(ds.logits, n_vocab, ds.params, k, ds.ws, ds.ws_bytes, ds.out, st);
            CK(cudaStreamEndCapture(st, &gs[path]));
            CK(cudaGraphInstantiate(&ges[path], gs[path], 0));
        }
        std::mt19937_64 rng(3);
        for (int i = 0; i < 40; ++i) {
            const float   temp  = 0.3f + 0.1f * float(i % 15);
            const int32_t top_k = i % 4 == 3 ? 300 : (i % 3) * 20; // 0: path 0; 20, 40, 300: path 1
            const float   top_p = i % 2 ? 0.8f : 1.0f;
            const float   min_p = i % 5 ? 0.0f : 0.1f;
            const double  u     = double(rng() >> 11) * 0x1.0p-53;
            *hp                 = cuda::make_sample_params(temp, top_k, top_p, min_p, u);
            CK(cudaMemcpyAsync(ds.params, hp, sizeof(*hp), cudaMemcpyHostToDevice, st));
            CK(cudaGraphLaunch(ges[cuda::sample_row_path(n_vocab, top_k)], st));
            int32_t gt = -1;
            CK(cudaMemcpyAsync(&gt, ds.out, 4, cudaMemcpyDeviceToHost, st));
            CK(cudaStreamSynchronize(st));
            EXPECT_EQ(gt, ds.sample(*hp)) << "replay " << i;
        }
        // time per row: graph replays between events, median of 7 runs of 50
        *hp = cuda::make_sample_params(0.8f, 40, 0.95f, 0.05f, 0.5);
        CK(cudaMemcpy(ds.params, hp, sizeof(*hp), cudaMemcpyHostToDevice));
        auto time_it = [&](const char * what) {
            cudaGraphExec_t ge = ges[cuda::sample_row_path(n_vocab, hp->top_k)];
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0);
            cudaEventCreate(&e1);
            std::vector<float> t;
            for (int r = 0; r < 7; ++r) {
                cudaEventRecord(e0, st);
                for (int i = 0; i < 50; ++i) cudaGraphLaunch(ge, st);
                cudaEventRecord(e1, st);
                cudaEventSynchronize(e1);
                float ms = 0;
                cudaEventElapsedTime(&ms, e0, e1);
                t.push_back(ms * 1000.0f / 50.0f);
            }
            std::sort(t.begin(), t.end());
            std::printf("sample_row, V %d, %s: %.1f us per row (median of 7 x 50 graph replays)\n", n_vocab, what,
                        double(t[3]));
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        };
        time_it("top_k 40, top_p 0.95, min_p 0.05");
        *hp = cuda::make_sample_params(0.8f, 40, 1.0f, 0.0f, 0.5);
        CK(cudaMemcpy(ds.params, hp, sizeof(*hp), cudaMemcpyHostToDevice));
        time_it("top_k 40, top_p 1, min_p 0");
        *hp = cuda::make_sample_params(0.8f, 0, 0.95f, 0.05f, 0.5);
        CK(cudaMemcpy(ds.params, hp, sizeof(*hp), cudaMemcpyHostToDevice));
        time_it("top_k 0, top_p 0.95, min_p 0.05");
        *hp = cuda::make_sample_params(0.8f, 0, 0.95f, 0.0f, 0.5);
        CK(cudaMemcpy(ds.params, hp, sizeof(*hp), cudaMemcpyHostToDevice));
        time_it("top_k 0, top_p 0.95, min_p 0");
        for (int i = 0; i < 2; ++i) {
            cudaGraphExecDestroy(ges[i]);
            cudaGraphDestroy(gs[i]);
        }
        cudaFreeHost(hp);
        cudaStreamDestroy(st);
    }
}

} // namespace
