// Tokenizers of GGUF models: byte-level BPE (tokenizer.ggml.model "gpt2", e.g. SmolLM2) and
// SentencePiece-style BPE ("llama", e.g. Gemma 3), special tokens, and the model's chat template.
// Token ids follow llama.cpp's tokenizer for the same file (the test fixtures come from it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "longctx/status.h"

namespace lc {

class gguf_file;

// tokenizer.ggml.token_type values 1..6, in this order.
enum class token_attr : uint8_t { NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE };

enum class tokenizer_type { BPE, SPM }; // "gpt2" byte-level BPE, "llama" SentencePiece BPE

struct chat_message {
    std::string role; // "system", "user", "assistant"
    std::string content;
};

// What a tokenizer is built from: the tokenizer.ggml.* keys of a GGUF file.
struct tokenizer_vocab {
    std::string              model = "gpt2"; // tokenizer.ggml.model: "gpt2" or "llama"
    std::string              pre;            // tokenizer.ggml.pre; empty = "default" (BPE only)
    std::vector<std::string> tokens;         // token texts as stored (byte-level or with U+2581 for spaces)
    std::vector<float>       scores;         // merge priority for SPM (higher first); may be empty for BPE
    std::vector<int32_t>     token_types;    // 1..6 (token_attr + 1); empty = all NORMAL
    std::vector<std::string> merges;         // BPE: "left right", rank = index
    int32_t                  bos_id = -1, eos_id = -1, unk_id = -1, eot_id = -1, eom_id = -1, pad_id = -1;
    int                      add_bos = -1, add_eos = -1, add_space_prefix = -1; // -1: key absent, model default
    std::string              chat_template; // tokenizer.chat_template (Jinja source), may be empty
};

// Thread-safety: immutable after construction; all const methods may run concurrently. Copies share state.
class tokenizer {
  public:
    // Reads tokenizer.ggml.* and tokenizer.chat_template. UNSUPPORTED for other tokenizer models or unknown
    // pre-tokenizers, INVALID_FILE for inconsistent vocabularies.
    static result<tokenizer> from_gguf(const gguf_file & f);
    static result<tokenizer> from_vocab(tokenizer_vocab v);

    // add_special: BOS/EOS as the file's add_bos_token/add_eos_token say (defaults: BPE no BOS, SPM BOS).
    // parse_special: control token texts in `text` (e.g. "<|im_start|>") become their tokens; without it they
    // are tokenized as plain text. User-defined tokens are always matched, as SentencePiece and llama.cpp do.
    // Where special texts overlap, longer ones win.
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

    // Bytes of one token for output: byte-level decoded (BPE), U+2581 -> ' ' and <0xAB> -> byte (SPM).
    // Control, unknown and unused tokens give "" unless `special` (then their text). A multi-byte character
    // may span several tokens: pieces are bytes, not whole characters.
    std::string token_to_piece(int32_t id, bool special = false) const;
    // Concatenated pieces; for SPM with add_space_prefix the space added in front of the text is removed.
    std::string decode(const std::vector<int32_t> & ids, bool special = false) const;

    int32_t             n_vocab() const;
    int32_t             bos() const; // -1 if none
    int32_t             eos() const; // -1 if none
    int32_t             unk() const; // -1 if none
    bool                add_bos() const;
    bool                add_eos() const;
    bool                is_eog(int32_t id) const; // end of generation: eos, eot, eom, <|im_end|>, <end_of_turn>, ...
    token_attr          attr(int32_t id) const;   // REQUIRES: 0 <= id < n_vocab()
    const std::string & token_text(int32_t id) const;          // as stored in the vocabulary
    int32_t             token_id(std::string_view text) const; // -1 if no token has this exact text
    tokenizer_type      type() const;

    const std::string & chat_template() const;
    // Renders the conversation with the model's chat template. Supported families, detected from the
    // template text: ChatML ("<|im_start|>", with the template's default system message when it has one),
    // Gemma ("<start_of_turn>") and Llama 3 ("<|start_header_id|>"). The output reproduces the Jinja
    // template's output exactly for text conversations and includes the BOS text where the template writes
    // bos_token, so encode it with add_special = false and parse_special = true. A file without a template
    // gets the plain form of the family whose turn markers its vocabulary has. NOT_FOUND when there is
    // neither, UNSUPPORTED for other families, INVALID_ARGUMENT for conversations the template rejects.
    result<std::string> apply_chat_template(const std::vector<chat_message> & msgs, bool add_generation_prompt) const;

    struct impl;

  private:
    tokenizer() = default;
    std::shared_ptr<const impl> impl_;
};

// Chat template rendering without a tokenizer (tests, tools). bos_text/eos_text stand for the template's
// bos_token/eos_token variables.
result<std::string> chat_template_apply(std::string_view tmpl, const std::vector<chat_message> & msgs,
                                        bool add_generation_prompt, std::string_view bos_text,
                                        std::string_view eos_text);

} // namespace lc
