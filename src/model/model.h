// A loaded model: hyper-parameters from GGUF keys and views of the weight tensors inside the mapped file.
// Architectures: llama (SmolLM2, Llama 3), qwen2 (llama plus QKV biases, NEOX rope) and gemma3 (QK-norm,
// post-norms, GELU-tanh gated FFN, sliding-window attention on 5 of every 6 layers).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "gguf/gguf.h"
#include "longctx/status.h"

namespace lc {

enum class model_arch { LLAMA, QWEN2, GEMMA3 };

struct model_hparams {
    model_arch     arch = model_arch::LLAMA;
    std::string    arch_name; // general.architecture
    std::string    name;      // general.name
    int            n_layer         = 0;
    int            n_embd          = 0;
    int            n_head          = 0;
    int            n_head_kv       = 0;
    int            head_dim        = 0;
    int            n_rot           = 0;
    int            n_ff            = 0;
    int            n_vocab         = 0;
    int64_t        n_ctx_train     = 0;
    float          rope_freq_base  = 10000.0f;
    float          norm_eps        = 1e-5f;
    cpu::rope_mode rope_mode       = cpu::rope_mode::NORM;
    bool           tied_embeddings = false;
    // gemma3 (defaults leave llama/qwen2 unchanged)
    float   rope_freq_base_swa = 10000.0f; // RoPE base of sliding-window layers
    int64_t n_swa              = 0;        // sliding window in tokens (attention.sliding_window); 0: none
    float   attn_scale         = 0.0f;     // softmax scale of q . k; 0: 1 / sqrt(head_dim)
    float   embd_scale         = 1.0f;     // token embeddings are multiplied by this (gemma3: sqrt(n_embd))
};

struct layer_weights {
    const float *      attn_norm = nullptr; // [n_embd] f32
    cpu::matmul_weight wq, wk, wv, wo;
    const float *      bq = nullptr, *bk = nullptr, *bv = nullptr; // qwen2 biases, f32
    const float *      ffn_norm = nullptr;
    cpu::matmul_weight ffn_gate, ffn_up, ffn_down;
    // gemma3
    const float * attn_q_norm    = nullptr; // [head_dim] f32, RMSNorm of each query head
    const float * attn_k_norm    = nullptr; // [head_dim] f32, RMSNorm of each key head
    const float * attn_post_norm = nullptr; // [n_embd] f32 (post_attention_norm), on the attention output
    const float * ffn_post_norm  = nullptr; // [n_embd] f32 (post_ffw_norm), on the FFN output
    bool          swa            = false;   // sliding-window layer (window hparams.n_swa, rope_freq_base_swa)
};

class model {
  public:
    // Loads and validates a GGUF model: every required key and tensor present with the right shape.
    static result<std::unique_ptr<model>> load(const std::string & path);

    const model_hparams &              hparams() const { return hp_; }
    const gguf_file &                  file() const { return *file_; }
    const std::vector<layer_weights> & layers() const { return layers_; }
    const cpu::matmul_weight &         tok_embd() const { return tok_embd_; }
    const cpu::matmul_weight &         output() const { return output_; }
    const float *                      output_norm() const { return output_norm_; }
    // Bytes of weights (tensor data) in the file.
    uint64_t n_weight_bytes() const { return n_weight_bytes_; }
    // Most common weight type of the transformer blocks ("Q4_1"), for reports.
    std::string weight_type_name() const;

    // Dequantizes token embedding rows: out[i][n_embd] = embedding of tokens[i].
    status embed(const int32_t * tokens, int64_t n, float * out) const;

  private:
    model() = default;
    std::unique_ptr<gguf_file> file_;
    model_hparams              hp_;
    std::vector<layer_weights> layers_;
    cpu::matmul_weight         tok_embd_;
    cpu::matmul_weight         output_;
    const float *              output_norm_    = nullptr;
    uint64_t                   n_weight_bytes_ = 0;
};

} // namespace lc
