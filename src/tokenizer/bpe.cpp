// Byte-level BPE (GPT-2 style): pre-tokenize into words, map each byte to a printable code point
// (GPT-2's bytes_to_unicode), then per word repeatedly merge the adjacent pair with the lowest merge rank
// (leftmost first among equal ranks) using a priority queue. Word results are cached per encode call.
#include <queue>

#include "tokenizer/tokenizer-impl.h"
#include "tokenizer/unicode.h"

namespace lc {

namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
// themselves; the other 68 bytes get U+0100, U+0101, ... in byte order.
uint32_t gpt2_byte_cpt(int b) {
    auto printable = [](int c) {
        return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    };
    if (printable(b)) return uint32_t(b);
    int n = 0;
    for (int c = 0; c < b; ++c) n += printable(c) ? 0 : 1;
    return 0x100 + uint32_t(n);
}

struct bpe_symbol {
    int32_t  sym;
    int32_t  prev, next; // -1 at the ends
    uint32_t start, len; // bytes of the word; len 0 once merged into the left neighbour
};

struct bpe_bigram {
    int32_t rank;
    int32_t left, right;
    int32_t left_sym, right_sym; // to recognise stale entries
    int32_t result;
};

struct bigram_after {
    bool operator()(const bpe_bigram & a, const bpe_bigram & b) const {
        return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    }
};

void bpe_word(const tokenizer::impl & m, std::string_view word, std::vector<int32_t> & out) {
    const bpe_tables & t = m.bpe;
    if (m.pre.ignore_merges) {
        std::string enc;
        for (unsigned char c : word) enc += t.byte_char[c];
        const int32_t id = m.find(enc);
        if (id >= 0) {
            out.push_back(id);
            return;
        }
    }
    const int32_t           n = int32_t(word.size());
    std::vector<bpe_symbol> syms(n);
    for (int32_t i = 0; i < n; ++i) {
        syms[i] = {t.byte_sym[uint8_t(word[i])], i - 1, i + 1 < n ? i + 1 : -1, uint32_t(i), 1};
    }
    std::priority_queue<bpe_bigram, std::vector<bpe_bigram>, bigram_after> queue;
    auto                                                                   try_add = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0) return;
        auto it = t.merges.find(bpe_tables::key(syms[l].sym, syms[r].sym));
        if (it == t.merges.end()) return;
        queue.push({it->second.rank, l, r, syms[l].sym, syms[r].sym, it->second.result});
    };
    for (int32_t i = 0; i + 1 < n; ++i) try_add(i, i + 1);
    while (!queue.empty()) {
        const bpe_bigram bg = queue.top();
        queue.pop();
        bpe_symbol & l = syms[bg.left];
        bpe_symbol & r = syms[bg.right];
        if (l.len == 0 || r.len == 0 || l.next != bg.right || l.sym != bg.left_sym || r.sym != bg.right_sym) continue;
        l.sym = bg.result;
        l.len += r.len;
        r.len  = 0;
        l.next = r.next;
        if (r.next >= 0) syms[r.next].prev = bg.left;
        try_add(l.prev, bg.left);
        try_add(bg.left, l.next);
    }
    const int32_t n_vocab = m.n_vocab();
    for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = syms[i].next) {
        const bpe_symbol & s = syms[i];
        if (s.sym < n_vocab) {
            out.push_back(s.sym);
            continue;
        }
        // A merge result that is not a token (inconsistent vocabulary): fall back to byte tokens.
        for (uint32_t k = s.start; k < s.start + s.len; ++k) {
            const int32_t id = t.byte_token[uint8_t(word[k])];
            if (id >= 0) out.push_back(id);
        }
    }
}

} // namespace

status bpe_build(tokenizer::impl & m, const std::vector<std::string> & merges) {
    bpe_tables &                             t = m.bpe;
    std::unordered_map<std::string, int32_t> extra;
    auto                                     sym_of = [&](const std::string & s) -> int32_t {
        const int32_t id = m.find(s);
        if (id >= 0) return id;
        auto it = extra.find(s);
        if (it != extra.end()) return it->second;
        const int32_t sym = m.n_vocab() + int32_t(t.extra_syms.size());
        t.extra_syms.push_back(s);
        extra.emplace(s, sym);
        return sym;
    };

    t.char_byte.fill(-1);
    for (int b = 0; b < 256; ++b) {
        const uint32_t cp = gpt2_byte_cpt(b);
        t.byte_char[b]    = utf8_from_cpt(cp);
        t.char_byte[cp]   = int16_t(b);
        t.byte_sym[b]     = sym_of(t.byte_char[b]);
        t.byte_token[b]   = m.find(t.byte_char[b]);
    }

    t.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
        const std::string & line = merges[i];
        const size_t        pos  = line.size() > 1 ? line.find(' ', 1) : std::string::npos;
        if (pos == std::string::npos) {
            return error(status_code::INVALID_FILE, "tokenizer: merge %zu of %zu ('%s') is not 'left right'", i + 1,
                         merges.size(), line.c_str());
        }
        const std::string left  = line.substr(0, pos);
        const std::string right = line.substr(pos + 1);
        const int32_t     l     = sym_of(left);
        const int32_t     r     = sym_of(right);
        const int32_t     res   = sym_of(left + right);
        t.merges.emplace(bpe_tables::key(l, r), bpe_tables::merge{int32_t(i), res}); // first (lowest rank) wins
    }
    return status::ok();
}

void bpe_encode(const tokenizer::impl & m, std::string_view text, bpe_scratch & scratch, std::vector<int32_t> & out) {
    for (const std::string & word : pretokenize(m.pre.type, text)) {
        auto it = scratch.cache.find(word);
        if (it == scratch.cache.end()) {
            std::vector<int32_t> ids;
            bpe_word(m, word, ids);
            it = scratch.cache.emplace(word, std::move(ids)).first;
        }
        out.insert(out.end(), it->second.begin(), it->second.end());
    }
}

std::string bpe_token_bytes(const tokenizer::impl & m, const std::string & token_text) {
    std::string out;
    out.reserve(token_text.size());
    for (size_t i = 0; i < token_text.size();) {
        size_t         len = 1;
        const uint32_t cp  = utf8_decode(token_text.data() + i, token_text.size() - i, &len);
        if (cp < m.bpe.char_byte.size() && m.bpe.char_byte[cp] >= 0) {
            out.push_back(char(m.bpe.char_byte[cp]));
        } else {
            out.append(token_text, i, len); // not a byte-level character: keep as is
        }
        i += len;
    }
    return out;
}

} // namespace lc
