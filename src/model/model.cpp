// Model loading: hyper-parameters from GGUF keys (names used verbatim, as written by llama.cpp's converter)
// and weight views with shape and type checks.
#include "model/model.h"

#include <cmath>
#include <map>

#include "backend/cpu/ref/dequant.h"
#include "core/log.h"

namespace lc {

namespace {

struct arch_entry {
    const char *   name;
    model_arch     arch;
    cpu::rope_mode rope;
};
const arch_entry k_archs[] = {
    {"llama", model_arch::LLAMA, cpu::rope_mode::NORM},
    {"qwen2", model_arch::QWEN2, cpu::rope_mode::NEOX},
    {"gemma3", model_arch::GEMMA3, cpu::rope_mode::NEOX},
};

// Gemma 3 layer pattern: files written by llama.cpp's converter carry no pattern key
// (gemma3.attention.sliding_window_pattern is absent), and the architecture fixes it: in every group of 6
// layers the first 5 are sliding-window (local) and the 6th global, i.e. layer il is global iff il % 6 == 5
// (270M: global layers 5, 11, 17). The local RoPE base is 10000 unless the file has rope.freq_base_swa
// (Gemma 3's config: rope_local_base_freq = 10000; rope.freq_base, 1e6, is the global layers' base).
constexpr int   k_gemma3_swa_period      = 6;
constexpr float k_gemma3_rope_local_base = 10000.0f;

std::string key(const std::string & arch, const char * suffix) {
    return arch + "." + suffix;
}

result<cpu::matmul_weight> get_matrix(const gguf_file & f, const std::string & name, int64_t n_in, int64_t n_out) {
    const int64_t ne[2] = {n_in, n_out};
    LC_ASSIGN_OR_RETURN(const gguf_tensor_info * t, f.require_tensor(name, 2, ne));
    if (!ref::dequantize_supported(t->type))
        return error(status_code::UNSUPPORTED,
                     "model: %s: tensor '%s' has type %s, which this build cannot compute with", f.path().c_str(),
                     name.c_str(), dtype_name(t->type));
    cpu::matmul_weight w;
    w.type  = t->type;
    w.data  = t->data;
    w.n_in  = n_in;
    w.n_out = n_out;
    return w;
}

result<const float *> get_vector(const gguf_file & f, const std::string & name, int64_t n) {
    const int64_t ne[1] = {n};
    LC_ASSIGN_OR_RETURN(const gguf_tensor_info * t, f.require_tensor(name, 1, ne));
    if (t->type != dtype::F32)
        return error(status_code::UNSUPPORTED, "model: %s: tensor '%s' has type %s; norm and bias vectors must be F32",
                     f.path().c_str(), name.c_str(), dtype_name(t->type));
    return (const float *)t->data;
}

} // namespace

result<std::unique_ptr<model>> model::load(const std::string & path) {
    LC_ASSIGN_OR_RETURN(std::unique_ptr<gguf_file> f, gguf_file::open(path));
    std::unique_ptr<model> m(new model());
    model_hparams &        hp = m->hp_;

    LC_ASSIGN_OR_RETURN(hp.arch_name, f->get_str("general.architecture"));
    const arch_entry * ae = nullptr;
    for (const auto & a : k_archs)
        if (hp.arch_name == a.name) ae = &a;
    if (!ae)
        return error(status_code::UNSUPPORTED,
                     "model: %s: architecture '%s' is not supported (supported: llama, qwen2, gemma3)", path.c_str(),
                     hp.arch_name.c_str());
    hp.arch               = ae->arch;
    hp.rope_mode          = ae->rope;
    const std::string & a = hp.arch_name;
    LC_ASSIGN_OR_RETURN(hp.name, f->get_str_or("general.name", ""));
    LC_ASSIGN_OR_RETURN(uint32_t n_layer, f->get_u32(key(a, "block_count")));
    LC_ASSIGN_OR_RETURN(uint32_t n_embd, f->get_u32(key(a, "embedding_length")));
    LC_ASSIGN_OR_RETURN(uint32_t n_head, f->get_u32(key(a, "attention.head_count")));
    LC_ASSIGN_OR_RETURN(uint32_t n_head_kv, f->get_u32_or(key(a, "attention.head_count_kv"), n_head));
    LC_ASSIGN_OR_RETURN(uint32_t n_ff, f->get_u32(key(a, "feed_forward_length")));
    LC_ASSIGN_OR_RETURN(uint32_t n_ctx, f->get_u32(key(a, "context_length")));
    LC_ASSIGN_OR_RETURN(hp.rope_freq_base, f->get_f32_or(key(a, "rope.freq_base"), 10000.0f));
    LC_ASSIGN_OR_RETURN(hp.norm_eps, f->get_f32(key(a, "attention.layer_norm_rms_epsilon")));
    const bool gemma3 = hp.arch == model_arch::GEMMA3;
    // gemma3's head size is attention.key_length (256), not embedding / heads (640 / 4 = 160)
    if (n_layer == 0 || n_layer > 1024 || n_embd == 0 || n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 ||
        (!gemma3 && n_embd % n_head != 0))
        return error(status_code::INVALID_FILE,
                     "model: %s: inconsistent shape: %u layers, embedding %u, %u heads, %u KV heads", path.c_str(),
                     n_layer, n_embd, n_head, n_head_kv);
    hp.n_layer     = int(n_layer);
    hp.n_embd      = int(n_embd);
    hp.n_head      = int(n_head);
    hp.n_head_kv   = int(n_head_kv);
    hp.head_dim    = int(n_embd / n_head);
    hp.n_ff        = int(n_ff);
    hp.n_ctx_train = n_ctx;
    LC_ASSIGN_OR_RETURN(uint32_t key_len, f->get_u32_or(key(a, "attention.key_length"), uint32_t(hp.head_dim)));
    if (gemma3) {
        LC_ASSIGN_OR_RETURN(key_len, f->get_u32(key(a, "attention.key_length")));
        LC_ASSIGN_OR_RETURN(uint32_t val_len, f->get_u32_or(key(a, "attention.value_length"), key_len));
        if (key_len == 0 || key_len > 1024 || val_len != key_len)
            return error(status_code::UNSUPPORTED,
                         "model: %s: attention.key_length %u / value_length %u: need equal sizes in 1..1024",
                         path.c_str(), key_len, val_len);
        hp.head_dim = int(key_len);
    }
    if (int(key_len) != hp.head_dim)
        return error(status_code::UNSUPPORTED, "model: %s: attention.key_length %u differs from embedding/heads %d",
                     path.c_str(), key_len, hp.head_dim);
    if (gemma3) {
        LC_ASSIGN_OR_RETURN(uint32_t n_swa, f->get_u32_or(key(a, "attention.sliding_window"), 0));
        hp.n_swa = n_swa;
        LC_ASSIGN_OR_RETURN(hp.rope_freq_base_swa,
                            f->get_f32_or(key(a, "rope.freq_base_swa"), k_gemma3_rope_local_base));
        LC_ASSIGN_OR_RETURN(float softcap, f->get_f32_or(key(a, "final_logit_softcapping"), 0.0f));
        if (softcap != 0.0f || f->find(key(a, "attention.sliding_window_pattern")))
            return error(status_code::UNSUPPORTED,
                         "model: %s: gemma3 final_logit_softcapping or an explicit sliding_window_pattern is not "
                         "supported",
                         path.c_str());
        // Gemma 3 scales queries by query_pre_attn_scalar^-1/2 = key_length^-1/2 (1/16 for 256) for every size
        // but 27B, whose converter keeps no query_pre_attn_scalar key; this build has no 27B check and refuses
        // files with more than 48 layers below.
        if (n_layer > 48)
            return error(status_code::UNSUPPORTED, "model: %s: gemma3 with %u layers (27B) is not supported",
                         path.c_str(), n_layer);
        hp.attn_scale = 1.0f / std::sqrt(float(key_len));
        hp.embd_scale = std::sqrt(float(n_embd));
    }
    LC_ASSIGN_OR_RETURN(uint32_t n_rot, f->get_u32_or(key(a, "rope.dimension_count"), uint32_t(hp.head_dim)));
    if (n_rot == 0 || int(n_rot) > hp.head_dim || n_rot % 2)
        return error(status_code::INVALID_FILE, "model: %s: rope.dimension_count %u must be even and <= head dim %d",
                     path.c_str(), n_rot, hp.head_dim);
    hp.n_rot = int(n_rot);

    const gguf_tensor_info * emb = f->find_tensor("token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != n_embd)
        return error(status_code::INVALID_FILE, "model: %s: tensor 'token_embd.weight' missing or not [%u, n_vocab]",
                     path.c_str(), n_embd);
    hp.n_vocab = int(emb->ne[1]);
    LC_ASSIGN_OR_RETURN(m->tok_embd_, get_matrix(*f, "token_embd.weight", n_embd, hp.n_vocab));
    LC_ASSIGN_OR_RETURN(m->output_norm_, get_vector(*f, "output_norm.weight", n_embd));
    if (f->find_tensor("output.weight")) {
        LC_ASSIGN_OR_RETURN(m->output_, get_matrix(*f, "output.weight", n_embd, hp.n_vocab));
    } else {
        m->output_         = m->tok_embd_;
        hp.tied_embeddings = true;
    }

    const int64_t n_q  = int64_t(hp.n_head) * hp.head_dim;
    const int64_t n_kv = int64_t(hp.n_head_kv) * hp.head_dim;
    m->layers_.resize(size_t(n_layer));
    for (int il = 0; il < hp.n_layer; ++il) {
        layer_weights & l = m->layers_[size_t(il)];
        auto            t = [&](const char * s) { return "blk." + std::to_string(il) + "." + s; };
        LC_ASSIGN_OR_RETURN(l.attn_norm, get_vector(*f, t("attn_norm.weight"), n_embd));
        LC_ASSIGN_OR_RETURN(l.wq, get_matrix(*f, t("attn_q.weight"), n_embd, n_q));
        LC_ASSIGN_OR_RETURN(l.wk, get_matrix(*f, t("attn_k.weight"), n_embd, n_kv));
        LC_ASSIGN_OR_RETURN(l.wv, get_matrix(*f, t("attn_v.weight"), n_embd, n_kv));
        LC_ASSIGN_OR_RETURN(l.wo, get_matrix(*f, t("attn_output.weight"), n_q, n_embd));
        if (hp.arch == model_arch::QWEN2) {
            LC_ASSIGN_OR_RETURN(l.bq, get_vector(*f, t("attn_q.bias"), n_q));
            LC_ASSIGN_OR_RETURN(l.bk, get_vector(*f, t("attn_k.bias"), n_kv));
            LC_ASSIGN_OR_RETURN(l.bv, get_vector(*f, t("attn_v.bias"), n_kv));
        }
        if (gemma3) {
            LC_ASSIGN_OR_RETURN(l.attn_q_norm, get_vector(*f, t("attn_q_norm.weight"), hp.head_dim));
            LC_ASSIGN_OR_RETURN(l.attn_k_norm, get_vector(*f, t("attn_k_norm.weight"), hp.head_dim));
            LC_ASSIGN_OR_RETURN(l.attn_post_norm, get_vector(*f, t("post_attention_norm.weight"), n_embd));
            LC_ASSIGN_OR_RETURN(l.ffn_post_norm, get_vector(*f, t("post_ffw_norm.weight"), n_embd));
            l.swa = hp.n_swa > 0 && il % k_gemma3_swa_period < k_gemma3_swa_period - 1;
        }
        LC_ASSIGN_OR_RETURN(l.ffn_norm, get_vector(*f, t("ffn_norm.weight"), n_embd));
        LC_ASSIGN_OR_RETURN(l.ffn_gate, get_matrix(*f, t("ffn_gate.weight"), n_embd, n_ff));
        LC_ASSIGN_OR_RETURN(l.ffn_up, get_matrix(*f, t("ffn_up.weight"), n_embd, n_ff));
        LC_ASSIGN_OR_RETURN(l.ffn_down, get_matrix(*f, t("ffn_down.weight"), n_ff, n_embd));
    }
    for (const auto & ti : f->tensors()) m->n_weight_bytes_ += ti.n_bytes;
    m->file_ = std::move(f);
    return m;
}

std::string model::weight_type_name() const {
    // general.file_type names the quantization mix as the converter chose it ("Q4_K_M" mixes Q4_K, Q6_K, Q5_0,
    // Q8_0); without it, the type holding the most weight bytes.
    static const std::map<uint32_t, const char *> k_file_types = {
        {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},    {8, "Q5_0"},
        {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"},
        {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"}, {18, "Q6_K"},   {32, "BF16"},
    };
    if (const gguf_kv * kv = file_->find("general.file_type"); kv && kv->type == gguf_vtype::UINT32) {
        if (auto it = k_file_types.find(uint32_t(kv->u64)); it != k_file_types.end()) return it->second;
    }
    std::map<std::string, uint64_t> bytes;
    for (const auto & t : file_->tensors()) bytes[dtype_name(t.type)] += t.n_bytes;
    std::string best;
    uint64_t    most = 0;
    for (const auto & [k, v] : bytes)
        if (v > most) best = k, most = v;
    return best;
}

status model::embed(const int32_t * tokens, int64_t n, float * out) const {
    const size_t rb = tok_embd_.row_bytes();
    for (int64_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp_.n_vocab)
            return error(status_code::INVALID_ARGUMENT, "model: token id %d out of range [0, %d)", tokens[i],
                         hp_.n_vocab);
        ref::dequantize_row(tok_embd_.type, (const uint8_t *)tok_embd_.data + size_t(tokens[i]) * rb,
                            out + i * hp_.n_embd, hp_.n_embd);
    }
    return status::ok();
}

} // namespace lc
