// SentencePiece-style BPE over a whole text fragment (spaces already replaced by U+2581): start from single
// UTF-8 characters and repeatedly merge the adjacent pair whose concatenation is the vocabulary token with
// the highest score (leftmost first among equal scores). Characters left without a token become <0xNN>
// byte tokens (byte fallback), or the unknown token when the vocabulary has no byte tokens.
#include <queue>

#include "tokenizer/tokenizer-impl.h"
#include "tokenizer/unicode.h"

namespace lc {

namespace {

struct spm_symbol {
    int32_t  prev, next;
    uint32_t start, len; // len 0 once merged into the left neighbour
};

struct spm_bigram {
    float    score;
    int32_t  left, right;
    uint32_t len; // bytes of left + right when queued
};

struct bigram_after {
    bool operator()(const spm_bigram & a, const spm_bigram & b) const {
        return a.score != b.score ? a.score < b.score : a.left > b.left;
    }
};

// Tokens that ordinary text may merge into; control tokens are only ever produced from special-token
// matching, and byte tokens only by byte fallback.
bool mergeable(token_attr a) {
    return a == token_attr::NORMAL || a == token_attr::USER_DEFINED || a == token_attr::UNUSED;
}

} // namespace

void spm_encode(const tokenizer::impl & m, std::string_view text, std::vector<int32_t> & out) {
    std::vector<spm_symbol> syms;
    syms.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
        const size_t len = std::min(utf8_seq_len(uint8_t(text[i])), text.size() - i);
        const auto   idx = int32_t(syms.size());
        syms.push_back({idx - 1, -1, uint32_t(i), uint32_t(len)});
        if (idx > 0) syms[idx - 1].next = idx;
        i += len;
    }

    std::priority_queue<spm_bigram, std::vector<spm_bigram>, bigram_after> queue;
    auto                                                                   try_add = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0) return;
        const uint32_t len = syms[l].len + syms[r].len;
        const int32_t  id = m.find(text.substr(syms[l].start, len));
        if (id < 0 || !mergeable(m.attr[id])) return;
        queue.push({m.score[id], l, r, len});
    };
    for (int32_t i = 0; i + 1 < int32_t(syms.size()); ++i) try_add(i, i + 1);

    while (!queue.empty()) {
        const spm_bigram bg = queue.top();
        queue.pop();
        spm_symbol & l = syms[bg.left];
        spm_symbol & r = syms[bg.right];
        if (l.len == 0 || r.len == 0 || l.next != bg.right || l.len + r.len != bg.len) continue;
        l.len += r.len;
        r.len  = 0;
        l.next = r.next;
        if (r.next >= 0) syms[r.next].prev = bg.left;
        try_add(l.prev, bg.left);
        try_add(bg.left, l.next);
    }

    for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
        const std::string_view piece = text.substr(syms[i].start, syms[i].len);
        const int32_t          id    = m.find(piece);
        if (id >= 0) {
            out.push_back(id);
            continue;
        }
        for (unsigned char c : piece) {
            const int32_t bt = m.spm_byte_token[c];
            if (bt >= 0) {
                out.push_back(bt);
            } else if (m.unk >= 0) {
                out.push_back(m.unk);
                break; // one unknown token per character
            }
        }
    }
}

} // namespace lc
