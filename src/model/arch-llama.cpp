// llama-family forward pass (llama, qwen2): pre-norm decoder blocks with RMSNorm, RoPE, grouped-query
// attention over the paged KV cache, SwiGLU MLP, optional QKV biases (qwen2), tied or separate output.
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

// Runs products that share input x; groups of the same weight type share one activation quantization.
void matmul_shared(std::initializer_list<std::pair<const cpu::matmul_weight *, float *>> outs, const float * x,
                   int64_t n, int64_t ldx, thread_pool & pool, std::vector<uint8_t> & scratch) {
    const cpu::matmul_weight * ws[4];
    float *                    ys[4];
    int64_t                    ld[4];
    int                        k    = 0;
    dtype                      type = outs.begin()->first->type;
    for (const auto & [w, y] : outs) {
        if (w->type != type || w->n_in != outs.begin()->first->n_in) {
            if (k) cpu::matmul_multi(ws, k, x, n, ldx, ys, ld, pool, scratch);
            k    = 0;
            type = w->type;
        }
        ws[k] = w;
        ys[k] = y;
        ld[k] = w->n_out;
        ++k;
    }
    if (k) cpu::matmul_multi(ws, k, x, n, ldx, ys, ld, pool, scratch);
}

void add_bias(float * y, const float * b, int64_t n_tok, int64_t n) {
    if (!b) return;
    for (int64_t t = 0; t < n_tok; ++t) cpu::add_inplace(y + t * n, b, n);
}

} // namespace

status forward_batch(const model & m, kv_cache & kv, int seq, const int32_t * tokens, int64_t n, int64_t pos0,
                     int64_t n_logits, float * logits, thread_pool & pool, forward_scratch & s,
                     forward_timings * timings) {
    if (m.hparams().arch == model_arch::GEMMA3)
        return forward_batch_gemma3(m, kv, seq, tokens, n, pos0, n_logits, logits, pool, s, timings);
    const model_hparams & hp     = m.hparams();
    const int64_t         n_embd = hp.n_embd;
    const int64_t         n_q    = int64_t(hp.n_head) * hp.head_dim;
    const int64_t         n_kv   = int64_t(hp.n_head_kv) * hp.head_dim;
    const int64_t         n_ff   = hp.n_ff;
    const float           scale  = 1.0f / std::sqrt(float(hp.head_dim));
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

    auto norm_rows = [&](const float * w, float * out) {
        if (n == 1) {
            cpu::rmsnorm(s.x.data(), w, out, n_embd, hp.norm_eps);
            return;
        }
        pool.run([&](int ith, int nth) {
            int64_t a, b;
            thread_pool::split(n, ith, nth, a, b);
            for (int64_t t = a; t < b; ++t)
                cpu::rmsnorm(s.x.data() + t * n_embd, w, out + t * n_embd, n_embd, hp.norm_eps);
        });
    };

    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights & L = m.layers()[size_t(il)];

        // attention block
        norm_rows(L.attn_norm, s.xn.data());
        tm.other_s += since(t0);
        t0 = clock_type::now();
        matmul_shared({{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}}, s.xn.data(), n, n_embd, pool,
                      s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        add_bias(s.q.data(), L.bq, n, n_q);
        add_bias(s.k.data(), L.bk, n, n_kv);
        add_bias(s.v.data(), L.bv, n, n_kv);
        cpu::rope(s.q.data(), n, hp.n_head, hp.head_dim, hp.n_rot, s.pos.data(), hp.rope_freq_base, hp.rope_mode);
        cpu::rope(s.k.data(), n, hp.n_head_kv, hp.head_dim, hp.n_rot, s.pos.data(), hp.rope_freq_base, hp.rope_mode);
        kv.write(il, seq, pos0, n, s.k.data(), s.v.data());
        tm.other_s += since(t0);
        t0           = clock_type::now();
        kv_view view = kv.view(il, seq);
        view.n_kv    = pos0 + n; // the context's length is the truth; later slots may hold stale tokens
        attn_dense(s.q.data(), n, pos0, hp.n_head, view, scale, s.attn.data(), nullptr, pool);
        tm.attn_s += since(t0);
        t0 = clock_type::now();
        cpu::matmul(L.wo, s.attn.data(), n, n_q, s.tmp.data(), n_embd, pool, s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);

        // MLP block
        norm_rows(L.ffn_norm, s.xn.data());
        tm.other_s += since(t0);
        t0 = clock_type::now();
        matmul_shared({{&L.ffn_gate, s.gate.data()}, {&L.ffn_up, s.up.data()}}, s.xn.data(), n, n_embd, pool, s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        if (n == 1) {
            cpu::silu_mul(s.gate.data(), s.up.data(), n_ff);
        } else {
            pool.run([&](int ith, int nth) {
                int64_t a, b;
                thread_pool::split(n, ith, nth, a, b);
                cpu::silu_mul(s.gate.data() + a * n_ff, s.up.data() + a * n_ff, (b - a) * n_ff);
            });
        }
        tm.other_s += since(t0);
        t0 = clock_type::now();
        cpu::matmul(L.ffn_down, s.gate.data(), n, n_ff, s.tmp.data(), n_embd, pool, s.mm);
        tm.matmul_s += since(t0);
        t0 = clock_type::now();
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);
    }

    if (n_logits > 0) {
        const int64_t first = n - n_logits;
        s.norm_out.resize(size_t(n_logits * n_embd));
        for (int64_t t = 0; t < n_logits; ++t)
            cpu::rmsnorm(s.x.data() + (first + t) * n_embd, m.output_norm(), s.norm_out.data() + t * n_embd, n_embd,
                         hp.norm_eps);
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
