// CUDA sparse prefill (attn-sparse-prefill.cuh) and vertical-slash index building (vslash-index.cuh): the sparse
// kernels (mma.sync; wgmma and paired wgmma on Hopper) at full budget against our dense mma.sync kernel, on
// vertical-slash plans and random plans against the CPU sparse kernel; the step count and the dense fallback of
// vslash_attention_gpu; the GPU selection and plan against the CPU vslash_select / vslash_plan_head fed the same
// scores (exact), the GPU estimate against the CPU vslash_estimate. Random inputs from fixed seeds; skips itself
// when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "attn/attn-sparse-prefill.h"
#include "attn/minference/index.h"
#include "attn/prefill-plan.h"
#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/attn-sparse-prefill.cuh"
#include "backend/cuda/vslash-index.cuh"
#include "core/fp16.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "cuda/cuda-test-util.h"

namespace {

using namespace lc;
using namespace lc::cuda_test;

// One layer: paged K/V (bf16 on the device, the same values in fp16 for the CPU), shuffled page table, queries.
// clustered > 0 plants structure: keys near a few positions repeat the query direction (vertical lines) and a
// few diagonals are strengthened, so that the index has something to find besides noise.
struct layer {
    int64_t              n_q, pos0, n_kv;
    int                  n_head, n_head_kv, D;
    std::vector<bf16_t>  k, v, q;
    std::vector<fp16_t>  k16, v16;
    std::vector<float>   qf;
    std::vector<int32_t> pages;
    int64_t              n_pages;
    layer(int64_t n_q_, int64_t pos0_, int n_head_, int n_head_kv_, int D_, uint32_t seed)
        : n_q(n_q_), pos0(pos0_), n_kv(pos0_ + n_q_), n_head(n_head_), n_head_kv(n_head_kv_), D(D_) {
        std::mt19937 rng(seed);
        const int64_t np = (n_kv + 63) / 64;
        n_pages          = np + 3;
        const size_t n   = size_t(n_pages) * n_head_kv * 64 * D;
        k                = random_bf16(n, rng);
        v                = random_bf16(n, rng);
        k16.resize(n);
        v16.resize(n);
        for (size_t i = 0; i < n; ++i) {
            k16[i] = fp32_to_fp16(bf16_to_fp32(k[i]));
            v16[i] = fp32_to_fp16(bf16_to_fp32(v[i]));
        }
        pages.resize(size_t(n_pages));
        std::iota(pages.begin(), pages.end(), 0);
        std::shuffle(pages.begin(), pages.end(), rng);
        pages.resize(size_t(np));
        q = random_bf16(size_t(n_q) * n_head * D, rng, 0.5f);
        qf.resize(q.size());
        for (size_t i = 0; i < q.size(); ++i) qf[i] = bf16_to_fp32(q[i]);
    }
    kv_view view() const {
        kv_view kv;
        kv.k_pool     = k16.data();
        kv.v_pool     = v16.data();
        kv.pages      = pages.data();
        kv.n_kv       = n_kv;
        kv.n_head_kv  = n_head_kv;
        kv.head_dim   = D;
        kv.page_elems = size_t(n_head_kv) * 64 * D;
        return kv;
    }
    float scale() const { return 1.f / std::sqrt(float(D)); }
};

struct dev_layer {
    dev_buf<bf16_t>     q, k, v;
    dev_buf<int32_t>    pages;
    cuda::attn_kv_paged kv;
    explicit dev_layer(const layer & L) : q(L.q), k(L.k), v(L.v), pages(L.pages) {
        kv.k_pool        = k.p;
        kv.v_pool        = v.p;
        kv.pages         = pages.p;
        kv.n_pages_total = L.n_pages;
        kv.n_kv          = L.n_kv;
        kv.n_head_kv     = L.n_head_kv;
        kv.head_dim      = L.D;
    }
};

// Runs the GPU sparse kernel over plan (uploaded), f32 output and lse.
void run_sparse(const layer & L, dev_layer & d, const cuda::prefill_plan_dev & plan, std::vector<float> & o,
                std::vector<float> & lse,
                cuda::attn_sparse_prefill_kernel kernel = cuda::attn_sparse_prefill_kernel::MMA_SYNC) {
    dev_buf<float> dout(size_t(L.n_q) * L.n_head * L.D), dlse(size_t(L.n_q) * L.n_head);
    CK(cudaMemset(dout.p, 0xff, dout.n * 4));
    CK(cudaMemset(dlse.p, 0xff, dlse.n * 4));
    cuda::attn_sparse_prefill_args a;
    a.q     = d.q.p;
    a.plan  = plan;
    a.kv    = d.kv;
    a.scale = L.scale();
    a.o     = dout.p;
    a.o_f32 = true;
    a.lse   = dlse.p;
    a.kernel = kernel;
    ASSERT_TRUE(cuda::attn_sparse_prefill(a, nullptr).is_ok());
    CK(cudaDeviceSynchronize());
    o   = dout.get();
    lse = dlse.get();
}

void run_dense(const layer & L, dev_layer & d, std::vector<float> & o, std::vector<float> & lse,
               cuda::attn_prefill_kernel kernel = cuda::attn_prefill_kernel::MMA_SYNC) {
    dev_buf<float> dout(size_t(L.n_q) * L.n_head * L.D), dlse(size_t(L.n_q) * L.n_head);
    cuda::attn_prefill_args a;
    a.q      = d.q.p;
    a.n_q    = L.n_q;
    a.pos0   = L.pos0;
    a.n_head = L.n_head;
    a.kv     = d.kv;
    a.scale  = L.scale();
    a.o      = dout.p;
    a.o_f32  = true;
    a.lse    = dlse.p;
    ASSERT_TRUE(cuda::attn_prefill(a, kernel, nullptr).is_ok());
    CK(cudaDeviceSynchronize());
    o   = dout.get();
    lse = dlse.get();
}

struct shape {
    int64_t n_q, pos0;
    int     n_head, n_head_kv, D;
};
const shape k_shapes[] = {
    {1000, 0, 32, 8, 128}, // GQA 4, ragged last block
    {300, 777, 16, 4, 128}, // chunked: queries start mid-page
    {640, 64, 8, 8, 64},    // MHA, head_dim 64
};

// The CPU vertical-slash plan of every head with budgets (v, s), and its scores.
void cpu_vslash(const layer & L, int64_t v, int64_t s, prefill_plan & plan, std::vector<std::vector<float>> & vert,
                std::vector<std::vector<float>> & sl) {
    plan.reset(L.n_q, L.pos0, L.n_head);
    vert.assign(size_t(L.n_head), {});
    sl.assign(size_t(L.n_head), {});
    std::vector<float>   scratch;
    std::vector<int32_t> cols, offs;
    for (int h = 0; h < L.n_head; ++h) {
        vslash_estimate(L.qf.data(), L.n_q, L.pos0, L.n_head, h, L.view(), L.scale(), vert[size_t(h)], sl[size_t(h)],
                        scratch);
        vslash_select(vert[size_t(h)], sl[size_t(h)], L.n_kv, v, s, cols, offs);
        vslash_plan_head(cols, offs, plan, h);
    }
}

TEST(CudaSparsePrefill, FullPlanEqualsDense) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    for (const shape & sh : k_shapes) {
        layer        L(sh.n_q, sh.pos0, sh.n_head, sh.n_head_kv, sh.D, 11);
        dev_layer    d(L);
        prefill_plan plan;
        prefill_plan_full(plan, L.n_q, L.pos0, L.n_head);
        cuda::prefill_plan_buf pb;
        cuda::prefill_plan_upload(plan, pb);
        std::vector<float> o, lse, od, lsed;
        run_sparse(L, d, pb.view, o, lse);
        run_dense(L, d, od, lsed);
        const bool same = std::memcmp(o.data(), od.data(), o.size() * 4) == 0 &&
                          std::memcmp(lse.data(), lsed.data(), lse.size() * 4) == 0;
        const double e = nmse(o, od);
        std::printf("full plan vs dense mma_sync n_q=%lld pos0=%lld H=%d/%d D=%d: bitwise %s, nmse %.2e\n",
                    (long long)L.n_q, (long long)L.pos0, L.n_head, L.n_head_kv, L.D, same ? "equal" : "different", e);
        EXPECT_LT(e, 1e-12);
        if (L.D == 128 && hopper()) { // the wgmma kernel: other summation order, same function
            std::vector<float> ow, lsew;
            run_sparse(L, d, pb.view, ow, lsew, cuda::attn_sparse_prefill_kernel::WGMMA);
            const double ew = nmse(ow, od), dl = max_dlse(lsew, lsed);
            std::printf("  full plan, wgmma sparse kernel vs dense mma_sync: nmse %.2e, max|dlse| %.2e\n", ew, dl);
            EXPECT_LT(ew, 1e-8);
            EXPECT_LT(dl, 1e-4);
            for (const auto kp : {cuda::attn_sparse_prefill_kernel::WGMMA_PAIR,
                                  cuda::attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL}) {
                std::vector<float> op, lsep;
                run_sparse(L, d, pb.view, op, lsep, kp);
                const double ep = nmse(op, od), dp = max_dlse(lsep, lsed);
                std::printf("  full plan, paired wgmma kernel (%s) vs dense mma_sync: nmse %.2e, max|dlse| %.2e\n",
                            kp == cuda::attn_sparse_prefill_kernel::WGMMA_PAIR ? "pipelined" : "serial", ep, dp);
                EXPECT_LT(ep, 1e-8);
                EXPECT_LT(dp, 1e-4);
            }
        }
    }
}

TEST(CudaSparsePrefill, VslashPlanMatchesCpuKernel) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    const int64_t budgets[][2] = {{40, 60}, {100, 300}};
    for (const shape & sh : k_shapes) {
        for (const auto & bu : budgets) {
            layer                           L(sh.n_q, sh.pos0, sh.n_head, sh.n_head_kv, sh.D, 23);
            dev_layer                       d(L);
            prefill_plan                    plan;
            std::vector<std::vector<float>> vt, sl;
            cpu_vslash(L, bu[0], bu[1], plan, vt, sl);
            ASSERT_TRUE(prefill_plan_valid(plan));
            std::vector<float> o_ref(L.qf.size()), lse_ref(size_t(L.n_q) * L.n_head);
            attn_sparse_prefill(plan, L.qf.data(), L.view(), L.scale(), o_ref.data(), lse_ref.data(), pool());
            cuda::prefill_plan_buf pb;
            cuda::prefill_plan_upload(plan, pb);
            std::vector<float> o, lse;
            run_sparse(L, d, pb.view, o, lse);
            const double e      = nmse(o, o_ref);
            double       dl_max = 0;
            for (size_t i = 0; i < lse.size(); ++i) {
                if (std::isinf(lse_ref[i]) && lse[i] == lse_ref[i]) continue;
                dl_max = std::max(dl_max, std::fabs(double(lse[i]) - lse_ref[i]));
            }
            const prefill_plan_pairs pc = prefill_plan_count(plan);
            std::printf("vslash(%lld,%lld) plan vs CPU sparse kernel n_q=%lld pos0=%lld H=%d/%d D=%d: %.1f%% of causal "
                        "pairs, %zu ranges %zu cols (head 0); nmse %.2e, max|dlse| %.2e\n",
                        (long long)bu[0], (long long)bu[1], (long long)L.n_q, (long long)L.pos0, L.n_head, L.n_head_kv,
                        L.D, 100.0 * pc.computed / pc.causal, plan.heads[0].ranges.size(), plan.heads[0].cols.size(), e,
                        dl_max);
            EXPECT_LT(e, 5e-5);
            EXPECT_LT(dl_max, 2e-3);
            if (L.D == 128 && hopper()) {
                std::vector<float> ow, lsew;
                run_sparse(L, d, pb.view, ow, lsew, cuda::attn_sparse_prefill_kernel::WGMMA);
                const double ew = nmse(ow, o_ref), dw = max_dlse(lsew, lse_ref);
                std::printf("  wgmma sparse kernel vs CPU sparse kernel: nmse %.2e, max|dlse| %.2e; vs mma.sync nmse "
                            "%.2e\n",
                            ew, dw, nmse(ow, o));
                EXPECT_LT(ew, 5e-5);
                EXPECT_LT(dw, 2e-3);
                for (const auto kp : {cuda::attn_sparse_prefill_kernel::WGMMA_PAIR,
                                      cuda::attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL}) {
                    std::vector<float> op, lsep;
                    run_sparse(L, d, pb.view, op, lsep, kp);
                    const double ep = nmse(op, o_ref), dp = max_dlse(lsep, lse_ref);
                    std::printf("  paired wgmma kernel (%s) vs CPU sparse kernel: nmse %.2e, max|dlse| %.2e; vs "
                                "mma.sync nmse %.2e\n",
                                kp == cuda::attn_sparse_prefill_kernel::WGMMA_PAIR ? "pipelined" : "serial", ep, dp,
                                nmse(op, o));
                    EXPECT_LT(ep, 5e-5);
                    EXPECT_LT(dp, 2e-3);
                }
            }
        }
    }
}

// Random plans whose two blocks of a pair differ: per (head, block) one of: empty, all causal keys, random ranges
// and columns (some columns inside the neighbour block's ranges), the previous block's plan shifted by 64 (slash
// structure), or only columns. n_cols_max sets the column budget (large values push the two blocks' columns past
// the paired kernel's shared merge, so that its unshared column walk runs).
void random_plan(const layer & L, std::mt19937 & rng, int64_t n_cols_max, prefill_plan & plan) {
    plan.reset(L.n_q, L.pos0, L.n_head);
    for (int h = 0; h < L.n_head; ++h) {
        prefill_head_plan &                      hp = plan.heads[size_t(h)];
        std::vector<std::pair<int64_t, int64_t>> prev;
        std::vector<int32_t>                     prev_cols;
        for (int64_t b = 0; b < plan.n_qblk(); ++b) {
            const int64_t                            last = plan.q_last(b); // keys 0..last
            const int                                mode = std::uniform_int_distribution<int>(0, 9)(rng);
            std::vector<std::pair<int64_t, int64_t>> rgs;
            std::vector<char>                        in(size_t(last + 1), 0);
            if (mode == 1) {
                rgs.push_back({0, last + 1});
            } else if (mode >= 2 && mode <= 5) {
                int64_t at = std::uniform_int_distribution<int64_t>(0, 200)(rng);
                while (at <= last) {
                    const int64_t len = std::uniform_int_distribution<int64_t>(1, 300)(rng);
                    rgs.push_back({at, std::min(last + 1, at + len)});
                    at += len + std::uniform_int_distribution<int64_t>(1, 400)(rng);
                }
            } else if (mode >= 6 && mode <= 8) {
                for (const auto & r : prev) {
                    const int64_t a = r.first + 64, e = std::min(last + 1, r.second + 64);
                    if (a < e) rgs.push_back({a, e});
                }
                if (rgs.empty()) rgs.push_back({std::max<int64_t>(0, last - 100), last + 1});
            }
            for (const auto & r : rgs) {
                hp.add_range(r.first, r.second);
                for (int64_t k = r.first; k < r.second; ++k) in[size_t(k)] = 1;
            }
            std::vector<int32_t> cl;
            if (mode != 0 && mode != 1) {
                const int64_t n_c = std::uniform_int_distribution<int64_t>(0, n_cols_max)(rng);
                for (int32_t c : prev_cols) // columns shared with the previous block
                    if (c <= last && !in[size_t(c)] && std::uniform_int_distribution<int>(0, 3)(rng) > 0) {
                        in[size_t(c)] = 2;
                    }
                for (int64_t i = 0; i < n_c; ++i) {
                    const int64_t c = std::uniform_int_distribution<int64_t>(0, last)(rng);
                    if (!in[size_t(c)]) in[size_t(c)] = 2;
                }
                for (int64_t k = 0; k <= last; ++k)
                    if (in[size_t(k)] == 2) cl.push_back(int32_t(k));
            }
            for (int32_t c : cl) hp.add_col(c);
            hp.end_item();
            prev      = rgs;
            prev_cols = cl;
        }
    }
}

// The paired wgmma kernel against the CPU sparse kernel and the mma.sync kernel on random plans (odd block
// counts, chunks with pos0 > 0, GQA, blocks of a pair with nothing in common, empty blocks, many columns).
TEST(CudaSparsePrefill, PairedKernelOnRandomPlans) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    if (!hopper()) GTEST_SKIP() << "the paired kernel needs sm_90";
    struct cfg {
        int64_t n_q, pos0;
        int     n_head, n_head_kv;
        int64_t n_cols_max;
        bool    past_merge; // some pair holds more than 4096 columns (the unshared column walk)
    };
    const cfg cfgs[] = {
        {1000, 0, 8, 2, 150, false},    // 16 blocks, ragged last
        {300, 777, 8, 8, 300, false},   // 5 blocks: the last one unpaired; queries start mid-page
        {64, 0, 4, 1, 40, false},       // a single block
        {130, 5000, 4, 2, 2000, false}, // 3 blocks, merges of up to ~2200 columns
        {448, 3000, 4, 4, 1200, false}, // 7 blocks, merges of up to ~2200 columns
        {130, 9000, 4, 2, 6000, true},  // 3 blocks with up to ~5000 columns each: past the shared merge
    };
    uint32_t seed = 101;
    for (const cfg & cf : cfgs) {
        layer        L(cf.n_q, cf.pos0, cf.n_head, cf.n_head_kv, 128, seed);
        dev_layer    d(L);
        std::mt19937 rng(seed++);
        prefill_plan plan;
        random_plan(L, rng, cf.n_cols_max, plan);
        ASSERT_TRUE(prefill_plan_valid(plan));
        std::vector<float> o_ref(L.qf.size()), lse_ref(size_t(L.n_q) * L.n_head);
        attn_sparse_prefill(plan, L.qf.data(), L.view(), L.scale(), o_ref.data(), lse_ref.data(), pool());
        cuda::prefill_plan_buf pb;
        cuda::prefill_plan_upload(plan, pb);
        std::vector<float> om, lsem, op, lsep, os, lses;
        run_sparse(L, d, pb.view, om, lsem, cuda::attn_sparse_prefill_kernel::MMA_SYNC);
        run_sparse(L, d, pb.view, op, lsep, cuda::attn_sparse_prefill_kernel::WGMMA_PAIR);
        run_sparse(L, d, pb.view, os, lses, cuda::attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL);
        const prefill_plan_pairs pc            = prefill_plan_count(plan);
        int64_t                  max_pair_cols = 0; // columns of a pair of blocks (4096 at most merge)
        for (const prefill_head_plan & hp : plan.heads)
            for (int64_t b = 0; b < plan.n_qblk(); b += 2)
                max_pair_cols =
                    std::max(max_pair_cols, hp.col_off[size_t(std::min(b + 2, plan.n_qblk()))] - hp.col_off[size_t(b)]);
        const double ep = nmse(op, o_ref), dp = max_dlse(lsep, lse_ref);
        const double em = nmse(om, o_ref), dm = max_dlse(lsem, lse_ref);
        std::printf("random plan n_q=%lld pos0=%lld H=%d/%d cols<=%lld: %.1f%% of causal pairs, %zu cols (head 0), "
                    "%lld at most in a pair; paired vs CPU nmse %.2e max|dlse| %.2e; mma.sync vs CPU nmse %.2e "
                    "max|dlse| %.2e; paired vs "
                    "mma.sync nmse %.2e\n",
                    (long long)L.n_q, (long long)L.pos0, L.n_head, L.n_head_kv, (long long)cf.n_cols_max,
                    100.0 * pc.computed / pc.causal, plan.heads[0].cols.size(), (long long)max_pair_cols, ep, dp, em,
                    dm, nmse(op, om));
        const double es = nmse(os, o_ref), ds = max_dlse(lses, lse_ref);
        std::printf("  serial paired vs CPU nmse %.2e max|dlse| %.2e; pipelined vs serial: %s\n", es, ds,
                    std::memcmp(op.data(), os.data(), op.size() * 4) == 0 ? "bitwise equal" : "different");
        EXPECT_LT(ep, 5e-5);
        EXPECT_LT(dp, 2e-3);
        EXPECT_LT(es, 5e-5);
        EXPECT_LT(ds, 2e-3);
        EXPECT_LT(em, 5e-5);
        if (cf.past_merge) EXPECT_GT(max_pair_cols, 4096);
        // rows that see no key: o = 0 and lse = -inf in every kernel
        for (size_t i = 0; i < lse_ref.size(); ++i)
            if (std::isinf(lse_ref[i])) {
                EXPECT_EQ(lsep[i], lse_ref[i]) << "row/head " << i;
                EXPECT_EQ(lses[i], lse_ref[i]) << "row/head " << i;
                for (int x = 0; x < L.D; ++x) EXPECT_EQ(op[i * size_t(L.D) + size_t(x)], 0.f);
                for (int x = 0; x < L.D; ++x) EXPECT_EQ(os[i * size_t(L.D) + size_t(x)], 0.f);
            }
    }
}

// head_dim 64: AUTO takes the mma.sync kernel (bitwise), the wgmma kernels refuse.
TEST(CudaSparsePrefill, HeadDim64FallsBack) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    layer        L(200, 64, 4, 2, 64, 71);
    dev_layer    d(L);
    std::mt19937 rng(71);
    prefill_plan plan;
    random_plan(L, rng, 100, plan);
    cuda::prefill_plan_buf pb;
    cuda::prefill_plan_upload(plan, pb);
    std::vector<float> om, lsem, oa, lsea;
    run_sparse(L, d, pb.view, om, lsem, cuda::attn_sparse_prefill_kernel::MMA_SYNC);
    run_sparse(L, d, pb.view, oa, lsea, cuda::attn_sparse_prefill_kernel::AUTO);
    EXPECT_EQ(std::memcmp(om.data(), oa.data(), om.size() * 4), 0);
    cuda::attn_sparse_prefill_args a;
    a.q      = d.q.p;
    a.plan   = pb.view;
    a.kv     = d.kv;
    a.scale  = L.scale();
    a.o      = nullptr;
    a.kernel = cuda::attn_sparse_prefill_kernel::WGMMA_PAIR;
    EXPECT_FALSE(cuda::attn_sparse_prefill(a, nullptr).is_ok());
    a.kernel = cuda::attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL;
    EXPECT_FALSE(cuda::attn_sparse_prefill(a, nullptr).is_ok());
    a.kernel = cuda::attn_sparse_prefill_kernel::WGMMA;
    EXPECT_FALSE(cuda::attn_sparse_prefill(a, nullptr).is_ok());
}

bool plans_equal(const prefill_plan & a, const prefill_plan & b, std::string & why) {
    for (int h = 0; h < a.n_head; ++h) {
        const auto & x = a.heads[size_t(h)];
        const auto & y = b.heads[size_t(h)];
        if (x.range_off != y.range_off || x.col_off != y.col_off || x.cols != y.cols) {
            why = "head " + std::to_string(h) + ": offsets or columns differ";
            return false;
        }
        for (size_t i = 0; i < x.ranges.size(); ++i)
            if (x.ranges[i].begin != y.ranges[i].begin || x.ranges[i].end != y.ranges[i].end) {
                why = "head " + std::to_string(h) + ": range " + std::to_string(i) + " differs";
                return false;
            }
    }
    return true;
}

// Selection and plan building on the GPU from the CPU's own scores: exactly the CPU's lists and plan.
TEST(CudaVslashIndex, SelectAndPlanEqualCpu) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    const int64_t budgets[][2] = {{40, 60}, {30, 50}, {100, 300}, {5000, 5000}, {1000, 70}};
    for (const shape & sh : k_shapes) {
        layer                           L(sh.n_q, sh.pos0, sh.n_head, sh.n_head_kv, sh.D, 37);
        std::vector<std::vector<float>> vt, sl;
        prefill_plan                    unused;
        cpu_vslash(L, 40, 60, unused, vt, sl);
        const int64_t      N = L.n_kv;
        std::vector<float> vflat, sflat;
        for (int h = 0; h < L.n_head; ++h) {
            vflat.insert(vflat.end(), vt[size_t(h)].begin(), vt[size_t(h)].begin() + N);
            sflat.insert(sflat.end(), sl[size_t(h)].begin(), sl[size_t(h)].begin() + N);
        }
        dev_buf<float> dv(vflat), ds(sflat);
        for (const auto & bu : budgets) {
            const int64_t    ve = cuda::vslash_v_eff(bu[0], N), se = cuda::vslash_s_eff(bu[1], N);
            dev_buf<int32_t> dc(size_t(L.n_head) * ve), dof(size_t(L.n_head) * se);
            cuda::vslash_select_gpu(dv.p, ds.p, N, L.n_head, ve, se, dc.p, dof.p, nullptr);
            cuda::vslash_workspace ws;
            cuda::prefill_plan_buf pb;
            cuda::vslash_plan_gpu(dc.p, ve, dof.p, se, L.n_q, L.pos0, L.n_head, ws, pb, nullptr);
            CK(cudaDeviceSynchronize());
            const std::vector<int32_t> gc = dc.get(), go = dof.get();
            prefill_plan               ref;
            ref.reset(L.n_q, L.pos0, L.n_head);
            bool lists_ok = true;
            for (int h = 0; h < L.n_head; ++h) {
                std::vector<int32_t> cols, offs;
                vslash_select(vt[size_t(h)], sl[size_t(h)], N, bu[0], bu[1], cols, offs);
                std::vector<int32_t> offs_asc(offs.rbegin(), offs.rend());
                lists_ok = lists_ok && std::equal(cols.begin(), cols.end(), gc.begin() + h * ve) &&
                           int64_t(cols.size()) == ve && int64_t(offs.size()) == se &&
                           std::equal(offs_asc.begin(), offs_asc.end(), go.begin() + h * se);
                vslash_plan_head(cols, offs, ref, h);
            }
            prefill_plan got;
            cuda::prefill_plan_download(pb, got);
            std::string why;
            const bool  plan_ok = plans_equal(got, ref, why);
            std::printf("select+plan n_q=%lld pos0=%lld H=%d v=%lld s=%lld (eff %lld, %lld): lists %s, plan %s %s "
                        "(%lld ranges, %lld cols)\n",
                        (long long)L.n_q, (long long)L.pos0, L.n_head, (long long)bu[0], (long long)bu[1],
                        (long long)ve, (long long)se, lists_ok ? "equal" : "DIFFER", plan_ok ? "equal" : "DIFFERS",
                        why.c_str(), (long long)pb.n_ranges, (long long)pb.n_cols);
            EXPECT_TRUE(lists_ok);
            EXPECT_TRUE(plan_ok) << why;
            EXPECT_TRUE(prefill_plan_valid(got));
        }
    }
}

// The GPU estimate against the CPU's scores; then the whole GPU index against the CPU plan (pairs shared), and at
// full budget the sparse output equals the dense kernel's.
TEST(CudaVslashIndex, EstimateMatchesCpuAndFullBudgetIsDense) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    for (const shape & sh : k_shapes) {
        layer                           L(sh.n_q, sh.pos0, sh.n_head, sh.n_head_kv, sh.D, 41);
        dev_layer                       d(L);
        const int64_t                   N = L.n_kv;
        std::vector<std::vector<float>> vt, sl;
        prefill_plan                    ref;
        cpu_vslash(L, 100, 300, ref, vt, sl);
        cuda::vslash_workspace ws;
        cuda::prefill_plan_buf pb;
        ASSERT_TRUE(cuda::vslash_index_gpu(d.q.p, L.n_q, L.pos0, L.n_head, d.kv, L.scale(), 100, 300, ws, pb, nullptr)
                        .is_ok());
        CK(cudaDeviceSynchronize());
        std::vector<float> gv(size_t(L.n_head) * N), gs(size_t(L.n_head) * N);
        CK(cudaMemcpy(gv.data(), ws.vertical, gv.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gs.data(), ws.slash, gs.size() * 4, cudaMemcpyDeviceToHost));
        double ev = 0, es = 0, sum_v = 0;
        for (int h = 0; h < L.n_head; ++h)
            for (int64_t j = 0; j < N; ++j) {
                ev = std::max(ev, std::fabs(double(gv[size_t(h * N + j)]) - vt[size_t(h)][size_t(j)]));
                es = std::max(es, std::fabs(double(gs[size_t(h * N + j)]) - sl[size_t(h)][size_t(j)]));
                sum_v += gv[size_t(h * N + j)];
            }
        prefill_plan got;
        cuda::prefill_plan_download(pb, got);
        EXPECT_TRUE(prefill_plan_valid(got));
        // pairs in both plans / pairs in either, over (head, block, key)
        int64_t both = 0, either = 0;
        for (int h = 0; h < L.n_head; ++h)
            for (int64_t b = 0; b < ref.n_qblk(); ++b) {
                std::set<int32_t> a, c;
                auto              keys = [&](const prefill_head_plan & hp, std::set<int32_t> & out) {
                    for (int64_t i = hp.range_off[size_t(b)]; i < hp.range_off[size_t(b) + 1]; ++i)
                        for (int32_t k = hp.ranges[size_t(i)].begin; k < hp.ranges[size_t(i)].end; ++k) out.insert(k);
                    for (int64_t i = hp.col_off[size_t(b)]; i < hp.col_off[size_t(b) + 1]; ++i)
                        out.insert(hp.cols[size_t(i)]);
                };
                keys(ref.heads[size_t(h)], a);
                keys(got.heads[size_t(h)], c);
                for (int32_t k : a) both += c.count(k);
                either += int64_t(a.size() + c.size()) - 0;
            }
        either -= both;
        const double jac = double(both) / double(std::max<int64_t>(1, either));
        std::printf("estimate n_q=%lld pos0=%lld H=%d/%d D=%d: max|dvertical| %.2e max|dslash| %.2e (sum of vertical "
                    "%.1f = %d heads x %lld rows); GPU vs CPU plan key overlap (Jaccard) %.5f\n",
                    (long long)L.n_q, (long long)L.pos0, L.n_head, L.n_head_kv, L.D, ev, es, sum_v, L.n_head,
                    (long long)std::min<int64_t>(64, L.n_q), jac);
        EXPECT_LT(ev, 1e-4);
        EXPECT_LT(es, 1e-4);
        EXPECT_GT(jac, 0.99);

        // full budget: v = s = N selects every diagonal, so every block sees all its causal keys
        ASSERT_TRUE(
            cuda::vslash_index_gpu(d.q.p, L.n_q, L.pos0, L.n_head, d.kv, L.scale(), N, N, ws, pb, nullptr).is_ok());
        CK(cudaDeviceSynchronize());
        std::vector<float> o, lse, od, lsed;
        run_sparse(L, d, pb.view, o, lse);
        run_dense(L, d, od, lsed);
        const bool same = std::memcmp(o.data(), od.data(), o.size() * 4) == 0;
        std::printf("  full budget GPU index + sparse kernel vs dense: bitwise %s, nmse %.2e\n",
                    same ? "equal" : "different", nmse(o, od));
        EXPECT_LT(nmse(o, od), 1e-12);
    }
}

// Steps of the sparse kernel counted on the GPU against a count over the host plan; vslash_attention_gpu with
// the fallback forced (ratio 0: the dense kernel's output, bitwise), disabled (ratio 1: the sparse kernel over
// vslash_index_gpu's plan, bitwise) and at 0.45 (the choice follows the step count).
TEST(CudaVslashIndex, StepsAndDenseFallback) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    for (const shape & sh : k_shapes) {
        layer                           L(sh.n_q, sh.pos0, sh.n_head, sh.n_head_kv, sh.D, 57);
        dev_layer                       d(L);
        prefill_plan                    plan;
        std::vector<std::vector<float>> vt, sl;
        cpu_vslash(L, 40, 60, plan, vt, sl);
        cuda::prefill_plan_buf pb;
        cuda::prefill_plan_upload(plan, pb);
        const cuda::prefill_plan_steps st = cuda::prefill_plan_steps_gpu(pb, nullptr);
        int64_t                        want_sparse = 0, want_dense = 0;
        for (const prefill_head_plan & hp : plan.heads) {
            for (const key_range & r : hp.ranges) want_sparse += (r.end - r.begin + 63) / 64;
            for (int64_t b = 0; b < plan.n_qblk(); ++b) {
                want_sparse += (hp.col_off[size_t(b) + 1] - hp.col_off[size_t(b)] + 63) / 64;
                want_dense += (L.pos0 + std::min(L.n_q, (b + 1) * 64) + 63) / 64;
            }
        }
        EXPECT_EQ(st.sparse, want_sparse);
        EXPECT_EQ(st.dense, want_dense);

        const size_t           n_o = size_t(L.n_q) * L.n_head * L.D, n_l = size_t(L.n_q) * L.n_head;
        dev_buf<float>         dout(n_o), dlse(n_l);
        cuda::vslash_workspace ws;
        cuda::vslash_attention_args a;
        a.q      = d.q.p;
        a.n_q    = L.n_q;
        a.pos0   = L.pos0;
        a.n_head = L.n_head;
        a.kv     = d.kv;
        a.scale  = L.scale();
        a.v      = 100;
        a.s      = 300;
        a.o      = dout.p;
        a.o_f32  = true;
        a.lse    = dlse.p;
        auto run = [&](float ratio, cuda::vslash_attention_info & info, std::vector<float> & o) {
            CK(cudaMemset(dout.p, 0xff, n_o * 4));
            a.dense_ratio = ratio;
            ASSERT_TRUE(cuda::vslash_attention_gpu(a, ws, pb, nullptr, &info).is_ok());
            CK(cudaDeviceSynchronize());
            o = dout.get();
        };
        cuda::vslash_attention_info info;
        std::vector<float>          o_forced, o_never, o_auto, od, lsed, os, lses;
        run(0.f, info, o_forced);
        EXPECT_TRUE(info.dense);
        run_dense(L, d, od, lsed, cuda::attn_prefill_kernel::AUTO);
        EXPECT_EQ(std::memcmp(o_forced.data(), od.data(), n_o * 4), 0) << "forced dense != attn_prefill AUTO";
        run(1.f, info, o_never);
        EXPECT_FALSE(info.dense);
        run_sparse(L, d, pb.view, os, lses, cuda::attn_sparse_prefill_kernel::AUTO); // vslash_index_gpu's plan
        EXPECT_EQ(std::memcmp(o_never.data(), os.data(), n_o * 4), 0) << "sparse path != attn_sparse_prefill";
        run(0.45f, info, o_auto);
        const bool want = double(info.steps.sparse) > 0.45 * double(info.steps.dense);
        EXPECT_EQ(info.dense, want);
        EXPECT_EQ(std::memcmp(o_auto.data(), (want ? od : os).data(), n_o * 4), 0);
        std::printf("steps n_q=%lld pos0=%lld H=%d/%d D=%d: CPU plan (40,60) %lld sparse steps / %lld dense tiles; "
                    "GPU index (100,300) %lld / %lld -> %s at 0.45; forced dense and never-dense paths bitwise equal "
                    "to their kernels\n",
                    (long long)L.n_q, (long long)L.pos0, L.n_head, L.n_head_kv, L.D, (long long)st.sparse,
                    (long long)st.dense, (long long)info.steps.sparse, (long long)info.steps.dense,
                    info.dense ? "dense" : "sparse");
    }
}

} // namespace
