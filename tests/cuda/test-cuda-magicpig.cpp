// MagicPIG hybrid decode (backend/cuda/magicpig-hybrid.cuh, magicpig-host.h) against the CPU method
// (attn/decode/magicpig.h) on the same keys, queries and hyperplanes: the GPU's query and key codes equal
// simhash_codes() (ties at 0 included), the host walk samples exactly the keys of the CPU plan, and the merged
// output of the GPU dense part and the host sampled part matches the plan run by the scalar reference executor;
// with every key sampled (K = 1, min_hits = 1) it matches dense attention. Skips itself when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "attn/decode/decode-plan.h"
#include "attn/decode/magicpig.h"
#include "attn/decode/simhash.h"
#include "backend/cuda/magicpig-host.h"
#include "backend/cuda/magicpig-hybrid.cuh"
#include "core/fp16.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "cuda/cuda-test-util.h"

namespace {

using namespace lc;
using namespace lc::cuda_test;

// bf16 value of f that fp16 holds exactly (no fp16 subnormals), so the fp16 CPU cache and the bf16 copies agree.
bf16_t exact_bf16(float f) {
    if (std::fabs(f) < 1.0f / 16384) f = 0.f;
    return fp32_to_bf16(f);
}

// One sequence of n_kv tokens (the first n_prompt the prompt the CPU tables are built over, the rest generated),
// H query heads on HKV KV heads, D = 128: bf16 rows and the CPU's fp16 paged cache with the same values.
struct fixture {
    static constexpr int D = 128;
    int                  H, HKV;
    int64_t              n_prompt, n_kv;
    std::vector<bf16_t>  k, v, q;     // k, v [HKV][n_kv][D]; q [H][D]
    std::vector<fp16_t>  k16, v16;    // [pages][HKV][64][D]
    std::vector<int32_t> pages;

    fixture(int H_, int HKV_, int64_t n_prompt_, int64_t n_gen, std::mt19937 & rng)
        : H(H_), HKV(HKV_), n_prompt(n_prompt_), n_kv(n_prompt_ + n_gen) {
        std::normal_distribution<float> nd(0.f, 1.f);
        k.resize(size_t(HKV) * n_kv * D);
        v.resize(k.size());
        for (auto & x : k) x = exact_bf16(nd(rng) + 0.3f); // an offset, so that centring by the mean matters
        for (auto & x : v) x = exact_bf16(nd(rng));
        // Each query near a random middle key of its KV head (so that the tables sample more than a handful).
        q.resize(size_t(H) * D);
        std::uniform_int_distribution<int64_t> pick(4, n_prompt - 65);
        for (int h = 0; h < H; ++h) {
            const int64_t j = pick(rng);
            for (int d = 0; d < D; ++d)
                q[size_t(h) * D + d] =
                    exact_bf16(0.7f * bf16_to_fp32(k[(size_t(h / (H / HKV)) * n_kv + j) * D + d]) + 0.5f * nd(rng));
        }
        const int64_t n_pages = (n_kv + 63) / 64;
        pages.resize(size_t(n_pages));
        std::iota(pages.begin(), pages.end(), 0);
        k16.assign(size_t(n_pages) * HKV * 64 * D, 0);
        v16.assign(k16.size(), 0);
        for (int h = 0; h < HKV; ++h)
            for (int64_t t = 0; t < n_kv; ++t)
                for (int d = 0; d < D; ++d) {
                    const size_t src = (size_t(h) * n_kv + t) * D + d;
                    const size_t dst = ((size_t(t / 64) * HKV + h) * 64 + size_t(t % 64)) * D + d;
                    k16[dst]         = fp32_to_fp16(bf16_to_fp32(k[src]));
                    v16[dst]         = fp32_to_fp16(bf16_to_fp32(v[src]));
                }
    }
    kv_view view(int64_t n) const {
        kv_view kv;
        kv.k_pool     = k16.data();
        kv.v_pool     = v16.data();
        kv.pages      = pages.data();
        kv.n_kv       = n;
        kv.n_head_kv  = HKV;
        kv.head_dim   = D;
        kv.page_elems = size_t(HKV) * 64 * D;
        return kv;
    }
    std::vector<float> qf() const {
        std::vector<float> r(q.size());
        for (size_t i = 0; i < q.size(); ++i) r[i] = bf16_to_fp32(q[i]);
        return r;
    }
};

struct hybrid_out {
    std::vector<uint16_t>             q_codes;
    std::vector<std::vector<int32_t>> sampled; // [H]
    std::vector<float>                o, lse;
};

// The hybrid step for the fixture with the CPU method's tables (their range and centre; the codes and norms of the
// keys computed on the GPU). Checks the GPU key codes and norms against the CPU on the way.
void run_hybrid(const fixture & fx, const magicpig_decode & md, int il, float scale, hybrid_out & out) {
    const int                D = fixture::D, H = fx.H, HKV = fx.HKV, G = H / HKV;
    const magicpig_params &  p = md.params();
    const simhash_matrix &   W = md.matrix();
    const int                n_col = p.K * p.L;
    std::vector<float>       w(size_t(D) * n_col);
    for (int d = 0; d < D; ++d)
        for (int c = 0; c < n_col; ++c) w[size_t(d) * n_col + c] = W.at(d, c);
    dev_buf<float>  dw(w);
    dev_buf<bf16_t> dq(fx.q);

    // Query codes on the GPU.
    dev_buf<uint16_t>    dqc(size_t(H) * p.L);
    cuda::mpig_hash_args ha;
    ha.x = dq.p, ha.n = H, ha.x_stride = D, ha.w = dw.p, ha.D = D, ha.K = p.K, ha.L = p.L, ha.codes = dqc.p;
    ASSERT_TRUE(cuda::mpig_hash(ha, nullptr).is_ok());
    out.q_codes = dqc.get();

    // Host layer: the middle keys' rows, codes and norms from the GPU, tables in chunks of 1024 keys.
    const lsh_tables * t0 = md.tables(il, 0);
    ASSERT_NE(t0, nullptr);
    const int64_t         begin = t0->begin, n = t0->n, end = begin + n;
    cuda::mpig_host_layer ly;
    ly.alloc(HKV, D, begin, n);
    for (int h = 0; h < HKV; ++h) {
        const lsh_tables & tb = *md.tables(il, h);
        std::copy_n(fx.k.data() + (size_t(h) * fx.n_kv + begin) * D, size_t(n) * D, ly.k.get() + size_t(h) * n * D);
        std::copy_n(fx.v.data() + (size_t(h) * fx.n_kv + begin) * D, size_t(n) * D, ly.v.get() + size_t(h) * n * D);
        dev_buf<bf16_t>   dk(std::vector<bf16_t>(ly.k.get() + size_t(h) * n * D, ly.k.get() + size_t(h + 1) * n * D));
        dev_buf<float>    dmu(tb.mu), dnorm(static_cast<size_t>(n)), dmean(static_cast<size_t>(D));
        dev_buf<uint16_t> dkc(size_t(p.L) * n);
        cuda::mpig_hash_args ka = ha;
        ka.x = dk.p, ka.n = n, ka.mu = dmu.p, ka.codes = dkc.p, ka.code_t = true, ka.norm = dnorm.p;
        ASSERT_TRUE(cuda::mpig_hash(ka, nullptr).is_ok());
        ASSERT_TRUE(cuda::mpig_mean(dk.p, n, D, D, dmean.p, nullptr).is_ok());
        const std::vector<uint16_t> kc = dkc.get();
        const std::vector<float>    norm = dnorm.get(), mean = dmean.get();
        // Against the CPU: codes of the centred rows (simhash_codes), norms and mean of the tables.
        std::vector<float> xc(size_t(n) * D);
        for (int64_t i = 0; i < n; ++i)
            for (int d = 0; d < D; ++d)
                xc[size_t(i) * D + d] = bf16_to_fp32(ly.k_row(h, i)[d]) - tb.mu[size_t(d)];
        std::vector<uint16_t> ref(size_t(n) * p.L);
        simhash_codes(xc.data(), n, W, ref.data());
        int64_t code_diff = 0;
        for (int64_t i = 0; i < n; ++i)
            for (int t = 0; t < p.L; ++t) code_diff += kc[size_t(t) * n + i] != ref[size_t(i) * p.L + t];
        EXPECT_EQ(code_diff, 0) << "key codes of KV head " << h;
        float norm_err = 0, mean_err = 0;
        for (int64_t i = 0; i < n; ++i)
            norm_err = std::max(norm_err, std::fabs(norm[size_t(i)] - tb.norm[size_t(i)]) / tb.norm[size_t(i)]);
        for (int d = 0; d < D; ++d) mean_err = std::max(mean_err, std::fabs(mean[size_t(d)] - tb.mu[size_t(d)]));
        EXPECT_LT(norm_err, 1e-5f);
        EXPECT_LT(mean_err, 1e-5f);
        cuda::mpig_host_tables & ht = ly.heads[size_t(h)];
        cuda::mpig_host_tables_build(kc.data(), n, p.K, p.L, 10, ht, pool());
        ht.mu   = tb.mu;
        ht.norm = norm;
    }

    // Host sampled part, head by head (with the sampled sets) and as a batch.
    const lsh_log_weight                 lw(p.K, p.L, p.min_hits);
    std::vector<cuda::mpig_host_scratch> sc(size_t(pool().n_threads()));
    std::vector<float>                   o_s(size_t(H) * D), lse_s(static_cast<size_t>(H)), o_1(size_t(H) * D), lse_1(static_cast<size_t>(H));
    out.sampled.assign(size_t(H), {});
    for (int h = 0; h < H; ++h)
        cuda::mpig_host_attend(ly, h / G, fx.q.data() + size_t(h) * D, out.q_codes.data() + size_t(h) * p.L, scale,
                               p.min_hits, lw, sc[0], o_1.data() + size_t(h) * D, &lse_1[size_t(h)],
                               &out.sampled[size_t(h)]);
    const cuda::mpig_host_layer * lys[1] = {&ly};
    cuda::mpig_host_attend_batch(lys, 1, H, fx.q.data(), out.q_codes.data(), scale, p.min_hits, lw, sc, o_s.data(),
                                 lse_s.data(), pool());
    EXPECT_EQ(o_s, o_1);
    EXPECT_EQ(lse_s, lse_1);

    // Dense part on the GPU: sinks [0, begin) then [end, n_kv).
    const int64_t       n_dense = begin + (fx.n_kv - end);
    std::vector<bf16_t> kd(size_t(HKV) * n_dense * D), vd(kd.size());
    for (int h = 0; h < HKV; ++h) {
        int64_t r = 0;
        for (int64_t t = 0; t < fx.n_kv; ++t) {
            if (t >= begin && t < end) continue;
            std::copy_n(fx.k.data() + (size_t(h) * fx.n_kv + t) * D, D, kd.data() + (size_t(h) * n_dense + r) * D);
            std::copy_n(fx.v.data() + (size_t(h) * fx.n_kv + t) * D, D, vd.data() + (size_t(h) * n_dense + r) * D);
            ++r;
        }
    }
    dev_buf<bf16_t>       dkd(kd), dvd(vd);
    dev_buf<int32_t>      dnd(std::vector<int32_t>{int32_t(n_dense)});
    dev_buf<float>        o_d(size_t(H) * D), lse_d(static_cast<size_t>(H)), dos(o_s), dls(lse_s), dout(size_t(H) * D),
        dlse(static_cast<size_t>(H));
    cuda::mpig_dense_args da;
    da.q = dq.p, da.n_seq = 1, da.n_head = H, da.n_head_kv = HKV, da.D = D, da.k = dkd.p, da.v = dvd.p;
    da.cap = n_dense, da.n_dense = dnd.p, da.scale = scale, da.o = o_d.p, da.lse = lse_d.p;
    ASSERT_TRUE(cuda::mpig_dense(da, nullptr).is_ok());
    ASSERT_TRUE(cuda::mpig_merge(o_d.p, lse_d.p, dos.p, dls.p, H, D, dout.p, dlse.p, nullptr).is_ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    out.o   = dout.get();
    out.lse = dlse.get();
}

// K = 10, L = 150, sink 4, local 64; min_hits 2 (the default: the walk's bitmaps) or more (its counters).
void check_against_cpu(int min_hits) {
    std::mt19937    rng(11);
    fixture         fx(8, 2, 5000, 7, rng);
    std::fill_n(fx.q.begin(), fixture::D, bf16_t(0)); // head 0: every dot product with W a tie at 0 (bit 0)
    magicpig_params p;
    p.min_hits = min_hits;
    magicpig_decode md(2, fx.HKV, fixture::D, p);
    const int       il    = 1; // sparse
    const float     scale = 1.f / std::sqrt(float(fixture::D));
    md.prepare(il, fx.view(fx.n_prompt), pool());
    const std::vector<float> qf = fx.qf();
    decode_plan              plan;
    md.plan(il, qf.data(), fx.H, fx.view(fx.n_kv), scale, plan, pool(), nullptr);
    std::vector<float> o_ref(qf.size()), lse_ref(static_cast<size_t>(fx.H));
    attn_decode_plan_ref(plan, qf.data(), fx.view(fx.n_kv), scale, o_ref.data(), lse_ref.data());

    hybrid_out hy;
    run_hybrid(fx, md, il, scale, hy);
    if (::testing::Test::HasFatalFailure()) return;

    std::vector<uint16_t> qc(size_t(fx.H) * p.L);
    simhash_codes(qf.data(), fx.H, md.matrix(), qc.data());
    EXPECT_EQ(hy.q_codes, qc) << "query codes";
    int64_t n_sampled = 0;
    for (int h = 0; h < fx.H; ++h) {
        std::vector<int32_t> ref = plan.heads[size_t(h)].idx;
        std::sort(ref.begin(), ref.end());
        EXPECT_EQ(hy.sampled[size_t(h)], ref) << "sampled set of head " << h;
        n_sampled += int64_t(ref.size());
    }
    const double e = nmse(hy.o, o_ref);
    float        lse_err = 0;
    for (int h = 0; h < fx.H; ++h) lse_err = std::max(lse_err, std::fabs(hy.lse[size_t(h)] - lse_ref[size_t(h)]));
    std::printf("hybrid vs cpu magicpig, min_hits %d: %lld keys sampled over %d heads (of %lld middle keys each), nmse %.3g, "
                "max |lse diff| %.3g\n",
                min_hits, (long long)n_sampled, fx.H, (long long)md.tables(il, 0)->n, e, lse_err);
    EXPECT_GT(n_sampled, fx.H * 5);
    EXPECT_LT(e, 1e-8);
    EXPECT_LT(lse_err, 1e-4f);
}

TEST(CudaMagicpig, HybridMatchesCpuMethod) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    check_against_cpu(2);
}

TEST(CudaMagicpig, HybridMatchesCpuMethodMinHits3) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    check_against_cpu(3);
}

TEST(CudaMagicpig, SampleEverythingIsDense) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    std::mt19937    rng(12);
    const fixture   fx(8, 2, 3000, 3, rng);
    magicpig_params p;
    p.K        = 1; // two buckets per table, 150 tables, one collision: every key (but ~2^-150 of them)
    p.min_hits = 1;
    magicpig_decode md(2, fx.HKV, fixture::D, p);
    const float     scale = 1.f / std::sqrt(float(fixture::D));
    md.prepare(1, fx.view(fx.n_prompt), pool());
    hybrid_out hy;
    run_hybrid(fx, md, 1, scale, hy);
    if (HasFatalFailure()) return;
    for (int h = 0; h < fx.H; ++h) EXPECT_EQ(int64_t(hy.sampled[size_t(h)].size()), md.tables(1, 0)->n);
    decode_plan full;
    decode_plan_full(full, fx.H, fx.n_kv);
    const std::vector<float> qf = fx.qf();
    std::vector<float>       o_ref(qf.size()), lse_ref(static_cast<size_t>(fx.H));
    attn_decode_plan_ref(full, qf.data(), fx.view(fx.n_kv), scale, o_ref.data(), lse_ref.data());
    const double e = nmse(hy.o, o_ref);
    std::printf("sample everything vs dense: nmse %.3g\n", e);
    // The sampled keys carry -ln(u + 1e-4) ~ -1e-4 (u ~ 1), the dense ones 0: weights off by ~1e-4 at most.
    EXPECT_LT(e, 1e-7);
}

TEST(CudaMagicpig, MergeOfEmptyStates) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU";
    // Row 0: both empty; row 1: only the second; row 2: both, equal lse (the mean of the two).
    const int          D = 4;
    std::vector<float> o1 = {9, 9, 9, 9, 9, 9, 9, 9, 1, 2, 3, 4}, o2 = {7, 7, 7, 7, 5, 6, 7, 8, 3, 4, 5, 6};
    std::vector<float> l1 = {-INFINITY, -INFINITY, 0.5f}, l2 = {-INFINITY, 1.f, 0.5f};
    dev_buf<float>     d1(o1), d2(o2), e1(l1), e2(l2), o(12), l(3);
    ASSERT_TRUE(cuda::mpig_merge(d1.p, e1.p, d2.p, e2.p, 3, D, o.p, l.p, nullptr).is_ok());
    const std::vector<float> r = o.get(), lr = l.get();
    const std::vector<float> want = {0, 0, 0, 0, 5, 6, 7, 8, 2, 3, 4, 5};
    for (int i = 0; i < 12; ++i) EXPECT_NEAR(r[size_t(i)], want[size_t(i)], 1e-6f) << i;
    EXPECT_EQ(lr[0], -INFINITY);
    EXPECT_NEAR(lr[1], 1.f, 1e-6f);
    EXPECT_NEAR(lr[2], 0.5f + std::log(2.f), 1e-6f);
}

} // namespace
