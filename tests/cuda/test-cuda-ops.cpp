// CUDA forward-pass ops (backend/cuda/ops.cuh, gemm.cuh) against the CPU reference ops on random inputs from
// fixed seeds (STYLE.md §6). Outputs are poisoned with NaN before each run. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cpu/ops.h"
#include "backend/cuda/gemm.cuh"
#include "backend/cuda/kv-paged.cuh"
#include "backend/cuda/ops.cuh"
#include "core/fp16.h"

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

#define SKIP_WITHOUT_GPU()                                                                                             \
    do {                                                                                                               \
        if (!have_gpu()) GTEST_SKIP() << "no CUDA device";                                                             \
    } while (0)

#define CK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// A device buffer holding a copy of a host vector.
template <typename T> struct dbuf {
    T *    p = nullptr;
    size_t n = 0;
    explicit dbuf(size_t n_) : n(n_) {
        EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&p), std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    }
    explicit dbuf(const std::vector<T> & h) : dbuf(h.size()) { up(h); }
    ~dbuf() { cudaFree(p); }
    void up(const std::vector<T> & h) {
        EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    std::vector<T> down() const {
        std::vector<T> h(n);
        EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
        return h;
    }
    void poison() { EXPECT_EQ(cudaMemset(p, 0xff, n * sizeof(T)), cudaSuccess); } // NaN in f32 and bf16
};

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
    std::mt19937                    g(seed);
    std::normal_distribution<float> d(0.0f, sd);
    std::vector<float>              v(n);
    for (auto & x : v) x = d(g);
    return v;
}

std::vector<bf16_t> to_bf16(const std::vector<float> & v) {
    std::vector<bf16_t> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = fp32_to_bf16(v[i]);
    return r;
}
std::vector<float> from_bf16(const std::vector<bf16_t> & v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_fp32(v[i]);
    return r;
}

// Normalised mean squared error; NaN anywhere gives +inf.
double nmse(const std::vector<float> & out, const std::vector<float> & ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(out[i])) return INFINITY;
        const double d = double(out[i]) - double(ref[i]);
        num += d * d;
        den += double(ref[i]) * double(ref[i]);
    }
    return num / std::max(den, 1e-30);
}

// bf16 output of an f32 computation: the rounding alone gives ~ 2^-18 / 3 = 1.3e-6 (round to nearest, uniform
// relative error up to 2^-9); f32 outputs differ from the CPU by reassociation only.
constexpr double k_nmse_bf16 = 5e-6;
constexpr double k_nmse_f32  = 1e-10;

TEST(CudaOps, EmbedRows) {
    SKIP_WITHOUT_GPU();
    const int            V = 1000, E = 576, n = 37;
    auto                 table = to_bf16(randn(size_t(V) * E, 1));
    std::vector<int32_t> tok(n);
    std::mt19937         g(2);
    for (auto & t : tok) t = int32_t(g() % V);
    tok[3] = V - 1;
    dbuf<bf16_t>  dt(table);
    dbuf<int32_t> dk(tok);
    dbuf<float>   dx(size_t(n) * E);
    dx.poison();
    cuda::embed_rows(dt.p, dk.p, n, E, 1.5f, dx.p, nullptr);
    CK(cudaDeviceSynchronize());
    auto               x = dx.down();
    std::vector<float> ref(size_t(n) * E);
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < E; ++i) ref[size_t(t) * E + i] = bf16_to_fp32(table[size_t(tok[t]) * E + i]) * 1.5f;
    EXPECT_EQ(x, ref);
}

TEST(CudaOps, RmsNorm) {
    SKIP_WITHOUT_GPU();
    for (int dim : {64, 576, 2048, 4096}) {
        for (bool y_bf16 : {true, false}) {
            const int    n = 19, ldx = dim + 8, ldy = dim + 16;
            auto         x = randn(size_t(n) * ldx, 3 + dim, 2.0f);
            auto         w = randn(size_t(dim), 4);
            dbuf<float>  dx(x), dw(w);
            const size_t ny = size_t(n) * ldy;
            dbuf<float>  dyf(y_bf16 ? 1 : ny);
            dbuf<bf16_t> dyb(y_bf16 ? ny : 1);
            dyf.poison();
            dyb.poison();
            cuda::rmsnorm_rows(dx.p, ldx, dw.p, n, dim, 1e-5f, y_bf16 ? (void *)dyb.p : (void *)dyf.p, ldy, y_bf16,
                               nullptr);
            CK(cudaDeviceSynchronize());
            std::vector<float> y = y_bf16 ? from_bf16(dyb.down()) : dyf.down();
            std::vector<float> out, ref(static_cast<size_t>(dim));
            std::vector<float> all_out, all_ref;
            for (int r = 0; r < n; ++r) {
                cpu::ref::rmsnorm(x.data() + size_t(r) * ldx, w.data(), ref.data(), dim, 1e-5f);
                all_ref.insert(all_ref.end(), ref.begin(), ref.end());
                all_out.insert(all_out.end(), y.begin() + size_t(r) * ldy, y.begin() + size_t(r) * ldy + dim);
            }
            const double e = nmse(all_out, all_ref);
            EXPECT_LT(e, y_bf16 ? k_nmse_bf16 : k_nmse_f32) << "dim " << dim << " bf16 " << y_bf16;
            RecordProperty("nmse_" + std::to_string(dim) + (y_bf16 ? "_bf16" : "_f32"), std::to_string(e));
        }
    }
}

TEST(CudaOps, RmsNormAdd) {
    SKIP_WITHOUT_GPU();
    const int   n = 11, dim = 640;
    auto        x = randn(size_t(n) * dim, 5), t = randn(size_t(n) * dim, 6, 3.0f), w = randn(size_t(dim), 7);
    dbuf<float> dx(x), dt(t), dw(w);
    cuda::rmsnorm_add_rows(dx.p, dt.p, dw.p, n, dim, 1e-6f, nullptr);
    CK(cudaDeviceSynchronize());
    auto               out = dx.down();
    std::vector<float> ref = x, tmp(static_cast<size_t>(dim));
    for (int r = 0; r < n; ++r) {
        cpu::ref::rmsnorm(t.data() + size_t(r) * dim, w.data(), tmp.data(), dim, 1e-6f);
        for (int i = 0; i < dim; ++i) ref[size_t(r) * dim + i] += tmp[size_t(i)];
    }
    EXPECT_LT(nmse(out, ref), k_nmse_f32);
}

struct qkv_case {
    int            n_head, n_head_kv, head_dim, n_rot;
    cpu::rope_mode mode;
    bool           bias, qk_norm;
    int64_t        pos0;
};

void run_qkv_case(const qkv_case & c) {
    const int     n = 70, D = c.head_dim, n_q = c.n_head * D, n_kv = c.n_head_kv * D, ld = n_q + 2 * n_kv + 5;
    const float   base = 500000.0f;
    const float   eps  = 1e-6f;
    auto          qkv  = randn(size_t(n) * ld, 11 + D);
    auto          bias = randn(size_t(n_q + 2 * n_kv), 12, 0.5f);
    auto          qn = randn(size_t(D), 13), kn = randn(size_t(D), 14);
    const int64_t n_ctx       = c.pos0 + n;
    const int     n_pages_seq = int((n_ctx + 63) / 64);
    const int     n_pages     = n_pages_seq + 3;
    // A shuffled page table over a larger pool.
    std::vector<int32_t> pages(static_cast<size_t>(n_pages));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(15));
    pages.resize(static_cast<size_t>(n_pages_seq));
    std::vector<int32_t> pos(n);
    for (int t = 0; t < n; ++t) pos[size_t(t)] = int32_t(c.pos0 + t);

    dbuf<float>   dqkv(qkv), dbias(bias), dqn(qn), dkn(kn);
    dbuf<int32_t> dpos(pos), dpages(pages);
    dbuf<bf16_t>  dq(size_t(n) * n_q);
    const size_t  pool = size_t(n_pages) * c.n_head_kv * 64 * D;
    dbuf<bf16_t>  dk(pool), dv(pool);
    dq.poison();
    dk.poison();
    dv.poison();
    cuda::qkv_finish_args a;
    a.qkv         = dqkv.p;
    a.ld          = ld;
    a.n           = n;
    a.pos         = dpos.p;
    a.n_head      = c.n_head;
    a.n_head_kv   = c.n_head_kv;
    a.head_dim    = D;
    a.n_rot       = c.n_rot;
    a.theta_scale = std::pow(base, -2.0f / float(c.n_rot));
    a.neox        = c.mode == cpu::rope_mode::NEOX;
    if (c.bias) {
        a.bq = dbias.p;
        a.bk = dbias.p + n_q;
        a.bv = dbias.p + n_q + n_kv;
    }
    if (c.qk_norm) {
        a.q_norm = dqn.p;
        a.k_norm = dkn.p;
    }
    a.eps    = eps;
    a.q_out  = dq.p;
    a.k_pool = dk.p;
    a.v_pool = dv.p;
    a.pages  = dpages.p;
    cuda::qkv_finish(a, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    // CPU: the ops of arch-llama.cpp / arch-gemma3.cpp on the same rows.
    std::vector<float>   q(size_t(n) * n_q), k(size_t(n) * n_kv), v(size_t(n) * n_kv);
    std::vector<int64_t> pos64(pos.begin(), pos.end());
    for (int t = 0; t < n; ++t) {
        const float * r = qkv.data() + size_t(t) * ld;
        for (int i = 0; i < n_q; ++i) q[size_t(t) * n_q + i] = r[i] + (c.bias ? bias[size_t(i)] : 0.0f);
        for (int i = 0; i < n_kv; ++i) {
            k[size_t(t) * n_kv + i] = r[n_q + i] + (c.bias ? bias[size_t(n_q + i)] : 0.0f);
            v[size_t(t) * n_kv + i] = r[n_q + n_kv + i] + (c.bias ? bias[size_t(n_q + n_kv + i)] : 0.0f);
        }
    }
    if (c.qk_norm) {
        for (int r = 0; r < n * c.n_head; ++r)
            cpu::ref::rmsnorm(&q[size_t(r) * D], qn.data(), &q[size_t(r) * D], D, eps);
        for (int r = 0; r < n * c.n_head_kv; ++r)
            cpu::ref::rmsnorm(&k[size_t(r) * D], kn.data(), &k[size_t(r) * D], D, eps);
    }
    // cpu::rope, the op the CPU forward pass runs: its fp32 angle recurrence (theta_i = pos * s^i by repeated
    // multiplication) is what the kernel reproduces. cpu::ref::rope takes exact (double) angles; at position 131000
    // the fp32 angle is off by up to ~1e-2 rad, which the device and the CPU path share (nmse 7.4e-6 against ref).
    cpu::rope(q.data(), n, c.n_head, D, c.n_rot, pos64.data(), base, c.mode);
    cpu::rope(k.data(), n, c.n_head_kv, D, c.n_rot, pos64.data(), base, c.mode);

    const auto         gq = from_bf16(dq.down());
    const auto         kp = from_bf16(dk.down()), vp = from_bf16(dv.down());
    std::vector<float> gk(k.size()), gv(v.size());
    for (int t = 0; t < n; ++t)
        for (int hk = 0; hk < c.n_head_kv; ++hk)
            for (int d = 0; d < D; ++d) {
                const int64_t p   = pos[size_t(t)];
                const size_t  off = ((size_t(pages[size_t(p / 64)]) * c.n_head_kv + hk) * 64 + size_t(p % 64)) * D + d;
                gk[(size_t(t) * c.n_head_kv + hk) * D + d] = kp[off];
                gv[(size_t(t) * c.n_head_kv + hk) * D + d] = vp[off];
            }
    const double eq = nmse(gq, q), ek = nmse(gk, k), ev = nmse(gv, v);
    EXPECT_LT(eq, k_nmse_bf16);
    EXPECT_LT(ek, k_nmse_bf16);
    EXPECT_LT(ev, k_nmse_bf16);
    printf("  qkv_finish D=%d heads %d/%d n_rot %d %s bias %d qk_norm %d pos0 %lld: nmse q %.2e k %.2e v %.2e\n", D,
           c.n_head, c.n_head_kv, c.n_rot, c.mode == cpu::rope_mode::NEOX ? "neox" : "norm", c.bias, c.qk_norm,
           (long long)c.pos0, eq, ek, ev);
}

TEST(CudaOps, QkvFinish) {
    SKIP_WITHOUT_GPU();
    run_qkv_case({9, 3, 64, 64, cpu::rope_mode::NORM, false, false, 0});         // SmolLM2
    run_qkv_case({32, 8, 128, 128, cpu::rope_mode::NORM, false, false, 131000}); // Llama 3 at depth
    run_qkv_case({12, 2, 128, 128, cpu::rope_mode::NEOX, true, false, 30});      // qwen2
    run_qkv_case({4, 1, 256, 256, cpu::rope_mode::NEOX, false, true, 1000});     // gemma3
    run_qkv_case({8, 8, 96, 32, cpu::rope_mode::NORM, true, true, 7});           // partial rotation
}

TEST(CudaOps, Glu) {
    SKIP_WITHOUT_GPU();
    for (auto act : {cuda::glu_act::SILU, cuda::glu_act::GELU_TANH}) {
        const int    n = 13, F = 1536;
        auto         gu = randn(size_t(n) * 2 * F, 21, 3.0f);
        dbuf<float>  dgu(gu);
        dbuf<bf16_t> dh(size_t(n) * F);
        dh.poison();
        cuda::glu_rows(dgu.p, n, F, act, dh.p, nullptr);
        CK(cudaDeviceSynchronize());
        std::vector<float> ref(size_t(n) * F);
        for (int t = 0; t < n; ++t) {
            std::copy_n(gu.begin() + size_t(t) * 2 * F, F, ref.begin() + size_t(t) * F);
            if (act == cuda::glu_act::SILU)
                cpu::ref::silu_mul(&ref[size_t(t) * F], &gu[size_t(t) * 2 * F + F], F);
            else
                cpu::ref::gelu_tanh_mul(&ref[size_t(t) * F], &gu[size_t(t) * 2 * F + F], F);
        }
        EXPECT_LT(nmse(from_bf16(dh.down()), ref), k_nmse_bf16);
    }
}

TEST(CudaOps, Argmax) {
    SKIP_WITHOUT_GPU();
    const int n_rows = 5, n = 49152;
    auto      x              = randn(size_t(n_rows) * n, 31);
    x[size_t(0) * n + 777]   = 100.0f; // a clear winner
    x[size_t(1) * n + 40000] = 50.0f;  // a tie: the lower index wins
    x[size_t(1) * n + 30000] = 50.0f;
    x[size_t(2) * n + 0]     = 60.0f;
    x[size_t(3) * n + n - 1] = 70.0f;
    dbuf<float>   dx(x);
    dbuf<int32_t> dout(static_cast<size_t>(n_rows));
    cuda::argmax_rows(dx.p, n_rows, n, dout.p, nullptr);
    CK(cudaDeviceSynchronize());
    auto out = dout.down();
    for (int r = 0; r < n_rows; ++r) {
        const auto    b   = x.begin() + size_t(r) * n;
        const int32_t ref = int32_t(std::max_element(b, b + n) - b); // first maximum
        EXPECT_EQ(out[size_t(r)], ref) << "row " << r;
    }
}

TEST(CudaOps, GemmBf16) {
    SKIP_WITHOUT_GPU();
    cuda::gemm_runner g;
    struct shape {
        int   n_out, n_in, n_tok, ldx_pad, ldy_pad;
        float beta;
    };
    for (const shape & s :
         {shape{576, 576, 1, 0, 0, 0.0f}, shape{1728, 576, 37, 0, 0, 0.0f}, shape{576, 1536, 37, 0, 0, 1.0f},
          shape{4096, 4096, 33, 64, 32, 1.0f}, shape{49152, 576, 3, 0, 0, 0.0f}}) {
        const int64_t ldx = s.n_in + s.ldx_pad, ldy = s.n_out + s.ldy_pad;
        auto          w  = to_bf16(randn(size_t(s.n_out) * s.n_in, 41));
        auto          x  = to_bf16(randn(size_t(s.n_tok) * ldx, 42));
        auto          y0 = randn(size_t(s.n_tok) * ldy, 43);
        dbuf<bf16_t>  dw(w), dx(x);
        dbuf<float>   dy(y0);
        g.run(dw.p, s.n_out, s.n_in, dx.p, ldx, s.n_tok, dy.p, ldy, s.beta, nullptr);
        CK(cudaDeviceSynchronize());
        auto               y = dy.down();
        std::vector<float> out, ref;
        for (int t = 0; t < s.n_tok; ++t)
            for (int o = 0; o < s.n_out; ++o) {
                double acc = 0;
                for (int i = 0; i < s.n_in; ++i)
                    acc += double(bf16_to_fp32(w[size_t(o) * s.n_in + i])) * bf16_to_fp32(x[size_t(t) * ldx + i]);
                ref.push_back(float(acc + s.beta * y0[size_t(t) * ldy + o]));
                out.push_back(y[size_t(t) * ldy + o]);
            }
        // Padding columns of y are untouched.
        for (int t = 0; t < s.n_tok; ++t)
            for (int64_t o = s.n_out; o < ldy; ++o) ASSERT_EQ(y[size_t(t * ldy + o)], y0[size_t(t * ldy + o)]);
        // f32 accumulation of exact bf16 products: reassociation only.
        EXPECT_LT(nmse(out, ref), 1e-10) << s.n_out << "x" << s.n_in << " n_tok " << s.n_tok;
    }
}

TEST(CudaOps, FillUniform) {
    SKIP_WITHOUT_GPU();
    const int64_t n = 1 << 20;
    dbuf<bf16_t>  a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    cuda::fill_uniform_bf16(a.p, n, 7, 0.5f, nullptr);
    cuda::fill_uniform_bf16(b.p, n, 7, 0.5f, nullptr);
    CK(cudaDeviceSynchronize());
    auto ha = from_bf16(a.down()), hb = from_bf16(b.down());
    EXPECT_EQ(ha, hb);
    double s = 0, s2 = 0;
    for (float v : ha) {
        ASSERT_LE(std::fabs(v), 0.5f);
        s += v;
        s2 += double(v) * v;
    }
    EXPECT_NEAR(s / n, 0.0, 2e-3);
    EXPECT_NEAR(s2 / n, 0.25 / 3, 2e-3); // variance of U(-a, a): a^2 / 3
}

} // namespace
