// Gemma 3 forward pass: embeddings scaled by sqrt(n_embd); pre- and post-norms (RMSNorm, weights already hold
// Gemma's +1) around attention and FFN; per-head RMSNorm of Q and K (QK-norm) before NEOX RoPE; sliding-window
// attention on local layers (RoPE base 1e4) and full attention on every 6th layer (base 1e6); GELU-tanh gated
// FFN; tied output. Per-layer parameters come from model.cpp (hparams and layer_weights).
#include <cmath>

#include "attn/attn-dense.h"
#include "backend/cpu/ops.h"
#include "core/log.h"
#include "model/forward-ops.h"

namespace lc {

status forward_batch_gemma3(const model & m, kv_cache & kv, const int32_t * tokens,
                            const std::vector<forward_seq> & seqs, float * logits, thread_pool & pool,
                            forward_scratch & s, forward_timings & timings) {
    const model_hparams & hp       = m.hparams();
    const int64_t         n_embd   = hp.n_embd;
    const int64_t         head_dim = hp.head_dim;
    const int64_t         n_q      = int64_t(hp.n_head) * head_dim;
    const int64_t         n_kv     = int64_t(hp.n_head_kv) * head_dim;
    const int64_t         n_ff     = hp.n_ff;
    const float           scale    = hp.attn_scale > 0.0f ? hp.attn_scale : 1.0f / std::sqrt(float(head_dim));
    const float           eps      = hp.norm_eps;
    const int64_t         n      = fwd::batch_tokens(seqs);

    fwd::prepare(s, seqs, n_embd, n_q, n_kv, n_ff);
    fwd::phase_timer timer(timings);
    LC_RETURN_IF_ERROR(m.embed(tokens, n, s.x.data()));
    for (float & v : s.x) v *= hp.embd_scale;

    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights & L = m.layers()[size_t(il)];

        // attention block
        fwd::norm_rows(s.x.data(), s.xn.data(), n, n_embd, L.attn_norm, eps, pool);
        timer.end(&forward_timings::other_s);
        fwd::matmul_group({{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}}, s.xn.data(), n, n_embd, pool,
                          s.mm);
        timer.end(&forward_timings::matmul_s);
        fwd::norm_rows(s.q.data(), s.q.data(), n * hp.n_head, head_dim, L.attn_q_norm, eps, pool);
        fwd::norm_rows(s.k.data(), s.k.data(), n * hp.n_head_kv, head_dim, L.attn_k_norm, eps, pool);
        const float base = L.swa ? hp.rope_freq_base_swa : hp.rope_freq_base;
        cpu::rope(s.q.data(), n, hp.n_head, int(head_dim), hp.n_rot, s.pos.data(), base, hp.rope_mode);
        cpu::rope(s.k.data(), n, hp.n_head_kv, int(head_dim), hp.n_rot, s.pos.data(), base, hp.rope_mode);
        fwd::store_kv(kv, il, seqs, s.k.data(), s.v.data(), s.slot0);
        timer.end(&forward_timings::other_s);
        fwd::attend(seqs, s.slot0, il, s.q.data(), hp.n_head, kv, scale, s.attn.data(), pool,
                    L.swa ? hp.n_swa : attn_window_none, timings);
        timer.end(&forward_timings::attn_s);
        cpu::matmul(L.wo, s.attn.data(), n, n_q, s.tmp.data(), n_embd, pool, s.mm);
        timer.end(&forward_timings::matmul_s);
        fwd::norm_rows(s.tmp.data(), s.tmp.data(), n, n_embd, L.attn_post_norm, eps, pool);
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);

        // FFN block
        fwd::norm_rows(s.x.data(), s.xn.data(), n, n_embd, L.ffn_norm, eps, pool);
        timer.end(&forward_timings::other_s);
        fwd::matmul_group({{&L.ffn_gate, s.gate.data()}, {&L.ffn_up, s.up.data()}}, s.xn.data(), n, n_embd, pool, s.mm);
        timer.end(&forward_timings::matmul_s);
        fwd::glu_rows(fwd::glu::GELU_TANH, s.gate.data(), s.up.data(), n, n_ff, pool);
        timer.end(&forward_timings::other_s);
        cpu::matmul(L.ffn_down, s.gate.data(), n, n_ff, s.tmp.data(), n_embd, pool, s.mm);
        timer.end(&forward_timings::matmul_s);
        fwd::norm_rows(s.tmp.data(), s.tmp.data(), n, n_embd, L.ffn_post_norm, eps, pool);
        cpu::add_inplace(s.x.data(), s.tmp.data(), n * n_embd);
    }

    fwd::output_head(m, s, seqs, logits, pool, timer);
    return status::ok();
}

} // namespace lc
