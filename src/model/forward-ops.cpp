// Shared forward-pass building blocks (see forward-ops.h).
#include "model/forward-ops.h"

#include "attn/attn-dense.h"

#include "backend/cpu/ops.h"

namespace lc::fwd {

void prepare(forward_scratch & s, int64_t n, int64_t pos0, int64_t n_embd, int64_t n_q, int64_t n_kv, int64_t n_ff) {
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
}

void matmul_group(std::initializer_list<std::pair<const cpu::matmul_weight *, float *>> outs, const float * x,
                  int64_t n, int64_t ldx, thread_pool & pool, std::vector<uint8_t> & scratch) {
    const cpu::matmul_weight * ws[4];
    float *                    ys[4];
    int64_t                    ld[4];
    int                        k = 0;
    for (const auto & [w, y] : outs) {
        if (k == 4 || (k && (w->type != ws[0]->type || w->n_in != ws[0]->n_in))) {
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

void norm_rows(const float * x, float * out, int64_t n_rows, int64_t dim, const float * w, float eps,
               thread_pool & pool) {
    // Below ~8k elements a parallel region costs more than it saves.
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

void attend(attention * attn, int il, const float * q, int64_t n, int64_t pos0, int n_head, const kv_view & kv,
            float scale, float * o, thread_pool & pool, int64_t window, forward_timings * t) {
    if (attn) {
        attn->run(il, q, n, pos0, n_head, kv, scale, o, pool, window, t);
        return;
    }
    attn_dense(q, n, pos0, n_head, kv, scale, o, nullptr, pool, window);
}

void add_bias(float * y, const float * b, int64_t n_tok, int64_t n) {
    if (!b) return;
    for (int64_t t = 0; t < n_tok; ++t) cpu::add_inplace(y + t * n, b, n);
}

void glu_rows(glu act, float * g, const float * u, int64_t n_tok, int64_t n_ff, thread_pool & pool) {
    auto run = [&](int64_t a, int64_t b) {
        if (act == glu::SILU)
            cpu::silu_mul(g + a * n_ff, u + a * n_ff, (b - a) * n_ff);
        else
            cpu::gelu_tanh_mul(g + a * n_ff, u + a * n_ff, (b - a) * n_ff);
    };
    if (n_tok == 1) {
        run(0, 1);
        return;
    }
    pool.run([&](int ith, int nth) {
        int64_t a, b;
        thread_pool::split(n_tok, ith, nth, a, b);
        run(a, b);
    });
}

void output_head(const model & m, forward_scratch & s, int64_t n, int64_t n_logits, float * logits, thread_pool & pool,
                 phase_timer & timer) {
    if (n_logits <= 0) {
        timer.end(&forward_timings::other_s);
        return;
    }
    const model_hparams & hp     = m.hparams();
    const int64_t         n_embd = hp.n_embd;
    s.norm_out.resize(size_t(n_logits * n_embd));
    norm_rows(s.x.data() + (n - n_logits) * n_embd, s.norm_out.data(), n_logits, n_embd, m.output_norm(), hp.norm_eps,
              pool);
    timer.end(&forward_timings::other_s);
    cpu::matmul(m.output(), s.norm_out.data(), n_logits, n_embd, logits, hp.n_vocab, pool, s.mm);
    timer.end(&forward_timings::matmul_s);
}

} // namespace lc::fwd
