// Internal state shared by tokenizer.cpp, bpe.cpp and spm.cpp. Not part of the module's interface.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace lc {

// Byte-level BPE tables. Symbols are strings that take part in merges: every token is the symbol with
// its own id; merge parts and results that are not tokens get ids from n_vocab upwards.
struct bpe_tables {
    struct merge {
        int32_t rank;
        int32_t result; // symbol id of left+right
    };
    std::unordered_map<uint64_t, merge> merges;       // key: (uint64(left) << 32) | right
    std::array<int32_t, 256>            byte_sym{};   // symbol of the single byte-level char of each byte
    std::array<int32_t, 256>            byte_token{}; // token of that char, or -1
    std::array<std::string, 256>        byte_char;    // GPT-2 byte -> UTF-8 of its printable code point
    std::array<int16_t, 324>            char_byte{};  // the inverse: code point (all are < 324) -> byte
    std::vector<std::string>            extra_syms;   // texts of symbols n_vocab, n_vocab + 1, ...

    static uint64_t key(int32_t l, int32_t r) { return (uint64_t(uint32_t(l)) << 32) | uint32_t(r); }
};

// Token text -> id: open addressing with linear probing over (hash tag, id) slots, so that a failed lookup
// (most lookups while merging) costs one cache line. A text that occurs twice maps to its last id.
class token_index {
  public:
    void    build(const std::vector<std::string> & texts);
    int32_t find(std::string_view s) const {
        if (s.size() > max_len_ || slots_.empty()) return -1;
        const uint64_t h   = hash(s);
        const auto     tag = uint32_t(h >> 32);
        for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
            const slot & e = slots_[i];
            if (e.id < 0) return -1;
            if (e.tag == tag && (*texts_)[e.id] == s) return e.id;
        }
    }
    static uint64_t hash(std::string_view s);

  private:
    struct slot {
        uint32_t tag = 0;
        int32_t  id  = -1;
    };
    std::vector<slot>                slots_;
    size_t                           mask_    = 0;
    size_t                           max_len_ = 0;
    const std::vector<std::string> * texts_   = nullptr;
};

struct tokenizer::impl {
    tokenizer_type type = tokenizer_type::BPE;
    pretok_info    pre;

    std::vector<std::string> text;  // by id
    std::vector<float>       score; // by id (0 when the file has none)
    std::vector<token_attr>  attr;  // by id
    token_index              index; // over `text`

    int32_t bos = -1, eos = -1, unk = -1, eot = -1, eom = -1, pad = -1;
    bool    add_bos = false, add_eos = false, add_space_prefix = false;

    std::vector<uint8_t> eog; // by id: 1 if end of generation

    // Special-token matching: a byte trie over the texts of CONTROL, USER_DEFINED and UNKNOWN tokens.
    struct trie_node {
        int32_t token       = -1;                 // token ending here (lowest id if several share the text)
        int32_t first_child = -1, n_children = 0; // children sorted by byte in trie_edges
    };
    struct trie_edge {
        uint8_t byte;
        int32_t node;
    };
    std::vector<trie_node>   trie; // node 0 is the root
    std::vector<trie_edge>   trie_edges;
    std::array<int32_t, 256> trie_root_child{};

    bpe_tables bpe;

    std::array<int32_t, 256> spm_byte_token{}; // <0xXX> tokens, -1 if absent

    std::string chat_template;

    int32_t n_vocab() const { return int32_t(text.size()); }
    int32_t find(std::string_view s) const { return index.find(s); }
};

// Builds impl.bpe from the merges; INVALID_FILE for malformed merge lines.
status bpe_build(tokenizer::impl & m, const std::vector<std::string> & merges);

// Scratch reused across words and fragments of one encode call: a cache of word -> ids and buffers.
struct bpe_scratch {
    std::unordered_map<std::string, std::vector<int32_t>> cache;
};

// Appends the ids of a text fragment (no special tokens in it) to out.
void bpe_encode(const tokenizer::impl & m, std::string_view text, bpe_scratch & scratch, std::vector<int32_t> & out);
void spm_encode(const tokenizer::impl & m, std::string_view text, std::vector<int32_t> & out);

// Piece of a NORMAL BPE token: its byte-level characters mapped back to bytes.
std::string bpe_token_bytes(const tokenizer::impl & m, const std::string & token_text);

} // namespace lc
