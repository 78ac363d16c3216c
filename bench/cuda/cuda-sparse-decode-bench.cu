// Times one decode step of sparse attention on the GPU at Llama-3-8B shapes (32 query heads, 8 KV heads, head_dim
// 128, bf16 paged cache): our dense split-K kernel against Loki (rank d = D / 4, key budget 25%), Quest (16-token
// pages, same key budget) and exact top-k, each as a whole step (scores + top-k + plan + gather) captured in one CUDA
// graph, with one selection per KV head. Medians of CUDA-event timings after a warm-up, L2 flushed before each run.
// Usage: longctx-cuda-sparse-decode-bench [--depth 32768,131072] [--batch 1,16] [--reps 30] [--budget 0.25]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/attn-sparse-decode.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/decode-select.cuh"
#include "core/fp16.h"

#include "bench-util.cuh"

namespace {

using namespace lc;
using namespace lc::cuda_bench;

constexpr int H = 32, HKV = 8, D = 128, G = H / HKV, QP = 16;

void *       g_flush       = nullptr;
const size_t g_flush_bytes = size_t(256) << 20;

// Median over reps of one graph launch, after warm-ups; a 256 MiB memset before each run evicts L2.
double median_us(cudaGraphExec_t exec, cudaStream_t st, int warm, int reps) {
    cudaEvent_t e0, e1;
    LC_CUDA_CHECK(cudaEventCreate(&e0));
    LC_CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < warm; ++i) LC_CUDA_CHECK(cudaGraphLaunch(exec, st));
    std::vector<double> ts;
    for (int i = 0; i < reps; ++i) {
        LC_CUDA_CHECK(cudaMemsetAsync(g_flush, i & 0xff, g_flush_bytes, st));
        LC_CUDA_CHECK(cudaEventRecord(e0, st));
        LC_CUDA_CHECK(cudaGraphLaunch(exec, st));
        LC_CUDA_CHECK(cudaEventRecord(e1, st));
        LC_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        LC_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        ts.push_back(ms * 1e3);
    }
    LC_CUDA_CHECK(cudaEventDestroy(e0));
    LC_CUDA_CHECK(cudaEventDestroy(e1));
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

template <typename F> cudaGraphExec_t capture(cudaStream_t st, F && fn) {
    fn(); // grows the workspaces outside the capture
    LC_CUDA_CHECK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    LC_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    fn();
    LC_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    cudaGraphExec_t exec;
    LC_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    LC_CUDA_CHECK(cudaGraphDestroy(g));
    return exec;
}

struct row {
    const char * name;
    double       us, bytes;
};

void bench(int64_t N, int B, int reps, double budget) {
    const int64_t pages_per_seq = (N + 63) / 64, n_pages = pages_per_seq * B;
    const size_t  pool_elems    = size_t(n_pages) * HKV * 64 * D;
    bf16_t *      k = nullptr, *v = nullptr, *q = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&k, pool_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&v, pool_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&q, size_t(B) * H * D * 2));
    fill(k, pool_elems, 1, 2.f);
    fill(v, pool_elems, 2, 2.f);
    fill(q, size_t(B) * H * D, 3, 1.f);
    std::vector<int32_t> perm(static_cast<size_t>(n_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
    std::vector<int32_t> lens(static_cast<size_t>(B), int32_t(N));
    int32_t *            pages = nullptr, *n_kv = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&pages, perm.size() * 4));
    LC_CUDA_CHECK(cudaMalloc(&n_kv, lens.size() * 4));
    LC_CUDA_CHECK(cudaMemcpy(pages, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
    LC_CUDA_CHECK(cudaMemcpy(n_kv, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
    cudaStream_t st;
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const float scale = 1.f / std::sqrt(float(D));
    float *     o     = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&o, size_t(B) * H * D * 4));

    // Loki's store and basis (random: the timing does not depend on it), Quest's bounds.
    const int          dp = D / 4;
    std::vector<float> proj(size_t(HKV) * D * dp);
    std::mt19937       rng(5);
    std::normal_distribution<float> nd(0.f, 1.f / std::sqrt(float(D)));
    for (float & x : proj) x = nd(rng);
    float *  dproj = nullptr;
    fp16_t * lk    = nullptr;
    bf16_t * qb    = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&dproj, proj.size() * 4));
    LC_CUDA_CHECK(cudaMemcpy(dproj, proj.data(), proj.size() * 4, cudaMemcpyHostToDevice));
    LC_CUDA_CHECK(cudaMalloc(&lk, size_t(n_pages) * HKV * dp * 64 * 2));
    LC_CUDA_CHECK(cudaMalloc(&qb, size_t(n_pages) * HKV * (64 / QP) * 2 * D * 2));
    cuda::loki_store_gpu  ls{lk, dproj, dp, n_pages};
    cuda::quest_store_gpu qs{qb, QP, n_pages};

    cuda::decode_select_args sa;
    sa.q            = q;
    sa.n_seq        = B;
    sa.n_head       = H;
    sa.n_head_kv    = HKV;
    sa.head_dim     = D;
    sa.k_pool       = k;
    sa.pages        = pages;
    sa.pages_stride = pages_per_seq;
    sa.n_kv         = n_kv;
    sa.n_kv_max     = N;
    sa.group        = G;
    sa.budget_frac  = budget;
    sa.scale        = scale;
    LC_ASSERT(cuda::loki_take_in_gpu(sa, ls, 0, st).is_ok(), "loki take-in");
    LC_ASSERT(cuda::quest_take_in_gpu(sa, qs, 0, st).is_ok(), "quest take-in");

    // dense
    const int    ns_d  = cuda::attn_decode_n_split(B, H, HKV, D, N);
    const size_t wb_d  = cuda::attn_decode_workspace_bytes(B, H, D, ns_d);
    void *       ws_d  = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&ws_d, wb_d));
    cuda::attn_decode_args da;
    da.q               = q;
    da.n_seq           = B;
    da.n_head          = H;
    da.k_pool          = k;
    da.v_pool          = v;
    da.n_head_kv       = HKV;
    da.head_dim        = D;
    da.pages           = pages;
    da.pages_stride    = pages_per_seq;
    da.n_kv            = n_kv;
    da.n_kv_max        = N;
    da.scale           = scale;
    da.o               = o;
    da.workspace       = ws_d;
    da.workspace_bytes = wb_d;

    cuda::decode_select_workspace ws;
    cuda::decode_plan_buf         plan;
    const int64_t rows_tok  = cuda::decode_select_rows_max(sa, 1);
    const int64_t rows_q    = cuda::decode_select_rows_max(sa, QP);
    const int     ns_s      = cuda::attn_sparse_decode_n_split(B, H, G, D, std::max(rows_tok, rows_q));
    const size_t  wb_s      = cuda::attn_sparse_decode_workspace_bytes(B, H, D, ns_s);
    void *        ws_s      = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&ws_s, wb_s));
    auto gather = [&](int64_t rows) {
        cuda::attn_sparse_decode_args ga;
        ga.q               = q;
        ga.n_seq           = B;
        ga.n_head          = H;
        ga.k_pool          = k;
        ga.v_pool          = v;
        ga.n_head_kv       = HKV;
        ga.head_dim        = D;
        ga.pages           = pages;
        ga.pages_stride    = pages_per_seq;
        ga.plan            = cuda::decode_plan_view(plan, G, rows, false);
        ga.scale           = scale;
        ga.o               = o;
        ga.workspace       = ws_s;
        ga.workspace_bytes = wb_s;
        LC_ASSERT(cuda::attn_sparse_decode(ga, st).is_ok(), "gather");
    };

    // Bytes each step must move at least: K and V of the attended rows, plus what the selection reads.
    const double  kv_row  = 2.0 * D * 2;                                 // K + V of one token, one KV head
    const double  dense_b = double(B) * HKV * N * kv_row;
    const int64_t k_tok   = int64_t(std::ceil(budget * double(N)));
    const double  rows_l  = double(std::min<int64_t>(N, k_tok + sa.n_sink + sa.n_local));
    const int64_t kp      = (k_tok + QP - 1) / QP;
    const double  rows_qt = double(std::min<int64_t>(N, kp * QP + sa.n_sink + sa.n_local + QP));
    const double  loki_b  = double(B) * HKV * (N * dp * 2.0 + rows_l * kv_row);
    const double  quest_b = double(B) * HKV * ((N / QP) * 2.0 * D * 2 + rows_qt * kv_row);
    const double  topk_b  = double(B) * HKV * (N * D * 2.0 + rows_l * kv_row);

    std::vector<row> rows;
    const int        warm = 3;
    {
        cudaGraphExec_t ex = capture(st, [&] { LC_ASSERT(cuda::attn_decode(da, st).is_ok(), "dense"); });
        rows.push_back({"dense (ours)", median_us(ex, st, warm, reps), dense_b});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
    }
    {
        cudaGraphExec_t ex = capture(st, [&] {
            LC_ASSERT(cuda::loki_select_gpu(sa, ls, ws, plan, st).is_ok(), "loki");
            gather(rows_tok);
        });
        rows.push_back({"Loki d=D/4 (whole step)", median_us(ex, st, warm, reps), loki_b});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
        ex = capture(st, [&] { LC_ASSERT(cuda::loki_select_gpu(sa, ls, ws, plan, st).is_ok(), "loki"); });
        rows.push_back({"  Loki selection alone", median_us(ex, st, warm, reps), double(B) * HKV * N * dp * 2.0});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
        sa.loki_separate = true;
        ex = capture(st, [&] { LC_ASSERT(cuda::loki_select_gpu(sa, ls, ws, plan, st).is_ok(), "loki"); });
        rows.push_back({"  Loki selection, separate kernels", median_us(ex, st, warm, reps), double(B) * HKV * N * dp * 2.0});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
        sa.loki_separate = false;
        sa.loki_pipe     = true;
        ex = capture(st, [&] { LC_ASSERT(cuda::loki_select_gpu(sa, ls, ws, plan, st).is_ok(), "loki"); });
        rows.push_back({"  Loki selection, one-launch pipeline", median_us(ex, st, warm, reps),
                        double(B) * HKV * N * dp * 2.0});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
        sa.loki_pipe = false;
        ex = capture(st, [&] { gather(rows_tok); });
        rows.push_back({"  Loki gather alone", median_us(ex, st, warm, reps), double(B) * HKV * rows_l * kv_row});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
    }
    {
        cudaGraphExec_t ex = capture(st, [&] {
            LC_ASSERT(cuda::quest_select_gpu(sa, qs, ws, plan, st).is_ok(), "quest");
            gather(rows_q);
        });
        rows.push_back({"Quest P=16 (whole step)", median_us(ex, st, warm, reps), quest_b});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
    }
    {
        cudaGraphExec_t ex = capture(st, [&] {
            LC_ASSERT(cuda::topk_select_gpu(sa, ws, plan, st).is_ok(), "topk");
            gather(rows_tok);
        });
        rows.push_back({"exact top-k (whole step)", median_us(ex, st, warm, reps), topk_b});
        LC_CUDA_CHECK(cudaGraphExecDestroy(ex));
    }
    const double dense_us = rows[0].us;
    for (const row & r : rows) {
        const bool part = r.name[0] == ' ';
        std::printf("| %lld | %d | %s | %.1f | %.0f | %s | %s |\n", (long long)N, B, r.name, r.us, r.bytes / r.us * 1e-3,
                    part ? "-" : (std::to_string(dense_b / r.bytes).substr(0, 4) + "x").c_str(),
                    part ? "-" : (std::to_string(dense_us / r.us).substr(0, 4) + "x").c_str());
    }
    std::fflush(stdout);
    for (void * p : {(void *)k, (void *)v, (void *)q, (void *)pages, (void *)n_kv, (void *)o, (void *)dproj, (void *)lk,
                     (void *)qb, ws_d, ws_s})
        LC_CUDA_CHECK(cudaFree(p));
    LC_CUDA_CHECK(cudaStreamDestroy(st));
}

} // namespace

int main(int argc, char ** argv) {
    std::vector<int64_t> depths = {32768, 131072}, batches = {1, 16};
    int                  reps   = 30;
    double               budget = 0.25;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--depth")) depths = parse_list(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--batch")) batches = parse_list(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--budget")) budget = std::atof(argv[i + 1]);
        else {
            std::fprintf(stderr, "usage: %s [--depth 32768,131072] [--batch 1,16] [--reps 30] [--budget 0.25]\n", argv[0]);
            return 2;
        }
    }
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        std::fprintf(stderr, "no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop;
    LC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    LC_CUDA_CHECK(cudaMalloc(&g_flush, g_flush_bytes));
    // copy bandwidth (read + write) as the ceiling
    {
        const size_t n = size_t(2) << 30;
        void *       a = nullptr, *b = nullptr;
        LC_CUDA_CHECK(cudaMalloc(&a, n));
        LC_CUDA_CHECK(cudaMalloc(&b, n));
        LC_CUDA_CHECK(cudaMemset(a, 1, n));
        cudaEvent_t e0, e1;
        LC_CUDA_CHECK(cudaEventCreate(&e0));
        LC_CUDA_CHECK(cudaEventCreate(&e1));
        std::vector<float> ts;
        for (int i = 0; i < 8; ++i) {
            LC_CUDA_CHECK(cudaEventRecord(e0));
            LC_CUDA_CHECK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
            LC_CUDA_CHECK(cudaEventRecord(e1));
            LC_CUDA_CHECK(cudaEventSynchronize(e1));
            float ms = 0;
            LC_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
            ts.push_back(ms);
        }
        std::sort(ts.begin(), ts.end());
        std::printf("device: %s, %d SMs, L2 %d MB; copy bandwidth (device-to-device, read + write) %.0f GB/s\n\n",
                    prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, 2.0 * n / (ts[4] * 1e-3) * 1e-9);
        LC_CUDA_CHECK(cudaFree(a));
        LC_CUDA_CHECK(cudaFree(b));
    }
    std::printf("| depth | batch | step | us | GB/s | byte-count limit vs dense | speedup vs dense |\n");
    std::printf("|--:|--:|--|--:|--:|--:|--:|\n");
    for (int64_t N : depths)
        for (int64_t B : batches) bench(N, int(B), reps, budget);
    return 0;
}
