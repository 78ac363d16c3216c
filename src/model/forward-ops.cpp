// Shared forward-pass building blocks (see forward-ops.h).
#include "model/forward-ops.h"

#include "attn/attn-dense.h"

#include "backend/cpu/ops.h"

namespace lc::fwd {

int64_t batch_tokens(const std::vector<forward_seq> & seqs) {
    int64_t n = 0;
    for (const forward_seq & r : seqs) n += r.n;
    return n;
}

void prepare(forward_scratch & s, const std::vector<forward_seq> & seqs, int64_t n_embd, int64_t n_q, int64_t n_kv,
             int64_t n_ff) {
    const int64_t n = batch_tokens(seqs);
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
    int64_t i = 0;
    for (const forward_seq & r : seqs)
        for (int64_t j = 0; j < r.n; ++j) s.pos[size_t(i++)] = r.pos0 + j;
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

void store_kv(kv_cache & kv, int il, const std::vector<forward_seq> & seqs, const float * k, const float * v,
              std::vector<int64_t> & slot0) {
    const int64_t row = int64_t(kv.n_head_kv()) * kv.head_dim();
    slot0.resize(seqs.size());
    int64_t off = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
        // Attention works in cache slots (equal to positions until a KV policy compacts the layer).
        slot0[i] = kv.n_slots(il, seqs[i].seq);
        kv.write(il, seqs[i].seq, slot0[i], seqs[i].n, k + off * row, v + off * row);
        off += seqs[i].n;
    }
}

void attend(const std::vector<forward_seq> & seqs, const std::vector<int64_t> & slot0, int il, const float * q,
            int n_head, const kv_cache & kv, float scale, float * o, thread_pool & pool, int64_t window,
            forward_timings & t) {
    const int64_t row = int64_t(n_head) * kv.head_dim();
    int64_t       off = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
        const forward_seq & r  = seqs[i];
        const kv_view       kv_r = kv.view(il, r.seq);
        if (r.attn)
            r.attn->run(il, q + off * row, r.n, slot0[i], n_head, kv_r, scale, o + off * row, pool, window, &t);
        else
            attn_dense(q + off * row, r.n, slot0[i], n_head, kv_r, scale, o + off * row, nullptr, pool, window);
        off += r.n;
    }
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

void output_head(const model & m, forward_scratch & s, const std::vector<forward_seq> & seqs, float * logits,
                 thread_pool & pool, phase_timer & timer) {
    int64_t n_logits = 0;
    for (const forward_seq & r : seqs) n_logits += r.n_logits;
    if (n_logits <= 0) {
        timer.end(&forward_timings::other_s);
        return;
    }
    const model_hparams & hp     = m.hparams();
    const int64_t         n_embd = hp.n_embd;
    s.norm_out.resize(size_t(n_logits * n_embd));
    int64_t row = 0, out = 0;
    for (const forward_seq & r : seqs) {
        if (r.n_logits > 0)
            norm_rows(s.x.data() + (row + r.n - r.n_logits) * n_embd, s.norm_out.data() + out * n_embd, r.n_logits,
                      n_embd, m.output_norm(), hp.norm_eps, pool);
        row += r.n;
        out += r.n_logits;
    }
    timer.end(&forward_timings::other_s);
    cpu::matmul(m.output(), s.norm_out.data(), n_logits, n_embd, logits, hp.n_vocab, pool, s.mm);
    timer.end(&forward_timings::matmul_s);
}

} // namespace lc::fwd
