// Decode attention throughput of MagicPIG's hybrid step (magicpig-hybrid.cuh, magicpig-host.h) against our dense
// split-K kernel on the GPU, over all 32 layers of Llama-3-8B shapes (32 query heads, 8 KV heads, head_dim 128, bf16
// KV, each layer its own cache) at a context and batch whose dense cache does not fit in GPU memory beside 16 GB of
// weights. Attention only: no weight GEMMs. Hybrid: layers 0 and 16 dense on the GPU (paged, whole context), the
// other 30 with the middle of the cache and its tables (K = 10, L = 150) in host memory, sampled by CPU threads while
// the GPU computes the dense part (sinks, local window, generated tokens); the GPU merges. Dense: the largest batch
// whose 32-layer cache fits next to a 16 GB allocation standing for the weights. Medians over steps: CUDA events
// around one graph of the 32 layers for dense, wall clock for the hybrid (the CPU is in the loop).
// Usage: longctx-cuda-magicpig-bench [--ctx 131072] [--batch 4] [--batches 4,2,1] [--steps 8] [--threads 16]
//        [--gen 32] [--reserve-gb 16] [--min-hits 2] [--skip-dense] [--skip-hybrid]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "attn/decode/magicpig.h"
#include "attn/decode/simhash.h"
#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/magicpig-host.h"
#include "backend/cuda/magicpig-hybrid.cuh"
#include "core/thread-pool.h"

#include "bench-util.cuh"

namespace {

using namespace lc;
using namespace lc::cuda_bench;

constexpr int NL = 32, H = 32, HKV = 8, D = 128;

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double mem_available_gib() {
    std::ifstream f("/proc/meminfo");
    std::string   k;
    double        v = 0;
    std::string   unit;
    while (f >> k >> v >> unit)
        if (k == "MemAvailable:") return v / (1024.0 * 1024.0);
    return -1;
}

std::string anon_huge() {
    std::ifstream f("/proc/meminfo");
    std::string   line;
    while (std::getline(f, line))
        if (line.rfind("AnonHugePages:", 0) == 0) return line;
    return "AnonHugePages: ?";
}

bool dense_layer(int il) {
    return il % 16 == 0; // magicpig_decode::sparse_layer
}

// A paged bf16 cache of n_seq sequences x N tokens for one layer (identity page tables).
struct paged_layer {
    bf16_t * k = nullptr, *v = nullptr;
    bool     alloc(int n_seq, int64_t N) {
        const size_t e = size_t(n_seq) * size_t((N + 63) / 64) * HKV * 64 * D * 2;
        if (cudaMalloc(&k, e) != cudaSuccess) return (void)cudaGetLastError(), false;
        if (cudaMalloc(&v, e) != cudaSuccess) return (void)cudaGetLastError(), cudaFree(k), k = nullptr, false;
        return true;
    }
    void free() {
        cudaFree(k);
        cudaFree(v);
        k = v = nullptr;
    }
};

struct paged_common {
    int32_t *           pages = nullptr, *n_kv = nullptr;
    int64_t             stride = 0;
    void *              ws     = nullptr;
    size_t              ws_bytes = 0;
    void init(int n_seq, int64_t N) {
        stride = (N + 63) / 64;
        std::vector<int32_t> pg(size_t(n_seq) * size_t(stride)), lens(static_cast<size_t>(n_seq), static_cast<int32_t>(N));
        std::iota(pg.begin(), pg.end(), 0);
        LC_CUDA_CHECK(cudaMalloc(&pages, pg.size() * 4));
        LC_CUDA_CHECK(cudaMalloc(&n_kv, lens.size() * 4));
        LC_CUDA_CHECK(cudaMemcpy(pages, pg.data(), pg.size() * 4, cudaMemcpyHostToDevice));
        LC_CUDA_CHECK(cudaMemcpy(n_kv, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
        for (int b = 1; b <= n_seq; ++b) // any batch up to n_seq may run on these tables
            ws_bytes = std::max(ws_bytes,
                                cuda::attn_decode_workspace_bytes(b, H, D, cuda::attn_decode_n_split(b, H, HKV, D, N)));
        LC_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
    }
    void free() {
        cudaFree(pages);
        cudaFree(n_kv);
        cudaFree(ws);
    }
    cuda::attn_decode_args args(const paged_layer & ly, const bf16_t * q, int n_seq, int64_t N, float * o) const {
        cuda::attn_decode_args a;
        a.q = q, a.n_seq = n_seq, a.n_head = H, a.k_pool = ly.k, a.v_pool = ly.v, a.n_head_kv = HKV, a.head_dim = D;
        a.pages = pages, a.pages_stride = stride, a.n_kv = n_kv, a.n_kv_max = N, a.scale = 1.f / std::sqrt(float(D));
        a.o = o, a.o_f32 = true, a.workspace = ws, a.workspace_bytes = ws_bytes;
        return a;
    }
};

// Dense: the largest batch <= want whose 32 layers fit beside `reserve` bytes; median step time.
void bench_dense(int64_t N, int want, double reserve_gb, int steps) {
    void * weights = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&weights, size_t(reserve_gb * 1e9)));
    size_t fr = 0, tot = 0;
    LC_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    std::printf("dense: GPU %.1f GiB total, %.1f GiB free after the %.0f GB weight stand-in; one layer of one sequence "
                "%.3f GiB\n",
                tot / 1073741824.0, fr / 1073741824.0, reserve_gb,
                double((N + 63) / 64) * HKV * 64 * D * 4 / 1073741824.0);
    int                      b = want;
    std::vector<paged_layer> ls(NL);
    for (; b >= 1; --b) {
        bool ok = true;
        for (int il = 0; il < NL && ok; ++il) ok = ls[size_t(il)].alloc(b, N);
        if (ok) {
            // Room for the workspaces and the queries too.
            void * probe = nullptr;
            if (cudaMalloc(&probe, size_t(256) << 20) == cudaSuccess) {
                cudaFree(probe);
                break;
            }
            cudaGetLastError();
        }
        std::printf("dense: batch %d does not fit (32 layers x %d x %lld tokens)\n", b, b, (long long)N);
        for (auto & l : ls) l.free();
    }
    if (b < 1) {
        std::printf("dense: nothing fits\n");
        cudaFree(weights);
        return;
    }
    for (int il = 0; il < NL; ++il) {
        const size_t e = size_t(b) * size_t((N + 63) / 64) * HKV * 64 * D;
        fill(ls[size_t(il)].k, e, 100 + il, 2.f);
        fill(ls[size_t(il)].v, e, 200 + il, 2.f);
    }
    paged_common pc;
    pc.init(b, N);
    bf16_t * q = nullptr;
    float *  o = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&q, size_t(NL) * b * H * D * 2));
    LC_CUDA_CHECK(cudaMalloc(&o, size_t(b) * H * D * 4));
    fill(q, size_t(NL) * b * H * D, 7, 1.f);
    cudaStream_t st;
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    auto step = [&] {
        for (int il = 0; il < NL; ++il)
            LC_CUDA_CHECK(cuda::attn_decode(pc.args(ls[size_t(il)], q + size_t(il) * b * H * D, b, N, o), st).is_ok()
                              ? cudaSuccess
                              : cudaErrorUnknown);
    };
    step();
    LC_CUDA_CHECK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    LC_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    step();
    LC_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    cudaGraphExec_t ex;
    LC_CUDA_CHECK(cudaGraphInstantiate(&ex, g, 0));
    cudaEvent_t e0, e1;
    LC_CUDA_CHECK(cudaEventCreate(&e0));
    LC_CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<double> ts;
    for (int i = 0; i < steps + 2; ++i) {
        LC_CUDA_CHECK(cudaEventRecord(e0, st));
        LC_CUDA_CHECK(cudaGraphLaunch(ex, st));
        LC_CUDA_CHECK(cudaEventRecord(e1, st));
        LC_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        LC_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2) ts.push_back(ms);
    }
    const double ms  = median(ts);
    const double gib = double(NL) * b * double(N) * HKV * D * 4 / 1073741824.0;
    std::printf("| dense GPU (our split-K kernel), 32 layers | %lld | %d | %.2f | %.1f | %.0f GB/s |\n", (long long)N, b,
                ms, b / (ms * 1e-3), gib * 1.073741824 / (ms * 1e-3));
    std::fflush(stdout);
    cudaGraphExecDestroy(ex);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
    cudaFree(q);
    cudaFree(o);
    pc.free();
    for (auto & l : ls) l.free();
    cudaFree(weights);
}

void bench_hybrid(int64_t N, int B, const std::vector<int64_t> & batches, int steps, int n_threads, int gen,
                  int min_hits) {
    magicpig_params p;
    p.min_hits            = min_hits;
    const int     K = p.K, L = p.L, n_sink = p.n_sink, n_local = p.n_local;
    const int64_t begin = n_sink, n_mid = N - n_sink - n_local;
    const int     cap = n_sink + n_local + gen; // dense rows of a sparse layer
    const float   scale = 1.f / std::sqrt(float(D));
    thread_pool   pool(n_threads);

    // Hyperplanes (the CPU method's matrix), logical [D][K*L] on the device.
    const simhash_matrix W = simhash_matrix_make(D, K, L, p.seed);
    std::vector<float>   w(size_t(D) * K * L);
    for (int d = 0; d < D; ++d)
        for (int c = 0; c < K * L; ++c) w[size_t(d) * K * L + c] = W.at(d, c);
    float * dw = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&dw, w.size() * 4));
    LC_CUDA_CHECK(cudaMemcpy(dw, w.data(), w.size() * 4, cudaMemcpyHostToDevice));

    // Host memory needed: K, V, tables (2 bytes per key and table), offsets, norms.
    const int    n_sparse = NL - 2;
    const double per_ls   = double(HKV) * n_mid * (2.0 * D * 2 + 2.0 * L + 4) +
                          double(HKV) * ((n_mid + 65535) / 65536) * L * ((1 << K) + 1) * 4.0;
    std::printf("hybrid: host memory for %d sparse layers x %d sequences: %.1f GiB (K+V %.1f GiB, tables %.1f GiB); "
                "MemAvailable %.1f GiB\n",
                n_sparse, B, per_ls * n_sparse * B / 1073741824.0, double(HKV) * n_mid * D * 4 * n_sparse * B / 1073741824.0,
                (per_ls - double(HKV) * n_mid * D * 4) * n_sparse * B / 1073741824.0, mem_available_gib());
    std::fflush(stdout);
    const double avail = mem_available_gib();
    if (avail > 0 && per_ls * n_sparse * B / 1073741824.0 > avail - 6.0) {
        std::printf("hybrid: not enough host memory for batch %d at %lld tokens (6 GiB kept free)\n", B, (long long)N);
        return;
    }

    // Host layers, built one (layer, sequence) at a time: K and V filled on the GPU, hashed there (centred by
    // their mean), copied to host memory; tables sorted by CPU threads from the codes.
    std::vector<std::vector<cuda::mpig_host_layer>> host(static_cast<size_t>(NL));
    bf16_t *   tk = nullptr, *tv = nullptr;
    uint16_t * tc = nullptr;
    float *    tmu = nullptr, *tnorm = nullptr;
    const size_t e_mid = size_t(HKV) * size_t(n_mid) * D;
    LC_CUDA_CHECK(cudaMalloc(&tk, e_mid * 2));
    LC_CUDA_CHECK(cudaMalloc(&tv, e_mid * 2));
    LC_CUDA_CHECK(cudaMalloc(&tc, size_t(L) * n_mid * 2));
    LC_CUDA_CHECK(cudaMalloc(&tmu, D * 4));
    LC_CUDA_CHECK(cudaMalloc(&tnorm, size_t(n_mid) * 4));
    void * stage = nullptr;
    const size_t stage_bytes = std::max(e_mid * 2, size_t(L) * n_mid * 2);
    LC_CUDA_CHECK(cudaMallocHost(&stage, stage_bytes));
    const double t_build0 = now_s();
    double       t_sort = 0;
    for (int il = 0; il < NL; ++il) {
        if (dense_layer(il)) continue;
        host[size_t(il)].resize(size_t(B));
        for (int s = 0; s < B; ++s) {
            cuda::mpig_host_layer & ly = host[size_t(il)][size_t(s)];
            ly.alloc(HKV, D, begin, n_mid);
            const uint32_t seed = uint32_t(il * 64 + s) * 2 + 1000;
            fill(tk, e_mid, seed, 2.f);
            fill(tv, e_mid, seed + 1, 2.f);
            auto to_host = [&](const void * dsrc, void * hdst, size_t bytes) {
                LC_CUDA_CHECK(cudaMemcpy(stage, dsrc, bytes, cudaMemcpyDeviceToHost));
                pool.run([&](int ith, int nth) {
                    int64_t b0, b1;
                    thread_pool::split(int64_t(bytes), ith, nth, b0, b1);
                    std::memcpy(static_cast<char *>(hdst) + b0, static_cast<const char *>(stage) + b0, size_t(b1 - b0));
                });
            };
            to_host(tk, ly.k.get(), e_mid * 2);
            to_host(tv, ly.v.get(), e_mid * 2);
            for (int h = 0; h < HKV; ++h) {
                const bf16_t * kh = tk + size_t(h) * n_mid * D;
                LC_CUDA_CHECK(cuda::mpig_mean(kh, n_mid, D, D, tmu, nullptr).is_ok() ? cudaSuccess : cudaErrorUnknown);
                cuda::mpig_hash_args a;
                a.x = kh, a.n = n_mid, a.x_stride = D, a.mu = tmu, a.w = dw, a.D = D, a.K = K, a.L = L;
                a.codes = tc, a.code_t = true, a.norm = tnorm;
                LC_CUDA_CHECK(cuda::mpig_hash(a, nullptr).is_ok() ? cudaSuccess : cudaErrorUnknown);
                cuda::mpig_host_tables & tb = ly.heads[size_t(h)];
                tb.mu.resize(D);
                tb.norm.resize(size_t(n_mid));
                LC_CUDA_CHECK(cudaMemcpy(tb.mu.data(), tmu, D * 4, cudaMemcpyDeviceToHost));
                LC_CUDA_CHECK(cudaMemcpy(tb.norm.data(), tnorm, size_t(n_mid) * 4, cudaMemcpyDeviceToHost));
                LC_CUDA_CHECK(cudaMemcpy(stage, tc, size_t(L) * n_mid * 2, cudaMemcpyDeviceToHost));
                const double t0 = now_s();
                cuda::mpig_host_tables_build(static_cast<const uint16_t *>(stage), n_mid, K, L, 16, tb, pool);
                t_sort += now_s() - t0;
            }
        }
    }
    cudaFree(tk);
    cudaFree(tv);
    cudaFree(tc);
    cudaFree(tmu);
    cudaFree(tnorm);
    cudaFreeHost(stage);
    std::printf("hybrid: host layers built in %.1f s (table sorts %.1f s); MemAvailable now %.1f GiB\n",
                now_s() - t_build0, t_sort, mem_available_gib());
    std::fflush(stdout);

    // What the host memory gives the sampling threads: a sequential read of K arrays, and 256-byte rows read at
    // random positions of all layers' K arrays (as the sampled rows are), both by all threads of the pool.
    {
        std::vector<double> sink(size_t(pool.n_threads()), 0.0);
        const size_t        row_b = size_t(D) * 2;
        double              t0    = now_s();
        int64_t             seq_bytes = 0;
        for (int il = 1; il < NL && seq_bytes < (int64_t(16) << 30); ++il) {
            if (dense_layer(il)) continue;
            for (int s = 0; s < B; ++s) {
                const cuda::mpig_host_layer & ly = host[size_t(il)][size_t(s)];
                pool.run([&](int ith, int nth) {
                    int64_t r0, r1;
                    thread_pool::split(int64_t(HKV) * n_mid, ith, nth, r0, r1);
                    const uint64_t * p   = reinterpret_cast<const uint64_t *>(ly.k.get());
                    uint64_t         a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                    for (int64_t i = r0 * (D / 4); i < r1 * (D / 4); i += 4) {
                        a0 ^= p[i], a1 ^= p[i + 1], a2 ^= p[i + 2], a3 ^= p[i + 3];
                    }
                    sink[size_t(ith)] += double((a0 ^ a1 ^ a2 ^ a3) & 1);
                });
                seq_bytes += int64_t(HKV) * n_mid * int64_t(row_b);
            }
        }
        const double seq_gbs = seq_bytes / (now_s() - t0) / 1e9;
        const int64_t rows_per_thread = 200000;
        t0 = now_s();
        pool.run([&](int ith, int) {
            uint64_t x = 0x9E3779B97F4A7C15ull * uint64_t(ith + 1);
            double   acc = 0;
            for (int64_t j = 0; j < rows_per_thread; ++j) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                int il = 1 + int(x % (NL - 1));
                if (dense_layer(il)) ++il;
                const cuda::mpig_host_layer & ly = host[size_t(il)][size_t((x >> 8) % uint64_t(B))];
                const bf16_t * r = ly.k_row(int((x >> 16) % HKV), int64_t((x >> 24) % uint64_t(n_mid)));
                for (int d = 0; d < D; d += 32) acc += double(r[d]);
            }
            sink[size_t(ith)] += acc;
        });
        const double dt = now_s() - t0;
        // The same with a software prefetch 16 rows ahead (into L2), as the sampling loop does.
        t0 = now_s();
        pool.run([&](int ith, int) {
            auto addr = [&](uint64_t & x) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                int il = 1 + int(x % (NL - 1));
                if (dense_layer(il)) ++il;
                const cuda::mpig_host_layer & ly = host[size_t(il)][size_t((x >> 8) % uint64_t(B))];
                return ly.k_row(int((x >> 16) % HKV), int64_t((x >> 24) % uint64_t(n_mid)));
            };
            uint64_t x = 0x9E3779B97F4A7C15ull * uint64_t(ith + 101), y = x;
            for (int j = 0; j < 16; ++j) {
                const bf16_t * r = addr(y);
                for (int d = 0; d < D; d += 32) __builtin_prefetch(r + d, 0, 2);
            }
            double acc = 0;
            for (int64_t j = 0; j < rows_per_thread; ++j) {
                const bf16_t * rp = addr(y);
                for (int d = 0; d < D; d += 32) __builtin_prefetch(rp + d, 0, 2);
                const bf16_t * r = addr(x);
                for (int d = 0; d < D; d += 32) acc += double(r[d]);
            }
            sink[size_t(ith)] += acc;
        });
        const double dt_pf = now_s() - t0;
        const double rows = double(rows_per_thread) * pool.n_threads();
        std::printf("hybrid: host memory, %d threads: sequential read %.1f GB/s; random 256-byte rows of all layers "
                    "%.1f M rows/s = %.1f GB/s, with a software prefetch 16 rows ahead %.1f M rows/s = %.1f GB/s "
                    "(checksum %g); %s\n",
                    pool.n_threads(), seq_gbs, rows / dt / 1e6, rows * row_b / dt / 1e9, rows / dt_pf / 1e6,
                    rows * row_b / dt_pf / 1e9, std::accumulate(sink.begin(), sink.end(), 0.0) * 0,
                    anon_huge().c_str());
        std::fflush(stdout);
    }

    // Device side: the two dense layers (paged, whole context), the dense rows of the sparse layers, queries.
    paged_layer dl[2];
    for (auto & d : dl) {
        LC_ASSERT(d.alloc(B, N), "hybrid: dense layers do not fit");
        const size_t e = size_t(B) * size_t((N + 63) / 64) * HKV * 64 * D;
        fill(d.k, e, 300, 2.f);
        fill(d.v, e, 301, 2.f);
    }
    paged_common pc;
    pc.init(B, N);
    bf16_t *   dk = nullptr, *dv = nullptr, *q = nullptr;
    int32_t *  nd = nullptr;
    uint16_t * dcodes = nullptr;
    float *    o_d = nullptr, *lse_d = nullptr, *o_s = nullptr, *lse_s = nullptr, *o = nullptr;
    const size_t e_dense = size_t(NL) * B * HKV * cap * D;
    LC_CUDA_CHECK(cudaMalloc(&dk, e_dense * 2));
    LC_CUDA_CHECK(cudaMalloc(&dv, e_dense * 2));
    fill(dk, e_dense, 400, 2.f);
    fill(dv, e_dense, 401, 2.f);
    LC_CUDA_CHECK(cudaMalloc(&q, size_t(NL) * B * H * D * 2));
    fill(q, size_t(NL) * B * H * D, 7, 1.f);
    LC_CUDA_CHECK(cudaMalloc(&nd, size_t(B) * 4));
    const std::vector<int32_t> nds(size_t(B), cap);
    LC_CUDA_CHECK(cudaMemcpy(nd, nds.data(), nds.size() * 4, cudaMemcpyHostToDevice));
    LC_CUDA_CHECK(cudaMalloc(&dcodes, size_t(B) * H * L * 2));
    LC_CUDA_CHECK(cudaMalloc(&o_d, size_t(B) * H * D * 4));
    LC_CUDA_CHECK(cudaMalloc(&o_s, size_t(B) * H * D * 4));
    LC_CUDA_CHECK(cudaMalloc(&o, size_t(B) * H * D * 4));
    LC_CUDA_CHECK(cudaMalloc(&lse_d, size_t(B) * H * 4));
    LC_CUDA_CHECK(cudaMalloc(&lse_s, size_t(B) * H * 4));
    uint16_t * h_codes = nullptr;
    bf16_t *   h_q     = nullptr;
    float *    h_o = nullptr, *h_lse = nullptr;
    LC_CUDA_CHECK(cudaMallocHost(&h_codes, size_t(B) * H * L * 2));
    LC_CUDA_CHECK(cudaMallocHost(&h_q, size_t(B) * H * D * 2));
    LC_CUDA_CHECK(cudaMallocHost(&h_o, size_t(B) * H * D * 4));
    LC_CUDA_CHECK(cudaMallocHost(&h_lse, size_t(B) * H * 4));
    cudaStream_t st;
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t ev;
    LC_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    const lsh_log_weight                 lw(K, L, min_hits);
    std::vector<cuda::mpig_host_scratch> sc(size_t(pool.n_threads()));

    for (int64_t b64 : batches) {
        const int b = int(std::min<int64_t>(b64, B));
        cuda::attn_decode_args da = pc.args(dl[0], nullptr, b, N, o);
        // The dense layers' decode needs n_kv/pages of b sequences: the first b rows of the B-sequence tables.
        std::vector<double> t_step, t_host;
        int64_t             smp0 = 0, wlk0 = 0;
        for (int it = 0; it < steps + 2; ++it) {
            if (it == 2) {
                smp0 = wlk0 = 0;
                for (auto & x : sc) smp0 += x.sampled, wlk0 += x.walked;
            }
            double       th = 0;
            const double t0 = now_s();
            for (int il = 0; il < NL; ++il) {
                const bf16_t * ql = q + size_t(il) * B * H * D;
                if (dense_layer(il)) {
                    da.k_pool = dl[il / 16].k, da.v_pool = dl[il / 16].v, da.q = ql;
                    LC_CUDA_CHECK(cuda::attn_decode(da, st).is_ok() ? cudaSuccess : cudaErrorUnknown);
                    continue;
                }
                cuda::mpig_hash_args ha;
                ha.x = ql, ha.n = int64_t(b) * H, ha.x_stride = D, ha.w = dw, ha.D = D, ha.K = K, ha.L = L;
                ha.codes = dcodes;
                LC_CUDA_CHECK(cuda::mpig_hash(ha, st).is_ok() ? cudaSuccess : cudaErrorUnknown);
                LC_CUDA_CHECK(cudaMemcpyAsync(h_codes, dcodes, size_t(b) * H * L * 2, cudaMemcpyDeviceToHost, st));
                LC_CUDA_CHECK(cudaMemcpyAsync(h_q, ql, size_t(b) * H * D * 2, cudaMemcpyDeviceToHost, st));
                LC_CUDA_CHECK(cudaEventRecord(ev, st));
                cuda::mpig_dense_args dd;
                dd.q = ql, dd.n_seq = b, dd.n_head = H, dd.n_head_kv = HKV, dd.D = D;
                dd.k = dk + size_t(il) * B * HKV * cap * D, dd.v = dv + size_t(il) * B * HKV * cap * D, dd.cap = cap;
                dd.n_dense = nd, dd.scale = scale, dd.o = o_d, dd.lse = lse_d;
                LC_CUDA_CHECK(cuda::mpig_dense(dd, st).is_ok() ? cudaSuccess : cudaErrorUnknown);
                LC_CUDA_CHECK(cudaEventSynchronize(ev));
                const double                  h0 = now_s();
                const cuda::mpig_host_layer * lys[64];
                for (int s = 0; s < b; ++s) lys[s] = &host[size_t(il)][size_t(s)];
                cuda::mpig_host_attend_batch(lys, b, H, h_q, h_codes, scale, min_hits, lw, sc, h_o, h_lse, pool);
                th += now_s() - h0;
                LC_CUDA_CHECK(cudaMemcpyAsync(o_s, h_o, size_t(b) * H * D * 4, cudaMemcpyHostToDevice, st));
                LC_CUDA_CHECK(cudaMemcpyAsync(lse_s, h_lse, size_t(b) * H * 4, cudaMemcpyHostToDevice, st));
                LC_CUDA_CHECK(cuda::mpig_merge(o_d, lse_d, o_s, lse_s, int64_t(b) * H, D, o, nullptr, st).is_ok()
                                  ? cudaSuccess
                                  : cudaErrorUnknown);
            }
            LC_CUDA_CHECK(cudaStreamSynchronize(st));
            if (it >= 2) {
                t_step.push_back(now_s() - t0);
                t_host.push_back(th);
            }
        }
        int64_t  smp = 0, wlk = 0;
        uint64_t tw = 0, tr = 0;
        for (auto & x : sc) smp += x.sampled, wlk += x.walked, tw += x.tsc_walk, tr += x.tsc_rows;
        for (auto & x : sc) x.tsc_walk = x.tsc_rows = 0;
        const double per_head = double(steps) * n_sparse * b * H;
        const double ms = median(t_step) * 1e3, ms_host = median(t_host) * 1e3;
        std::printf("| hybrid (GPU hash + dense part, %d CPU threads sample) | %lld | %d | %.2f | %.1f | host %.2f ms, "
                    "sampled %.2f%% of the middle, %.0f bucket entries walked per head; of the threads' time in the "
                    "sampling calls %.0f%% walk, %.0f%% rows |\n",
                    n_threads, (long long)N, b, ms, b / (ms * 1e-3), ms_host, 100.0 * (smp - smp0) / (per_head * n_mid),
                    (wlk - wlk0) / per_head, 100.0 * double(tw) / double(tw + tr + 1), 100.0 * double(tr) / double(tw + tr + 1));
        std::fflush(stdout);
    }
    cudaStreamDestroy(st);
}

} // namespace

int main(int argc, char ** argv) {
    int64_t              N = 131072, B = 4;
    std::vector<int64_t> batches;
    int                  steps = 8, threads = 16, gen = 32, min_hits = 2;
    double               reserve = 16;
    bool                 do_dense = true, do_hybrid = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto              next = [&] { return i + 1 < argc ? argv[++i] : ""; };
        if (a == "--ctx") N = std::atoll(next());
        else if (a == "--batch") B = std::atoll(next());
        else if (a == "--batches") batches = parse_list(next());
        else if (a == "--steps") steps = std::atoi(next());
        else if (a == "--threads") threads = std::atoi(next());
        else if (a == "--gen") gen = std::atoi(next());
        else if (a == "--reserve-gb") reserve = std::atof(next());
        else if (a == "--min-hits") min_hits = std::atoi(next());
        else if (a == "--skip-dense") do_dense = false;
        else if (a == "--skip-hybrid") do_hybrid = false;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (batches.empty()) batches = {B};
    cudaDeviceProp prop{};
    LC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs; %u host threads available\n", prop.name, prop.multiProcessorCount,
                std::thread::hardware_concurrency());
    std::printf("| path | context | batch | ms / step (32 layers) | tokens/s | notes |\n|---|---|---|---|---|---|\n");
    std::fflush(stdout);
    if (do_dense) bench_dense(N, int(B), reserve, steps);
    if (do_hybrid) bench_hybrid(N, int(B), batches, steps, threads, gen, min_hits);
    return 0;
}
