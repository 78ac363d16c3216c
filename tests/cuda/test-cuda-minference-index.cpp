// MInference's mixed per-head index on the GPU (minference_index_gpu, vslash-index.cuh) against the CPU builders of
// attn/minference/index.h on the same bf16 inputs: A-shape and dense heads give exactly the CPU's items,
// block-sparse heads the CPU's key blocks (up to near-tied block scores, which are summed in another order), and
// vertical-slash heads nearly the CPU's key set (their estimate is the GPU's own, checked in
// test-cuda-sparse-prefill). At full budgets a mixed plan holds every causal pair. Skips itself without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "attn/minference/index.h"
#include "attn/prefill-plan.h"
#include "backend/cuda/vslash-index.cuh"
#include "core/fp16.h"
#include "kv/kv-cache.h"
#include "cuda/cuda-test-util.h"

namespace {

using namespace lc;
using namespace lc::cuda_test;

template <typename T> T * upload(const std::vector<T> & h) {
    T * p = nullptr;
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&p), std::max<size_t>(1, h.size()) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return p;
}

// One layer of random inputs: bf16 on the device, the same values in fp16 / f32 for the CPU (bf16 values of this
// range are exact in fp16), paged K with a shuffled page table.
struct layer {
    int64_t              n_q, pos0, N;
    int                  n_head, n_head_kv, D;
    std::vector<bf16_t>  k, q;
    std::vector<fp16_t>  k16;
    std::vector<float>   qf;
    std::vector<int32_t> pages;
    int64_t              n_pages;
    bf16_t *             dq = nullptr, *dk = nullptr;
    int32_t *            dpages = nullptr;
    layer(int64_t n_q_, int64_t pos0_, int n_head_, int n_head_kv_, int D_, uint32_t seed)
        : n_q(n_q_), pos0(pos0_), N(pos0_ + n_q_), n_head(n_head_), n_head_kv(n_head_kv_), D(D_) {
        std::mt19937                    rng(seed);
        std::normal_distribution<float> dist(0.f, 1.f);
        auto                            draw = [&](float sigma) {
            float f = dist(rng) * sigma;
            return fp32_to_bf16(std::fabs(f) < 1.0f / 16384 ? 0.f : f);
        };
        const int64_t np = (N + 63) / 64;
        n_pages          = np + 2;
        k.resize(size_t(n_pages) * n_head_kv * 64 * D);
        for (auto & x : k) x = draw(1.f);
        k16.resize(k.size());
        for (size_t i = 0; i < k.size(); ++i) k16[i] = fp32_to_fp16(bf16_to_fp32(k[i]));
        pages.resize(size_t(n_pages));
        std::iota(pages.begin(), pages.end(), 0);
        std::shuffle(pages.begin(), pages.end(), rng);
        pages.resize(size_t(np));
        q.resize(size_t(n_q) * n_head * D);
        for (auto & x : q) x = draw(0.5f);
        qf.resize(q.size());
        for (size_t i = 0; i < q.size(); ++i) qf[i] = bf16_to_fp32(q[i]);
        dq     = upload(q);
        dk     = upload(k);
        dpages = upload(pages);
    }
    ~layer() {
        cudaFree(dq);
        cudaFree(dk);
        cudaFree(dpages);
    }
    kv_view view() const {
        kv_view kv;
        kv.k_pool     = k16.data();
        kv.v_pool     = k16.data();
        kv.pages      = pages.data();
        kv.n_kv       = N;
        kv.n_head_kv  = n_head_kv;
        kv.head_dim   = D;
        kv.page_elems = size_t(n_head_kv) * 64 * D;
        return kv;
    }
    cuda::attn_kv_paged dev_kv() const {
        return cuda::attn_kv_paged{dk, dk, dpages, n_pages, N, n_head_kv, D};
    }
    float scale() const { return 1.f / std::sqrt(float(D)); }
};

// The keys of item (h, b) of a plan.
std::set<int32_t> item_keys(const prefill_plan & p, int h, int64_t b) {
    const prefill_head_plan & hp = p.heads[size_t(h)];
    std::set<int32_t>         out;
    for (int64_t i = hp.range_off[size_t(b)]; i < hp.range_off[size_t(b) + 1]; ++i)
        for (int32_t k = hp.ranges[size_t(i)].begin; k < hp.ranges[size_t(i)].end; ++k) out.insert(k);
    for (int64_t i = hp.col_off[size_t(b)]; i < hp.col_off[size_t(b) + 1]; ++i) out.insert(hp.cols[size_t(i)]);
    return out;
}

// Items of head h equal in both plans, ranges and columns alike.
bool head_items_equal(const prefill_plan & a, const prefill_plan & b, int h) {
    const prefill_head_plan & x = a.heads[size_t(h)];
    const prefill_head_plan & y = b.heads[size_t(h)];
    if (x.range_off != y.range_off || x.col_off != y.col_off || x.cols != y.cols) return false;
    for (size_t i = 0; i < x.ranges.size(); ++i)
        if (x.ranges[i].begin != y.ranges[i].begin || x.ranges[i].end != y.ranges[i].end) return false;
    return true;
}

// minference_index_gpu's plan for the layer, downloaded (false when the call fails); block_smem_max as
// vslash_workspace's (0: block-sparse scores through global memory, as past 786k keys).
bool gpu_plan(const layer & L, const std::vector<cuda::head_spec_dev> & spec, prefill_plan & out,
              int64_t * n_ranges = nullptr, int64_t * n_cols = nullptr, size_t block_smem_max = 48 * 1024) {
    cuda::vslash_workspace ws;
    ws.block_smem_max = block_smem_max;
    cuda::prefill_plan_buf pb;
    const status st = cuda::minference_index_gpu(L.dq, L.n_q, L.pos0, L.n_head, L.dev_kv(), L.scale(), spec.data(), ws,
                                                 pb, nullptr);
    EXPECT_TRUE(st.is_ok()) << st.message();
    if (!st.is_ok() || cudaDeviceSynchronize() != cudaSuccess) return false;
    cuda::prefill_plan_download(pb, out);
    if (n_ranges) *n_ranges = pb.n_ranges;
    if (n_cols) *n_cols = pb.n_cols;
    return true;
}

struct shape {
    int64_t n_q, pos0;
    int     n_head, n_head_kv, D;
};
const shape k_shapes[] = {{700, 0, 8, 2, 128}, {300, 2100, 8, 4, 64}, {1024, 5000, 16, 4, 128}, {64, 130, 4, 4, 128}};

TEST(CudaMinferenceIndex, MixedHeadsMatchCpuBuilders) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    for (const shape & sh : k_shapes) {
        layer L(sh.n_q, sh.pos0, sh.n_head, sh.n_head_kv, sh.D, 71);
        // head h: pattern h % 4 (dense, A-shape, vslash, block) with budgets that keep each one sparse here
        std::vector<cuda::head_spec_dev> spec(size_t(L.n_head));
        for (int h = 0; h < L.n_head; ++h) {
            const int64_t a[] = {0, 16 + 8 * h, 60 + 10 * h, 3 + h};
            const int64_t b[] = {0, 200 + 30 * h, 150 + 20 * h, 0};
            spec[size_t(h)]   = cuda::head_spec_effective(h % 4, a[h % 4], b[h % 4], L.N);
        }
        prefill_plan got;
        int64_t      n_ranges = 0, n_cols = 0;
        ASSERT_TRUE(gpu_plan(L, spec, got, &n_ranges, &n_cols));
        EXPECT_TRUE(prefill_plan_valid(got));

        prefill_plan ref;
        ref.reset(L.n_q, L.pos0, L.n_head);
        const kv_view                     kv = L.view();
        std::vector<float>                vert, slash, scratch;
        std::vector<int32_t>              cols, offs;
        std::vector<std::vector<int32_t>> blocks;
        int                               exact_ok = 0, exact_n = 0, near_ties = 0;
        double                            jac_min = 1.0;
        for (int h = 0; h < L.n_head; ++h) {
            const cuda::head_spec_dev & hs = spec[size_t(h)];
            switch (h % 4) {
            case 0: prefill_plan_full_head(ref, h); break;
            case 1: a_shape_plan_head(hs.a, hs.b, ref, h); break;
            case 2:
                vslash_estimate(L.qf.data(), L.n_q, L.pos0, L.n_head, h, kv, L.scale(), vert, slash, scratch);
                vslash_select(vert, slash, L.N, hs.a, hs.b, cols, offs);
                vslash_plan_head(cols, offs, ref, h);
                break;
            case 3:
                block_estimate(L.qf.data(), L.n_q, L.pos0, L.n_head, h, kv, hs.a, blocks, scratch);
                block_plan_head(blocks, ref, h);
                break;
            }
        }
        for (int h = 0; h < L.n_head; ++h) {
            if (h % 4 == 2) { // vertical-slash: the estimates differ by rounding; compare key sets
                int64_t both = 0, either = 0;
                for (int64_t b = 0; b < ref.n_qblk(); ++b) {
                    const std::set<int32_t> x = item_keys(ref, h, b), y = item_keys(got, h, b);
                    for (int32_t k : x) both += int64_t(y.count(k));
                    either += int64_t(x.size() + y.size());
                }
                jac_min = std::min(jac_min, double(both) / double(std::max<int64_t>(1, either - both)));
                continue;
            }
            ++exact_n;
            if (head_items_equal(ref, got, h)) {
                ++exact_ok;
                continue;
            }
            if (h % 4 != 3) {
                ADD_FAILURE() << "head " << h << " (pattern " << h % 4 << ") differs from the CPU builder";
                continue;
            }
            // block-sparse: every differing block must be a near tie of the CPU's scores
            for (int64_t b = 0; b < ref.n_qblk(); ++b) {
                const std::set<int32_t> x = item_keys(ref, h, b), y = item_keys(got, h, b);
                if (x == y) continue;
                ++near_ties;
                EXPECT_EQ(x.size(), y.size()) << "head " << h << " block " << b;
            }
        }
        std::printf("mixed n_q=%lld pos0=%lld H=%d/%d D=%d: %d of %d dense/A-shape/block heads equal the CPU "
                    "(%d block items differ by near ties), vslash key overlap (Jaccard) min %.4f; %lld ranges, %lld "
                    "cols\n",
                    (long long)L.n_q, (long long)L.pos0, L.n_head, L.n_head_kv, L.D, exact_ok, exact_n, near_ties,
                    jac_min, (long long)n_ranges, (long long)n_cols);
        EXPECT_LE(near_ties, 2);
        EXPECT_GT(jac_min, 0.98);
    }
}

// Block-sparse selection alone against the CPU's top-k on the CPU's own pooled scores (brute force): per query
// block the chosen key blocks have the k largest scores, and at k_b past the causal blocks every causal block.
TEST(CudaMinferenceIndex, BlockSelectionIsTopK) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    layer L(1000, 3000, 4, 2, 128, 5);
    const int64_t n_kb = (L.N + 63) / 64, n_qb = (L.n_q + 63) / 64;
    for (int64_t kb_budget : {1, 7, 40, 1000, -40}) { // -40: 40 with the scores in global memory
        const int64_t                    kbb = std::abs(kb_budget);
        std::vector<cuda::head_spec_dev> spec(size_t(L.n_head), cuda::head_spec_effective(3, kbb, 0, L.N));
        prefill_plan got;
        ASSERT_TRUE(gpu_plan(L, spec, got, nullptr, nullptr, kb_budget < 0 ? 0 : 48 * 1024));
        int64_t bad = 0;
        for (int h = 0; h < L.n_head; ++h) {
            const int hk = h / (L.n_head / L.n_head_kv);
            // pooled means as the definition says (double, so the reference has no rounding of its own)
            std::vector<double> kp(size_t(n_kb) * L.D, 0.0), qp(size_t(n_qb) * L.D, 0.0);
            for (int64_t t = 0; t < L.N; ++t)
                for (int d = 0; d < L.D; ++d)
                    kp[size_t(t / 64) * L.D + d] += bf16_to_fp32(
                        L.k[size_t(L.pages[size_t(t / 64)]) * L.n_head_kv * 64 * L.D + size_t(hk) * 64 * L.D +
                            size_t(t % 64) * L.D + d]);
            for (int64_t kb = 0; kb < n_kb; ++kb)
                for (int d = 0; d < L.D; ++d) kp[size_t(kb) * L.D + d] /= double(std::min<int64_t>(64, L.N - 64 * kb));
            for (int64_t i = 0; i < L.n_q; ++i)
                for (int d = 0; d < L.D; ++d) qp[size_t(i / 64) * L.D + d] += L.qf[(size_t(i) * L.n_head + h) * L.D + d];
            for (int64_t b = 0; b < n_qb; ++b) {
                for (int d = 0; d < L.D; ++d)
                    qp[size_t(b) * L.D + d] /= double(std::min<int64_t>(64, L.n_q - 64 * b));
                const int64_t       last = L.pos0 + std::min<int64_t>(L.n_q, 64 * (b + 1)) - 1;
                const int64_t       nc   = last / 64 + 1;
                std::vector<double> sc(static_cast<size_t>(nc));
                for (int64_t kb = 0; kb < nc; ++kb) {
                    double acc = 0;
                    for (int d = 0; d < L.D; ++d) acc += qp[size_t(b) * L.D + d] * kp[size_t(kb) * L.D + d];
                    sc[size_t(kb)] = acc;
                }
                std::vector<double> sorted = sc;
                std::sort(sorted.begin(), sorted.end(), std::greater<double>());
                const int64_t     k   = std::min(nc, kbb);
                const double      thr = sorted[size_t(k - 1)];
                std::set<int32_t> keys = item_keys(got, h, b);
                std::set<int64_t> chosen;
                for (int32_t key : keys) chosen.insert(key / 64);
                if (int64_t(chosen.size()) != k) ++bad;
                for (int64_t kb : chosen) // chosen blocks score at least the k-th largest, up to rounding
                    if (sc[size_t(kb)] < thr - 1e-4 * std::fabs(thr) - 1e-6) ++bad;
                if (k == nc && int64_t(keys.size()) != last + 1) ++bad; // every causal key
            }
        }
        std::printf("block selection k_b=%lld (scores in %s memory) over %lld query blocks x %d heads: %lld wrong\n",
                    (long long)kbb, kb_budget < 0 ? "global" : "shared", (long long)n_qb, L.n_head, (long long)bad);
        EXPECT_EQ(bad, 0);
    }
}

} // namespace
