// CUDA dense attention kernels (prefill: mma.sync and wgmma variants; split-K paged decode) against the scalar
// CPU reference attn_dense_ref() on random inputs from fixed seeds, compared by normalised mean squared error.
// Skips itself when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cpu/ref/attn-ref.h"
#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/attn-prefill.cuh"
#include "core/fp16.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "cuda/cuda-test-util.h"

namespace {

using namespace lc;
using namespace lc::cuda_test;

// A paged pool with a shuffled page table per sequence; every row (also past n_kv) holds finite random data.
struct paged_pool {
    int                 n_head_kv = 0, head_dim = 128;
    int64_t             n_pages = 0;
    std::vector<bf16_t> k, v;     // [n_pages][n_head_kv][64][head_dim]
    std::vector<fp16_t> k16, v16; // the same values in fp16, for the CPU reference
    paged_pool(int n_head_kv_, int head_dim_, int64_t n_pages_, std::mt19937 & rng)
        : n_head_kv(n_head_kv_), head_dim(head_dim_), n_pages(n_pages_) {
        const size_t n = size_t(n_pages) * n_head_kv * 64 * head_dim;
        k              = random_bf16(n, rng);
        v              = random_bf16(n, rng);
        k16.resize(n);
        v16.resize(n);
        for (size_t i = 0; i < n; ++i) {
            k16[i] = fp32_to_fp16(bf16_to_fp32(k[i]));
            v16[i] = fp32_to_fp16(bf16_to_fp32(v[i]));
        }
    }
    kv_view view(const int32_t * pages, int64_t n_kv) const {
        kv_view kv;
        kv.k_pool     = k16.data();
        kv.v_pool     = v16.data();
        kv.pages      = pages;
        kv.n_kv       = n_kv;
        kv.n_head_kv  = n_head_kv;
        kv.head_dim   = head_dim;
        kv.page_elems = size_t(n_head_kv) * 64 * head_dim;
        return kv;
    }
};

// bf16 operands and P rounded to bf16 before P V: a relative error of a few 1e-3 per element, nmse ~1e-6..1e-5
// against the fp64 reference; 5e-5 leaves room without hiding a wrong row (one wrong row of 1000 is ~1e-3).
constexpr double k_nmse_max    = 5e-5;
constexpr double k_lse_abs_max = 2e-3; // scores are exact products of bf16 summed in f32

struct prefill_case {
    int64_t n_q, pos0;
    int     n_head, n_head_kv;
    bool    o_f32;
    int     head_dim = 128;
    int64_t window   = 0;
};

void run_prefill(const prefill_case & pc, cuda::attn_prefill_kernel kernel, uint32_t seed) {
    std::mt19937         rng(seed);
    const int            D       = pc.head_dim;
    const int64_t        n_kv    = pc.pos0 + pc.n_q;
    const int64_t        n_pages = (n_kv + 63) / 64;
    paged_pool           pp(pc.n_head_kv, D, n_pages + 3, rng);
    std::vector<int32_t> pages(size_t(pp.n_pages));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    pages.resize(size_t(n_pages));
    const std::vector<bf16_t> q = random_bf16(size_t(pc.n_q) * pc.n_head * D, rng);
    std::vector<float>        qf(q.size());
    for (size_t i = 0; i < q.size(); ++i) qf[i] = bf16_to_fp32(q[i]);
    const float scale = 1.f / std::sqrt(float(D));

    std::vector<float> o_ref(qf.size()), lse_ref(size_t(pc.n_q) * pc.n_head);
    attn_dense_ref(qf.data(), pc.n_q, pc.pos0, pc.n_head, pp.view(pages.data(), n_kv), scale, o_ref.data(),
                   lse_ref.data(), pool(), pc.window);

    dev_buf<bf16_t>  dq(q), dk(pp.k), dv(pp.v);
    dev_buf<int32_t> dpages(pages);
    dev_buf<float>   dlse(lse_ref.size());
    const size_t     o_bytes = qf.size() * (pc.o_f32 ? 4 : 2);
    dev_buf<uint8_t> dout(o_bytes);
    CK(cudaMemset(dout.p, 0xff, o_bytes)); // NaN poison: every element must be written
    CK(cudaMemset(dlse.p, 0xff, lse_ref.size() * 4));

    cuda::attn_prefill_args a;
    a.q                = dq.p;
    a.n_q              = pc.n_q;
    a.pos0             = pc.pos0;
    a.n_head           = pc.n_head;
    a.kv.k_pool        = dk.p;
    a.kv.v_pool        = dv.p;
    a.kv.pages         = dpages.p;
    a.kv.n_pages_total = pp.n_pages;
    a.kv.n_kv          = n_kv;
    a.kv.n_head_kv     = pc.n_head_kv;
    a.kv.head_dim      = D;
    a.scale            = scale;
    a.window           = pc.window;
    a.o                = dout.p;
    a.o_f32            = pc.o_f32;
    a.lse              = dlse.p;
    ASSERT_TRUE(cuda::attn_prefill(a, kernel, nullptr).is_ok());
    CK(cudaDeviceSynchronize());

    const std::vector<uint8_t> ob = dout.get();
    std::vector<float>         o(qf.size());
    if (pc.o_f32) {
        std::memcpy(o.data(), ob.data(), o_bytes);
    } else {
        for (size_t i = 0; i < o.size(); ++i) {
            bf16_t b;
            std::memcpy(&b, ob.data() + 2 * i, 2);
            o[i] = bf16_to_fp32(b);
        }
    }
    const double e = nmse(o, o_ref);
    // bf16 output adds its own rounding (2^-9 relative): allow it on top
    EXPECT_LT(e, pc.o_f32 ? k_nmse_max : 2 * k_nmse_max) << "n_q " << pc.n_q << " pos0 " << pc.pos0;
    const std::vector<float> lse     = dlse.get();
    double                   max_lse = 0;
    for (size_t i = 0; i < lse.size(); ++i) max_lse = std::max(max_lse, std::fabs(double(lse[i]) - lse_ref[i]));
    EXPECT_LT(max_lse, k_lse_abs_max) << "lse, n_q " << pc.n_q << " pos0 " << pc.pos0;
    std::printf("prefill %s D=%d n_q=%lld pos0=%lld n_head=%d n_head_kv=%d o_%s: nmse=%.2e max|dlse|=%.2e\n",
                kernel == cuda::attn_prefill_kernel::WGMMA           ? "wgmma"
                : kernel == cuda::attn_prefill_kernel::WGMMA_OVERLAP ? "wgmma_overlap"
                : kernel == cuda::attn_prefill_kernel::WGMMA_BASIC   ? "wgmma_basic"
                : kernel == cuda::attn_prefill_kernel::AUTO          ? "auto"
                                                                     : "mma_sync",
                D, (long long)pc.n_q, (long long)pc.pos0, pc.n_head, pc.n_head_kv, pc.o_f32 ? "f32" : "bf16", e,
                max_lse);
}

const prefill_case k_prefill_cases[] = {
    {1000, 0, 32, 8, true},  // GQA 4, ragged last block
    {300, 777, 16, 4, true}, // chunked prefill: queries start mid-page, mid-block
    {256, 0, 8, 8, false},   // MHA, whole blocks, bf16 output
    {129, 1, 16, 2, true},   // GQA 8, one row past a block
    {1, 200, 4, 1, true},    // a single query row
    // sliding windows (Gemma 3's local layers): narrower than a step, across steps, chunked, one key
    {700, 0, 8, 2, true, 128, 100},
    {400, 333, 8, 4, false, 128, 300},
    {260, 5, 4, 1, true, 128, 1},
    {300, 0, 4, 1, true, 128, 5000}, // wider than the sequence: plain causal
};

// Other head sizes (mma.sync only): SmolLM2-135M (9 heads, 3 KV heads, 64) and Gemma 3 270M (4, 1, 256).
const prefill_case k_prefill_cases_other_d[] = {
    {500, 100, 9, 3, true, 64}, {70, 0, 6, 2, false, 64},      {300, 40, 4, 1, true, 256},
    {65, 0, 2, 2, false, 256},  {300, 50, 9, 3, true, 64, 77}, {200, 0, 4, 1, true, 256, 128},
};

TEST(cuda_attn, prefill_mma_sync_matches_reference) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    uint32_t seed = 1;
    for (const auto & pc : k_prefill_cases) run_prefill(pc, cuda::attn_prefill_kernel::MMA_SYNC, seed++);
    for (const auto & pc : k_prefill_cases_other_d) run_prefill(pc, cuda::attn_prefill_kernel::MMA_SYNC, seed++);
    for (const auto & pc : k_prefill_cases_other_d) run_prefill(pc, cuda::attn_prefill_kernel::AUTO, seed++);
}

TEST(cuda_attn, prefill_wgmma_matches_reference) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    int dev = 0, major = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (major != 9) GTEST_SKIP() << "wgmma needs an sm_90 device";
    uint32_t seed = 1;
    for (const auto & pc : k_prefill_cases) run_prefill(pc, cuda::attn_prefill_kernel::WGMMA, seed++);
    for (const auto & pc : k_prefill_cases) run_prefill(pc, cuda::attn_prefill_kernel::WGMMA_OVERLAP, seed++);
    for (const auto & pc : k_prefill_cases) run_prefill(pc, cuda::attn_prefill_kernel::WGMMA_BASIC, seed++);
}

TEST(cuda_attn, prefill_rejects_bad_shapes) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    cuda::attn_prefill_args a;
    a.n_q          = 4;
    a.n_head       = 8;
    a.kv.n_head_kv = 8;
    a.kv.head_dim  = 96;
    a.kv.n_kv      = 4;
    EXPECT_EQ(cuda::attn_prefill(a, cuda::attn_prefill_kernel::AUTO, nullptr).code(), status_code::UNSUPPORTED);
    a.kv.head_dim = 64;
    EXPECT_EQ(cuda::attn_prefill(a, cuda::attn_prefill_kernel::WGMMA, nullptr).code(), status_code::UNSUPPORTED);
    a.kv.head_dim = 128;
    a.kv.n_kv     = 3;
    EXPECT_EQ(cuda::attn_prefill(a, cuda::attn_prefill_kernel::AUTO, nullptr).code(), status_code::INVALID_ARGUMENT);
}

void run_decode(const std::vector<int32_t> & lens, int n_head, int n_head_kv, int n_split, bool o_f32, uint32_t seed,
                int D = 128, int64_t window = 0) {
    std::mt19937 rng(seed);
    const int    n_seq    = int(lens.size());
    int64_t      n_kv_max = 1, stride = 1;
    for (int32_t l : lens) n_kv_max = std::max<int64_t>(n_kv_max, l);
    stride              = (n_kv_max + 63) / 64;
    int64_t total_pages = 0;
    for (int32_t l : lens) total_pages += (l + 63) / 64;
    paged_pool           pp(n_head_kv, D, total_pages + 2, rng);
    std::vector<int32_t> perm(size_t(pp.n_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> pages(size_t(n_seq * stride), -1);
    size_t               next = 0;
    for (int s = 0; s < n_seq; ++s) {
        for (int64_t p = 0; p < (lens[s] + 63) / 64; ++p) pages[size_t(s * stride + p)] = perm[next++];
    }
    const std::vector<bf16_t> q     = random_bf16(size_t(n_seq) * n_head * D, rng);
    const float               scale = 1.f / std::sqrt(float(D));

    std::vector<float> o_ref(q.size(), 0.f), lse_ref(size_t(n_seq) * n_head, -INFINITY);
    for (int s = 0; s < n_seq; ++s) {
        if (lens[s] == 0) continue; // nothing to attend to: o = 0, lse = -inf
        std::vector<float> qf(size_t(n_head) * D);
        for (size_t i = 0; i < qf.size(); ++i) qf[i] = bf16_to_fp32(q[size_t(s) * n_head * D + i]);
        attn_dense_ref(qf.data(), 1, lens[s] - 1, n_head, pp.view(pages.data() + s * stride, lens[s]), scale,
                       o_ref.data() + size_t(s) * n_head * D, lse_ref.data() + size_t(s) * n_head, pool(), window);
    }

    dev_buf<bf16_t>  dq(q), dk(pp.k), dv(pp.v);
    dev_buf<int32_t> dpages(pages), dlens(lens);
    dev_buf<float>   dlse(lse_ref.size());
    const size_t     o_bytes = q.size() * (o_f32 ? 4 : 2);
    dev_buf<uint8_t> dout(o_bytes);
    CK(cudaMemset(dout.p, 0xff, o_bytes));
    CK(cudaMemset(dlse.p, 0xff, lse_ref.size() * 4));
    const int64_t    span     = window > 0 ? std::min<int64_t>(n_kv_max, window + 63) : n_kv_max;
    const int        ns       = n_split > 0 ? n_split : cuda::attn_decode_n_split(n_seq, n_head, n_head_kv, D, span);
    const size_t     ws_bytes = cuda::attn_decode_workspace_bytes(n_seq, n_head, D, ns);
    dev_buf<uint8_t> ws(ws_bytes);

    cuda::attn_decode_args a;
    a.q               = dq.p;
    a.n_seq           = n_seq;
    a.n_head          = n_head;
    a.k_pool          = dk.p;
    a.v_pool          = dv.p;
    a.n_head_kv       = n_head_kv;
    a.head_dim        = D;
    a.pages           = dpages.p;
    a.pages_stride    = stride;
    a.n_kv            = dlens.p;
    a.n_kv_max        = n_kv_max;
    a.scale           = scale;
    a.window          = window;
    a.o               = dout.p;
    a.o_f32           = o_f32;
    a.lse             = dlse.p;
    a.workspace       = ws.p;
    a.workspace_bytes = ws_bytes;
    a.n_split         = n_split;
    ASSERT_TRUE(cuda::attn_decode(a, nullptr).is_ok());
    CK(cudaDeviceSynchronize());

    const std::vector<uint8_t> ob = dout.get();
    std::vector<float>         o(q.size());
    for (size_t i = 0; i < o.size(); ++i) {
        if (o_f32) {
            std::memcpy(&o[i], ob.data() + 4 * i, 4);
        } else {
            bf16_t b;
            std::memcpy(&b, ob.data() + 2 * i, 2);
            o[i] = bf16_to_fp32(b);
        }
    }
    // decode keeps P in f32: only the f32 accumulation order differs from the reference
    const double e = nmse(o, o_ref);
    EXPECT_LT(e, o_f32 ? 1e-8 : 2e-5);
    const std::vector<float> lse     = dlse.get();
    double                   max_lse = 0;
    for (size_t i = 0; i < lse.size(); ++i) {
        if (std::isinf(lse_ref[i])) {
            EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "row " << i;
        } else {
            max_lse = std::max(max_lse, std::fabs(double(lse[i]) - lse_ref[i]));
        }
    }
    EXPECT_LT(max_lse, 1e-4);
    for (int s = 0; s < n_seq; ++s) {
        if (lens[s] != 0) continue;
        for (int i = 0; i < n_head * D; ++i) EXPECT_EQ(o[size_t(s) * n_head * D + i], 0.f);
    }
    std::printf("decode D=%d n_seq=%d n_head=%d n_head_kv=%d n_split=%d o_%s: nmse=%.2e max|dlse|=%.2e\n", D, n_seq,
                n_head, n_head_kv, ns, o_f32 ? "f32" : "bf16", e, max_lse);
}

TEST(cuda_attn, decode_rejects_bad_shapes) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    cuda::attn_decode_args a;
    a.n_seq     = 1;
    a.n_head    = 16;
    a.n_head_kv = 1;
    a.head_dim  = 128;
    EXPECT_EQ(cuda::attn_decode(a, nullptr).code(), status_code::UNSUPPORTED); // 16 query heads per KV head
    a.n_head_kv = 2;
    a.head_dim  = 80;
    EXPECT_EQ(cuda::attn_decode(a, nullptr).code(), status_code::UNSUPPORTED);
    a.head_dim = 128;
    a.n_kv_max = 64;
    EXPECT_EQ(cuda::attn_decode(a, nullptr).code(), status_code::INVALID_ARGUMENT); // no workspace
}

TEST(cuda_attn, decode_matches_reference) {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device";
    run_decode({1000, 320, 1, 0, 4097}, 32, 8, 0, true, 11); // auto split, an empty sequence
    run_decode({1000, 320, 1, 4097}, 32, 8, 1, true, 12);    // one split: no partial merge
    run_decode({2000, 63, 65}, 32, 8, 7, false, 13);         // splits past the end of short sequences
    run_decode({777, 1500}, 16, 2, 0, true, 14);             // GQA 8
    run_decode({777, 1500}, 8, 8, 3, true, 15);              // MHA
    run_decode({300}, 16, 8, 0, true, 16);                   // GQA 2
    run_decode({2000, 5}, 32, 8, 50, true, 17);
    run_decode({1000, 77, 3000}, 9, 3, 0, true, 18, 64); // SmolLM2-135M heads
    run_decode({700, 64}, 24, 8, 0, false, 19);          // GQA 3
    run_decode({500, 1500}, 4, 1, 0, true, 20, 256);     // Gemma 3 270M heads
    run_decode(
        {300}, 6, 1, 2, true, 21,
        256); // GQA 6 at 256: the spilling instance              // more splits than pages: one page each, empty tails
}

} // namespace
