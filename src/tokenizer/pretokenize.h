// Pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre): split text into words before BPE.
// Each is a list of passes; a pass splits every piece of the previous pass on its own, as a regex split
// that keeps both the matches and the text between them. The regexes are hand-written scanners over code
// points with categories from our Unicode table.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "longctx/status.h"

namespace lc {

enum class pretok_type {
    DEFAULT, // [\p{P}$+<=>^~|]+ , then GPT2 , then \p{N}+ , then [0-9][0-9][0-9]
    GPT2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    SMOLLM,  // \p{N} (every digit alone), then GPT2
    LLAMA3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
             // \s*[\r\n]+|\s+(?!\S)|\s+
    QWEN2,   // as LLAMA3 with \p{N} (single digits) instead of \p{N}{1,3}
};

struct pretok_info {
    pretok_type type          = pretok_type::DEFAULT;
    bool        ignore_merges = false; // a word that is itself a token skips BPE (llama3)
    bool        add_bos       = false; // default for tokenizer.ggml.add_bos_token when the key is absent
};

// Maps a tokenizer.ggml.pre value to its pre-tokenizer. An empty name means "default".
// UNSUPPORTED for names we do not know, listing the ones we do.
result<pretok_info> pretok_from_name(std::string_view name);
const char *        pretok_type_name(pretok_type t);

// Splits text into words. Bytes that are not valid UTF-8 are replaced by U+FFFD (EF BF BD) in the words;
// valid text is returned unchanged, so the words concatenate back to the input.
std::vector<std::string> pretokenize(pretok_type type, std::string_view text);

} // namespace lc
