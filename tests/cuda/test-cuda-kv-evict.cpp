// The GPU side of score-based KV eviction (attn-colsum.cuh, kv-evict.cuh) against the CPU functions on the same
// bf16-rounded values: attn_colsum (prefill chunk and decode step), evict_keep_set (ties included), the
// compaction, and D2O's similarity search (max_dot_argmax) and merging (d2o_merge_rows). Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "attn/attn-stats.h"
#include "backend/cpu/ref/attn-ref.h"
#include "backend/cuda/attn-colsum.cuh"
#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/kv-evict.cuh"
#include "core/fp16.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "kv/kv-policy.h"
#include "kv/merge-sim.h"
#include "cuda/cuda-test-util.h"

namespace {

using namespace lc;
using namespace lc::cuda_test;

// A paged pool (shuffled page table) of random bf16 rows, with the same values in fp16 for the CPU functions.
struct paged_pool {
    int                  n_head_kv, head_dim;
    int64_t              n_pages;
    std::vector<bf16_t>  k, v;
    std::vector<fp16_t>  k16, v16;
    std::vector<int32_t> pages;
    paged_pool(int n_head_kv_, int head_dim_, int64_t n_tokens, std::mt19937 & rng)
        : n_head_kv(n_head_kv_), head_dim(head_dim_), n_pages((n_tokens + 63) / 64 + 2) {
        const size_t n = size_t(n_pages) * n_head_kv * 64 * head_dim;
        k              = random_bf16(n, rng);
        v              = random_bf16(n, rng);
        k16.resize(n);
        v16.resize(n);
        for (size_t i = 0; i < n; ++i) {
            k16[i] = fp32_to_fp16(bf16_to_fp32(k[i]));
            v16[i] = fp32_to_fp16(bf16_to_fp32(v[i]));
        }
        pages.resize(size_t(n_pages));
        std::iota(pages.begin(), pages.end(), 0);
        std::shuffle(pages.begin(), pages.end(), rng);
    }
    size_t row(int64_t t, int g) const {
        return ((size_t(pages[size_t(t / 64)]) * n_head_kv + g) * 64 + size_t(t % 64)) * head_dim;
    }
    kv_view view(int64_t n_kv) const {
        kv_view kv;
        kv.k_pool     = k16.data();
        kv.v_pool     = v16.data();
        kv.pages      = pages.data();
        kv.n_kv       = n_kv;
        kv.n_head_kv  = n_head_kv;
        kv.head_dim   = head_dim;
        kv.page_elems = size_t(n_head_kv) * 64 * head_dim;
        return kv;
    }
};

// nmse of the increments a - base against ref - base.
double nmse_inc(const std::vector<float> & a, const std::vector<float> & ref, const std::vector<float> & base) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        const double x = double(a[i]) - base[i], y = double(ref[i]) - base[i];
        num += (x - y) * (x - y);
        den += y * y;
    }
    return num / std::max(den, 1e-30);
}

struct colsum_case {
    int64_t n_q, pos0;
    int     n_head, n_head_kv, head_dim;
    bool    per_kv_head;
    int64_t window;
    bool    gpu_lse; // the lse of the GPU prefill kernel instead of the CPU's
};

void run_colsum(const colsum_case & c, uint32_t seed) {
    std::mt19937              rng(seed);
    const int                 D    = c.head_dim;
    const int64_t             n_kv = c.pos0 + c.n_q + 37; // keys past the chunk: never touched
    paged_pool                pp(c.n_head_kv, D, n_kv, rng);
    const std::vector<bf16_t> q = random_bf16(size_t(c.n_q) * c.n_head * D, rng, 1.5f);
    std::vector<float>        qf(q.size());
    for (size_t i = 0; i < q.size(); ++i) qf[i] = bf16_to_fp32(q[i]);
    const float   scale  = 1.f / std::sqrt(float(D));
    const int     rows   = c.per_kv_head ? c.n_head_kv : c.n_head;
    const int64_t stride = n_kv + 5;

    std::vector<float> o(qf.size()), lse(size_t(c.n_q) * c.n_head);
    attn_dense_ref(qf.data(), c.n_q, c.pos0, c.n_head, pp.view(n_kv), scale, o.data(), lse.data(), pool(), c.window);
    std::vector<float>                    base(size_t(rows) * stride);
    std::uniform_real_distribution<float> ub(0.f, 2.f);
    for (float & x : base) x = ub(rng);
    std::vector<float> ref = base;
    attn_colsum(qf.data(), c.n_q, c.pos0, c.n_head, pp.view(n_kv), scale, lse.data(), c.per_kv_head, ref.data(), stride,
                pool(), c.window);

    dev_buf<bf16_t>     dq(q), dk(pp.k), dv(pp.v);
    dev_buf<int32_t>    dpages(pp.pages);
    dev_buf<float>      dlse(lse), dcs(base);
    cuda::attn_kv_paged kv;
    kv.k_pool        = dk.p;
    kv.v_pool        = dv.p;
    kv.pages         = dpages.p;
    kv.n_pages_total = pp.n_pages;
    kv.n_kv          = n_kv;
    kv.n_head_kv     = c.n_head_kv;
    kv.head_dim      = D;
    if (c.gpu_lse) {
        dev_buf<float>          dout(qf.size());
        cuda::attn_prefill_args pa;
        pa.q      = dq.p;
        pa.n_q    = c.n_q;
        pa.pos0   = c.pos0;
        pa.n_head = c.n_head;
        pa.kv     = kv;
        pa.scale  = scale;
        pa.window = c.window;
        pa.o      = dout.p;
        pa.lse    = dlse.p;
        ASSERT_TRUE(cuda::attn_prefill(pa, cuda::attn_prefill_kernel::AUTO, nullptr).is_ok());
    }
    // D 128: each kernel on the same inputs (AUTO picks one of them); D 64: mma.sync only
    std::vector<cuda::attn_colsum_kernel> kernels = {cuda::attn_colsum_kernel::AUTO};
    if (D == 128)
        kernels = {cuda::attn_colsum_kernel::MMA_SYNC, cuda::attn_colsum_kernel::WGMMA,
                   cuda::attn_colsum_kernel::WGMMA_POLY};
    for (const cuda::attn_colsum_kernel kernel : kernels) {
        static const char * const kernel_names[] = {"auto", "mma.sync", "wgmma", "wgmma+poly"};
        CK(cudaMemcpy(dcs.p, base.data(), base.size() * sizeof(float), cudaMemcpyHostToDevice));
        cuda::attn_colsum_args a;
        a.kernel        = kernel;
        a.q             = dq.p;
        a.n_q           = c.n_q;
        a.pos0          = c.pos0;
        a.n_head        = c.n_head;
        a.kv            = kv;
        a.scale         = scale;
        a.lse           = dlse.p;
        a.per_kv_head   = c.per_kv_head;
        a.colsum        = dcs.p;
        a.colsum_stride = stride;
        a.window        = c.window;
        ASSERT_TRUE(cuda::attn_colsum(a, nullptr).is_ok());
        CK(cudaDeviceSynchronize());
        const std::vector<float> got = dcs.get();
        const double             e   = nmse_inc(got, ref, base);
        EXPECT_LT(e, c.gpu_lse ? 1e-4 : 1e-5)
            << kernel_names[int(kernel)] << " n_q " << c.n_q << " pos0 " << c.pos0 << " D " << D;
        // keys at or past the chunk's end and the padding are untouched
        for (int r = 0; r < rows; ++r)
            for (int64_t j = c.pos0 + c.n_q; j < stride; ++j)
                ASSERT_EQ(got[size_t(r) * stride + j], base[size_t(r) * stride + j]) << "row " << r << " col " << j;
        // every query's probabilities sum to 1: each row's increments add up to n_q (times the group for KV rows)
        for (int r = 0; r < rows; ++r) {
            double s = 0;
            for (int64_t j = 0; j < n_kv; ++j) s += double(got[size_t(r) * stride + j]) - base[size_t(r) * stride + j];
            const double want = double(c.n_q) * (c.per_kv_head ? c.n_head / c.n_head_kv : 1);
            EXPECT_NEAR(s, want, 2e-3 * want) << "row " << r;
        }
        std::printf("colsum %s D=%d n_q=%lld pos0=%lld heads %d/%d %s window=%lld lse=%s: nmse=%.2e\n",
                    kernel_names[int(kernel)], D, (long long)c.n_q, (long long)c.pos0, c.n_head, c.n_head_kv,
                    c.per_kv_head ? "per-kv" : "per-head", (long long)c.window, c.gpu_lse ? "gpu" : "cpu", e);
    }
}

TEST(cuda_kv_evict, colsum_prefill) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    const colsum_case cases[] = {
        {300, 0, 16, 4, 128, false, 0, false},
        {300, 0, 16, 4, 128, true, 0, false},
        {200, 777, 8, 2, 128, true, 0, false},
        {200, 777, 8, 2, 64, false, 0, false},
        {333, 100, 8, 2, 64, true, 150, false},
        {257, 500, 8, 2, 128, false, 100, false},
        {500, 130, 32, 8, 128, true, 0, true},
        {190, 64, 8, 2, 64, false, 0, true},
        // several 128-query tiles per block, an odd page count, a window across tiles
        {1000, 2900, 8, 2, 128, false, 0, false},
        {700, 1500, 8, 2, 128, true, 600, false},
        {1, 4000, 8, 2, 128, false, 0, false},
    };
    uint32_t seed = 11;
    for (const colsum_case & c : cases) run_colsum(c, seed++);
}

TEST(cuda_kv_evict, colsum_decode) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    for (int D : {128, 64})
        for (bool per_kv : {false, true})
            for (int64_t window : {int64_t(0), int64_t(90)}) {
                std::mt19937               rng(uint32_t(D + per_kv * 7 + window));
                const int                  H = 16, Hkv = 4, n_seq = 3;
                const std::vector<int32_t> n_kv  = {100, 257, 64};
                const int64_t              n_max = 257, stride = 260, seq_stride = int64_t(H) * stride;
                const int                  rows  = per_kv ? Hkv : H;
                const float                scale = 1.f / std::sqrt(float(D));
                paged_pool                 pp(Hkv, D, n_seq * 320, rng);
                const int64_t              pps_stride = 5;
                std::vector<int32_t>       pages(size_t(n_seq) * pps_stride);
                for (int s = 0; s < n_seq; ++s)
                    for (int p = 0; p < pps_stride; ++p)
                        pages[size_t(s) * pps_stride + p] = pp.pages[size_t(s * 5 + p)];
                const std::vector<bf16_t>             q = random_bf16(size_t(n_seq) * H * D, rng, 1.5f);
                std::vector<float>                    base(size_t(n_seq) * seq_stride), ref, lse(size_t(n_seq) * H);
                std::uniform_real_distribution<float> ub(0.f, 2.f);
                for (float & x : base) x = ub(rng);
                ref = base;
                for (int s = 0; s < n_seq; ++s) {
                    std::vector<float> qf(size_t(H) * D), o(qf.size());
                    for (size_t i = 0; i < qf.size(); ++i) qf[i] = bf16_to_fp32(q[size_t(s) * H * D + i]);
                    kv_view kv = pp.view(n_kv[size_t(s)]);
                    kv.pages   = pages.data() + size_t(s) * pps_stride;
                    attn_dense_ref(qf.data(), 1, n_kv[size_t(s)] - 1, H, kv, scale, o.data(),
                                   lse.data() + size_t(s) * H, pool(), window);
                    attn_colsum(qf.data(), 1, n_kv[size_t(s)] - 1, H, kv, scale, lse.data() + size_t(s) * H, per_kv,
                                ref.data() + size_t(s) * seq_stride, stride, pool(), window);
                }
                dev_buf<bf16_t>               dq(q), dk(pp.k);
                dev_buf<int32_t>              dpages(pages), dn(n_kv);
                dev_buf<float>                dlse(lse), dcs(base);
                cuda::attn_colsum_decode_args a;
                a.q             = dq.p;
                a.n_seq         = n_seq;
                a.n_head        = H;
                a.k_pool        = dk.p;
                a.n_head_kv     = Hkv;
                a.head_dim      = D;
                a.pages         = dpages.p;
                a.pages_stride  = pps_stride;
                a.n_kv          = dn.p;
                a.n_kv_max      = n_max;
                a.scale         = scale;
                a.lse           = dlse.p;
                a.per_kv_head   = per_kv;
                a.colsum        = dcs.p;
                a.colsum_stride = stride;
                a.seq_stride    = seq_stride;
                a.window        = window;
                ASSERT_TRUE(cuda::attn_colsum_decode(a, nullptr).is_ok());
                CK(cudaDeviceSynchronize());
                const std::vector<float> got = dcs.get();
                const double             e   = nmse_inc(got, ref, base);
                EXPECT_LT(e, 1e-5) << "D " << D << " per_kv " << per_kv << " window " << window;
                for (int s = 0; s < n_seq; ++s)
                    for (int r = rows; r < H; ++r) // rows a per-KV-head buffer does not use
                        for (int64_t j = 0; j < stride; ++j) {
                            const size_t i = size_t(s) * seq_stride + size_t(r) * stride + size_t(j);
                            ASSERT_EQ(got[i], base[i]);
                        }
                std::printf("colsum decode D=%d %s window=%lld: nmse=%.2e\n", D, per_kv ? "per-kv" : "per-head",
                            (long long)window, e);
            }
}

// Keep sets of the GPU against evict_keep_set on the score summed over each head's rows in row order.
void run_keep(int64_t n, int64_t n_sink, int64_t n_recent, int64_t n_heavy, int rows_per_kv, bool ties, uint32_t seed) {
    std::mt19937                          rng(seed);
    const int                             Hkv    = 4;
    const int64_t                         stride = n + 3;
    std::vector<float>                    score(size_t(Hkv) * rows_per_kv * stride);
    std::uniform_real_distribution<float> ud(0.f, 1.f);
    std::uniform_int_distribution<int>    ui(0, 12);
    for (float & x : score) x = ties ? float(ui(rng)) * 0.25f : ud(rng);
    const int64_t         n_keep = cuda::evict_keep_count(n, n_sink, n_recent, n_heavy);
    const int64_t         ks     = n_keep + 2;
    dev_buf<float>        ds(score);
    dev_buf<int32_t>      dkeep(size_t(Hkv) * ks);
    dev_buf<uint8_t>      ws(cuda::evict_keep_workspace_bytes(Hkv, n));
    cuda::evict_keep_args a;
    a.score           = ds.p;
    a.score_stride    = stride;
    a.rows_per_kv     = rows_per_kv;
    a.n_head_kv       = Hkv;
    a.n               = n;
    a.n_sink          = n_sink;
    a.n_recent        = n_recent;
    a.n_heavy         = n_heavy;
    a.keep            = dkeep.p;
    a.keep_stride     = ks;
    a.workspace       = ws.p;
    a.workspace_bytes = ws.n;
    ASSERT_TRUE(cuda::evict_keep(a, nullptr).is_ok());
    CK(cudaDeviceSynchronize());
    const std::vector<int32_t> got = dkeep.get();
    for (int g = 0; g < Hkv; ++g) {
        std::vector<float> sum(size_t(n), 0.f);
        for (int r = 0; r < rows_per_kv; ++r)
            for (int64_t j = 0; j < n; ++j) sum[size_t(j)] += score[size_t(g * rows_per_kv + r) * stride + j];
        std::vector<int32_t> want;
        evict_keep_set(sum.data(), n, n_sink, n_recent, n_heavy, want);
        ASSERT_EQ(int64_t(want.size()), n_keep);
        const std::vector<int32_t> gg(got.begin() + std::ptrdiff_t(g * ks),
                                      got.begin() + std::ptrdiff_t(g * ks + n_keep));
        EXPECT_EQ(gg, want) << "head " << g << " n " << n << " sink " << n_sink << " recent " << n_recent << " heavy "
                            << n_heavy << " ties " << ties;
    }
}

TEST(cuda_kv_evict, keep_set) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    uint32_t seed = 100;
    for (int rows : {4, 1})
        for (bool ties : {false, true}) {
            run_keep(1000, 4, 100, 150, rows, ties, seed++);
            run_keep(5000, 4, 500, 500, rows, ties, seed++);
            run_keep(3000, 0, 0, 2999, rows, ties, seed++);
            run_keep(300, 4, 30, 1000, rows, ties, seed++); // heavy clipped: everything kept
            run_keep(300, 4, 30, 0, rows, ties, seed++);
            run_keep(10, 20, 5, 5, rows, ties, seed++); // sinks clipped
        }
}

TEST(cuda_kv_evict, compact) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    for (int D : {128, 64}) {
        std::mt19937                          rng(uint32_t(7 + D));
        const int                             Hkv = 4, G = 4;
        const int64_t                         n = 1500, stride = 1600;
        paged_pool                            pp(Hkv, D, n, rng);
        std::vector<float>                    score(size_t(Hkv) * G * stride);
        std::uniform_real_distribution<float> ud(0.f, 1.f);
        for (float & x : score) x = ud(rng);
        // keep sets from the CPU, different per head
        const int64_t        n_keep = cuda::evict_keep_count(n, 4, 100, 200);
        std::vector<int32_t> keep(size_t(Hkv) * n_keep);
        for (int g = 0; g < Hkv; ++g) {
            std::vector<int32_t> k;
            evict_keep_set(score.data() + size_t(g) * G * stride, n, 4, 100, 200, k);
            std::copy(k.begin(), k.end(), keep.begin() + std::ptrdiff_t(g * n_keep));
        }
        dev_buf<bf16_t>       dk(pp.k), dv(pp.v);
        dev_buf<int32_t>      dpages(pp.pages), dkeep(keep);
        dev_buf<float>        ds(score);
        const int64_t         chunk = 77; // several rounds
        dev_buf<uint8_t>      ws(cuda::kv_compact_workspace_bytes(Hkv, D, chunk));
        cuda::kv_compact_args a;
        a.kv.k_pool       = dk.p;
        a.kv.v_pool       = dv.p;
        a.kv.pages        = dpages.p;
        a.kv.n_head_kv    = Hkv;
        a.kv.head_dim     = D;
        a.keep            = dkeep.p;
        a.keep_stride     = n_keep;
        a.n_keep          = n_keep;
        a.score           = ds.p;
        a.score_stride    = stride;
        a.rows_per_kv     = G;
        a.workspace       = ws.p;
        a.workspace_bytes = ws.n;
        a.chunk           = chunk;
        ASSERT_TRUE(cuda::kv_compact(a, nullptr).is_ok());
        CK(cudaDeviceSynchronize());
        const std::vector<bf16_t> k = dk.get(), v = dv.get();
        const std::vector<float>  s = ds.get();
        for (int g = 0; g < Hkv; ++g)
            for (int64_t i = 0; i < n_keep; ++i) {
                const int32_t src = keep[size_t(g * n_keep + i)];
                ASSERT_EQ(0, std::memcmp(&k[pp.row(i, g)], &pp.k[pp.row(src, g)], size_t(D) * 2)) << g << " " << i;
                ASSERT_EQ(0, std::memcmp(&v[pp.row(i, g)], &pp.v[pp.row(src, g)], size_t(D) * 2)) << g << " " << i;
                for (int r = 0; r < G; ++r)
                    ASSERT_EQ(s[size_t(g * G + r) * stride + i], score[size_t(g * G + r) * stride + src]);
            }
    }
}

// D2O: similarity (u, arg) against max_dot_argmax on gather_normalized rows, the threshold, and the merged rows
// against d2o_merge_rows given the same u, arg and tau.
void run_merge(int D, cuda::d2o_rule rule, bool no_merge, uint32_t seed) {
    std::mt19937  rng(seed);
    const int     Hkv = 2;
    const int64_t n   = 900;
    paged_pool    pp(Hkv, D, n, rng);
    // a CPU cache with the same rows (fp16 holds the bf16 values exactly)
    kv_cache cpu(1, Hkv, D, n, 1);
    ASSERT_TRUE(cpu.reserve(0, n).is_ok());
    {
        std::vector<float> kf(size_t(n) * Hkv * D), vf(kf.size());
        for (int64_t t = 0; t < n; ++t)
            for (int g = 0; g < Hkv; ++g)
                for (int d = 0; d < D; ++d) {
                    kf[(size_t(t) * Hkv + g) * D + d] = bf16_to_fp32(pp.k[pp.row(t, g) + d]);
                    vf[(size_t(t) * Hkv + g) * D + d] = bf16_to_fp32(pp.v[pp.row(t, g) + d]);
                }
        cpu.write(0, 0, 0, n, kf.data(), vf.data());
    }
    const int64_t                         n_keep = cuda::evict_keep_count(n, 4, 90, 90);
    std::vector<int32_t>                  keep(size_t(Hkv) * n_keep);
    std::vector<std::vector<int32_t>>     keep_v(Hkv), ev_v(Hkv);
    std::uniform_real_distribution<float> ud(0.f, 1.f);
    for (int g = 0; g < Hkv; ++g) {
        std::vector<float> sc(static_cast<size_t>(n));
        for (float & x : sc) x = ud(rng);
        evict_keep_set(sc.data(), n, 4, 90, 90, keep_v[size_t(g)]);
        std::copy(keep_v[size_t(g)].begin(), keep_v[size_t(g)].end(), keep.begin() + std::ptrdiff_t(g * n_keep));
        size_t j = 0;
        for (int32_t t = 0; t < n; ++t) {
            if (j < keep_v[size_t(g)].size() && keep_v[size_t(g)][j] == t)
                ++j;
            else
                ev_v[size_t(g)].push_back(t);
        }
    }
    const int64_t n_ev = n - n_keep;

    dev_buf<bf16_t>     dk(pp.k), dv(pp.v);
    dev_buf<int32_t>    dpages(pp.pages), dkeep(keep);
    dev_buf<uint8_t>    ws(cuda::d2o_merge_workspace_bytes(Hkv, n, n_keep));
    cuda::d2o_tau_state st0;
    st0.tau = no_merge ? 2.0 : 0.3; // 2 > any cosine: with alpha 1, beta 0 nothing merges
    st0.set = 1;
    dev_buf<cuda::d2o_tau_state> dtau(std::vector<cuda::d2o_tau_state>{st0});
    dev_buf<int64_t>             dmerged(1);
    dev_buf<double>              dmean(1);
    cuda::d2o_merge_args         a;
    a.kv.k_pool       = dk.p;
    a.kv.v_pool       = dv.p;
    a.kv.pages        = dpages.p;
    a.kv.n_head_kv    = Hkv;
    a.kv.head_dim     = D;
    a.n               = n;
    a.keep            = dkeep.p;
    a.keep_stride     = n_keep;
    a.n_keep          = n_keep;
    a.rule            = rule;
    a.alpha           = no_merge ? 1.0 : 0.5;
    a.beta            = no_merge ? 0.0 : 0.5;
    a.tau             = dtau.p;
    a.merged          = dmerged.p;
    a.u_mean          = dmean.p;
    a.workspace       = ws.p;
    a.workspace_bytes = ws.n;
    ASSERT_TRUE(cuda::d2o_merge(a, nullptr).is_ok());
    CK(cudaDeviceSynchronize());

    const cuda::d2o_workspace_view view = cuda::d2o_workspace_views(ws.p, Hkv, n, n_keep);
    std::vector<int32_t>           g_ev(size_t(Hkv) * n_ev), g_arg(g_ev.size());
    std::vector<float>             g_u(g_ev.size());
    CK(cudaMemcpy(g_ev.data(), view.evicted, g_ev.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(g_arg.data(), view.arg, g_arg.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(g_u.data(), view.u, g_u.size() * 4, cudaMemcpyDeviceToHost));

    double u_sum      = 0;
    int    n_arg_diff = 0;
    for (int g = 0; g < Hkv; ++g) {
        ASSERT_EQ(int64_t(ev_v[size_t(g)].size()), n_ev);
        for (int64_t i = 0; i < n_ev; ++i) ASSERT_EQ(g_ev[size_t(g * n_ev + i)], ev_v[size_t(g)][size_t(i)]);
        std::vector<const fp16_t *> rows;
        for (int32_t t : keep_v[size_t(g)]) rows.push_back(cpu.k_row(0, 0, t, g));
        std::vector<float> C(rows.size() * size_t(D));
        gather_normalized(rows.data(), int64_t(rows.size()), D, C.data());
        rows.clear();
        for (int32_t t : ev_v[size_t(g)]) rows.push_back(cpu.k_row(0, 0, t, g));
        std::vector<float> E(rows.size() * size_t(D));
        gather_normalized(rows.data(), int64_t(rows.size()), D, E.data());
        std::vector<float>   u(static_cast<size_t>(n_ev));
        std::vector<int32_t> arg(static_cast<size_t>(n_ev));
        max_dot_argmax(E.data(), n_ev, C.data(), n_keep, D, u.data(), arg.data(), pool());
        for (int64_t i = 0; i < n_ev; ++i) {
            const float   gu = g_u[size_t(g * n_ev + i)];
            const int32_t ga = g_arg[size_t(g * n_ev + i)];
            u_sum += u[size_t(i)];
            EXPECT_NEAR(gu, u[size_t(i)], 2e-6) << "head " << g << " evicted " << i;
            ASSERT_GE(ga, 0);
            if (ga != arg[size_t(i)]) { // only a near tie may differ: the GPU's choice is within rounding of the max
                ++n_arg_diff;
                double dot = 0;
                for (int d = 0; d < D; ++d) dot += double(E[size_t(i) * D + d]) * C[size_t(ga) * D + d];
                EXPECT_NEAR(dot, u[size_t(i)], 2e-6) << "head " << g << " evicted " << i;
            }
        }
    }
    EXPECT_LE(n_arg_diff, 2);
    const double mean = u_sum / double(Hkv * n_ev);
    EXPECT_NEAR(dmean.get()[0], mean, 1e-6);
    const cuda::d2o_tau_state st       = dtau.get()[0];
    const double              want_tau = no_merge ? 2.0 : 0.5 * 0.3 + 0.5 * mean;
    EXPECT_NEAR(st.tau, want_tau, 1e-6);

    // the CPU merge with the GPU's u, arg and tau
    int64_t cpu_merged = 0;
    for (int g = 0; g < Hkv; ++g)
        cpu_merged += d2o_merge_rows(cpu, 0, 0, g, keep_v[size_t(g)], ev_v[size_t(g)], g_u.data() + g * n_ev,
                                     g_arg.data() + g * n_ev, float(st.tau),
                                     rule == cuda::d2o_rule::SOFTMAX ? d2o_merge::SOFTMAX : d2o_merge::REFERENCE);
    EXPECT_EQ(dmerged.get()[0], cpu_merged);
    if (no_merge)
        EXPECT_EQ(cpu_merged, 0);
    else
        EXPECT_GT(cpu_merged, 0);
    const std::vector<bf16_t> k = dk.get(), v = dv.get();
    if (no_merge) {
        EXPECT_EQ(k, pp.k);
        EXPECT_EQ(v, pp.v);
    }
    double max_rel = 0;
    for (int64_t t = 0; t < n; ++t)
        for (int g = 0; g < Hkv; ++g) {
            const fp16_t * ck = cpu.k_row(0, 0, t, g);
            const fp16_t * cv = cpu.v_row(0, 0, t, g);
            for (int d = 0; d < D; ++d) {
                const float gk = bf16_to_fp32(k[pp.row(t, g) + d]), gv = bf16_to_fp32(v[pp.row(t, g) + d]);
                const float rk = fp16_to_fp32(ck[d]), rv = fp16_to_fp32(cv[d]);
                // bf16 rounding (2^-9 relative) of the GPU's result plus fp16's of the CPU's
                const double ek  = std::fabs(gk - rk) / (std::fabs(rk) + 1e-2);
                const double evv = std::fabs(gv - rv) / (std::fabs(rv) + 1e-2);
                max_rel          = std::max(max_rel, std::max(ek, evv));
            }
        }
    EXPECT_LT(max_rel, 1.0 / 256 + 1.0 / 1024) << "D " << D;
    std::printf("d2o merge D=%d rule=%s%s: merged %lld of %lld, arg near-ties %d, tau %.4f, max rel err %.2e\n", D,
                rule == cuda::d2o_rule::SOFTMAX ? "softmax" : "reference", no_merge ? " (tau above all)" : "",
                (long long)cpu_merged, (long long)(Hkv * n_ev), n_arg_diff, st.tau, max_rel);
}

TEST(cuda_kv_evict, d2o_merge) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    uint32_t seed = 300;
    for (int D : {128, 64}) {
        run_merge(D, cuda::d2o_rule::REFERENCE, false, seed++);
        run_merge(D, cuda::d2o_rule::SOFTMAX, false, seed++);
        run_merge(D, cuda::d2o_rule::REFERENCE, true, seed++);
    }
}

} // namespace
