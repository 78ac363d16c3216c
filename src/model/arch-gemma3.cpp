// Gemma 3 forward pass: embeddings scaled by sqrt(n_embd); pre- and post-norms (RMSNorm, weights already hold
// Gemma's +1) around attention and FFN; per-head RMSNorm of Q and K (QK-norm) before NEOX RoPE; sliding-window
// attention on local layers (RoPE base 1e4) and full attention on every 6th layer (base 1e6); GELU-tanh gated
// FFN; tied output. Per-layer parameters come from model.cpp (hparams and layer_weights).
#include <chrono>
#include <cmath>

#include "attn/attn-dense.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/log.h"
#include "model/forward.h"

namespace lc {

namespace {

using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Products sharing input x; consecutive weights of one type share one activation quantization.
void matmul_group(std::initializer_list<std::pair<const cpu::matmul_weight *, float *>> outs, const float * x,
                  int64_t n, int64_t ldx, thread_pool & pool, std::vector<uint8_t> & scratch) {
    const cpu::matmul_weight * ws[4];
    float *                    ys[4];
    int64_t                    ld[4];
    int                        k = 0;
    for (const auto & [w, y] : outs) {
        if (k && (w->type != ws[0]->type || w->n_in != ws[0]->n_in)) {
            cpu::matmul_multi(ws, k, x, n, ldx, ys, ld, pool, scratch);
            k = 0;
        }
        ws[k] = w;
        ys[k] = y;
        ld[k] = w->n_out;
        ++k;
    }
    if (k) cpu::matmul_multi(ws, k, x, n, ldx, ys, ld, pool, scratch);
}

// RMSNorm of n_rows rows of dim floats: out[r] = rmsnorm(x[r]) * w (out may alias x).
void norm_rows(const float * x, float * out, int64_t n_rows, int64_t dim, const float * w, float eps,
               thread_pool & pool) {
    if (n_rows * dim < 8192) {
        for (int64_t r = 0; r < n_rows; ++r) cpu::rmsnorm(x + r * dim, w, out + r * dim, dim, eps);
        return;
    }
    pool.run([&](int ith, int nth) {
        int64_t a, b;
        thread_pool::split(n_rows, ith, nth, a, b);
        for (int64_t r = a; r < b; ++r) cpu::rmsnorm(x + r * dim, w, out + r * dim, dim, eps);
    });
}

} // namespace

status forward_batch_gemma3(const model & m, kv_cache & kv, int seq, const int32_t * tokens, int64_t n, int64_t pos0,
                            int64_t n_logits, float * logits, thread_pool & pool, forward_scratch & s,
                            forward_timings * timings) {
    const model_hparams & hp       = m.hparams();
    const int64_t         n_embd   = hp.n_embd;
    const int64_t         head_dim = hp.head_dim;
    const int64_t         n_q      = int64_t(hp.n_head) * head_dim;
    const int64_t         n_kv     = int64_t(hp.n_head_kv) * head_dim;
    const int64_t         n_ff     = hp.n_ff;
    const float           scale    = hp.attn_scale > 0.0f ? hp.attn_scale : 1.0f / std::sqrt(float(head_dim));
    const float           eps      = hp.norm_eps;
    LC_ASSERT(n_logits <= n, "n_logits %lld > n %lld", (long long)n_logits, (long long)n);

    LC_RETURN_IF_ERROR(kv.reserve(seq, pos0 + n));

    s.x.resize(size_t(n * n_embd));
    s.xn.resize(size_t(n * n_embd));
    s.q.resize(size_t(n * n_q));
    s.k.resize(size_t(n * n_kv));
    s.v.resize(size_t(n * n_kv));
    s.attn.resize(size_t(n * n_q));
    s.tmp.resize(size_t(n * n_embd));
    s.gate.resize(size_t(n * n_ff));
    s.up.resize(size_t(n * n_ff));
    s.pos.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) s.pos[size_t(i)] = pos0 + i;

    forward_timings   t_local;
    forward_timings & tm = timings ? *timings : t_local;
    auto              t0 = clock_type::now();
    LC_RETURN_IF_ERROR(m.embed(tokens, n, s.x.data()));
    for (float & v : s.x) v *= hp.embd_scale;

    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights & L = m.layers()[size_t(il)];

        // attention block
        norm_rows(s.x.data(), s.xn.data(), n, n_embd, L.attn_norm, eps, pool);
        tm.other_s += since(t0);
        t0 = clock_type::now();
        matmul_group({{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}}, s.xn.data(), n, n_embd, pool,
                     s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        norm_rows(s.q.data(), s.q.data(), n * hp.n_head, head_dim, L.attn_q_norm, eps, pool);
        norm_rows(s.k.data(), s.k.data(), n * hp.n_head_kv, head_dim, L.attn_k_norm, eps, pool);
        const float base = L.swa ? hp.rope_freq_base_swa : hp.rope_freq_base;
        cpu::rope(s.q.data(), n, hp.n_head, int(head_dim), hp.n_rot, s.pos.data(), base, hp.rope_mode);
        cpu::rope(s.k.data(), n, hp.n_head_kv, int(head_dim), hp.n_rot, s.pos.data(), base, hp.rope_mode);
        kv.write(il, seq, pos0, n, s.k.data(), s.v.data());
        tm.other_s += since(t0);
        t0           = clock_type::now();
        kv_view view = kv.view(il, seq);
        view.n_kv    = pos0 + n; // the context's length is the truth; later slots may hold stale tokens
        attn_dense(s.q.data(), n, pos0, hp.n_head, view, scale, s.attn.data(), nullptr, pool,
                   L.swa ? hp.n_swa : attn_window_none);
        tm.attn_s += since(t0);
        t0 = clock_type::now();
        cpu::matmul(L.wo, s.attn.data(), n, n_q, s.tmp.data(), n_embd, pool, s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        norm_rows(s.tmp.data(), s.tmp.data(), n, n_embd, L.attn_post_norm, eps, pool);
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);

        // FFN block
        norm_rows(s.x.data(), s.xn.data(), n, n_embd, L.ffn_norm, eps, pool);
        tm.other_s += since(t0);
        t0 = clock_type::now();
        matmul_group({{&L.ffn_gate, s.gate.data()}, {&L.ffn_up, s.up.data()}}, s.xn.data(), n, n_embd, pool, s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        if (n == 1) {
            cpu::gelu_tanh_mul(s.gate.data(), s.up.data(), n_ff);
        } else {
            pool.run([&](int ith, int nth) {
                int64_t a, b;
                thread_pool::split(n, ith, nth, a, b);
                cpu::gelu_tanh_mul(s.gate.data() + a * n_ff, s.up.data() + a * n_ff, (b - a) * n_ff);
            });
        }
        tm.other_s += since(t0);
        t0 = clock_type::now();
        cpu::matmul(L.ffn_down, s.gate.data(), n, n_ff, s.tmp.data(), n_embd, pool, s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        norm_rows(s.tmp.data(), s.tmp.data(), n, n_embd, L.ffn_post_norm, eps, pool);
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);
    }

    if (n_logits > 0) {
        const int64_t first = n - n_logits;
        s.norm_out.resize(size_t(n_logits * n_embd));
        norm_rows(s.x.data() + first * n_embd, s.norm_out.data(), n_logits, n_embd, m.output_norm(), eps, pool);
        tm.other_s += since(t0);
        t0 = clock_type::now();
        cpu::matmul(m.output(), s.norm_out.data(), n_logits, n_embd, logits, hp.n_vocab, pool, s.mm);
        tm.matmul_s += since(t0);
    } else {
        tm.other_s += since(t0);
    }
    return status::ok();
}

} // namespace lc
