// llama-family forward pass (llama, qwen2): pre-norm decoder blocks with RMSNorm, RoPE, grouped-query
// attention over the paged KV cache, SwiGLU MLP, optional QKV biases (qwen2), tied or separate output.
#include <cmath>

#include "attn/attn-dense.h"
#include "backend/cpu/ops.h"
#include "core/log.h"
#include "model/forward-ops.h"

namespace lc {

status forward_batch_llama(const model & m, kv_cache & kv, const int32_t * tokens,
                           const std::vector<forward_seq> & seqs, float * logits, thread_pool & pool,
                           forward_scratch & s, forward_timings & timings) {
    const model_hparams & hp     = m.hparams();
    const int64_t         n_embd = hp.n_embd;
    const int64_t         n_q    = int64_t(hp.n_head) * hp.head_dim;
    const int64_t         n_kv   = int64_t(hp.n_head_kv) * hp.head_dim;
    const int64_t         n_ff   = hp.n_ff;
    const float           scale  = 1.0f / std::sqrt(float(hp.head_dim));
    const float           eps    = hp.norm_eps;
    const int64_t         n      = fwd::batch_tokens(seqs);

    fwd::prepare(s, seqs, n_embd, n_q, n_kv, n_ff);
    fwd::phase_timer timer(timings);
    LC_RETURN_IF_ERROR(m.embed(tokens, n, s.x.data()));

    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights & L = m.layers()[size_t(il)];

        // attention block
        fwd::norm_rows(s.x.data(), s.xn.data(), n, n_embd, L.attn_norm, eps, pool);
        timer.end(&forward_timings::other_s);
        fwd::matmul_group({{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}}, s.xn.data(), n, n_embd, pool,
                          s.mm);
        timer.end(&forward_timings::matmul_s);
        fwd::add_bias(s.q.data(), L.bq, n, n_q);
        fwd::add_bias(s.k.data(), L.bk, n, n_kv);
        fwd::add_bias(s.v.data(), L.bv, n, n_kv);
        cpu::rope(s.q.data(), n, hp.n_head, hp.head_dim, hp.n_rot, s.pos.data(), hp.rope_freq_base, hp.rope_mode);
        cpu::rope(s.k.data(), n, hp.n_head_kv, hp.head_dim, hp.n_rot, s.pos.data(), hp.rope_freq_base, hp.rope_mode);
        fwd::store_kv(kv, il, seqs, s.k.data(), s.v.data(), s.slot0);
        timer.end(&forward_timings::other_s);
        fwd::attend(seqs, s.slot0, il, s.q.data(), hp.n_head, kv, scale, s.attn.data(), pool, attn_window_none,
                    timings);
        timer.end(&forward_timings::attn_s);
        cpu::matmul(L.wo, s.attn.data(), n, n_q, s.tmp.data(), n_embd, pool, s.mm);
        timer.end(&forward_timings::matmul_s);
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);

        // MLP block
        fwd::norm_rows(s.x.data(), s.xn.data(), n, n_embd, L.ffn_norm, eps, pool);
        timer.end(&forward_timings::other_s);
        fwd::matmul_group({{&L.ffn_gate, s.gate.data()}, {&L.ffn_up, s.up.data()}}, s.xn.data(), n, n_embd, pool, s.mm);
        timer.end(&forward_timings::matmul_s);
        fwd::glu_rows(fwd::glu::SILU, s.gate.data(), s.up.data(), n, n_ff, pool);
        timer.end(&forward_timings::other_s);
        cpu::matmul(L.ffn_down, s.gate.data(), n, n_ff, s.tmp.data(), n_embd, pool, s.mm);
        timer.end(&forward_timings::matmul_s);
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);
    }
    fwd::output_head(m, s, seqs, logits, pool, timer);
    return status::ok();
}

} // namespace lc
