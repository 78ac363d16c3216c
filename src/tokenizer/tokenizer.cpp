// Tokenizer construction from tokenizer.ggml.* keys, special-token matching, and the encode/decode paths
// shared by byte-level BPE (bpe.cpp) and SentencePiece BPE (spm.cpp).
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <map>

#include "core/log.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer-impl.h"

namespace lc {

namespace {

// Texts of tokens that end generation in the usual chat vocabularies, besides eos/eot/eom ids.
const char * const k_eog_texts[] = {"<|eot_id|>", "<|im_end|>",      "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                    "<|eom_id|>", "<|end_of_text|>", "<EOT>",   "_<EOT>"};

const std::string k_spm_space = "\xE2\x96\x81"; // U+2581 LOWER ONE EIGHTH BLOCK

bool is_special_attr(token_attr a) {
    return a == token_attr::CONTROL || a == token_attr::USER_DEFINED || a == token_attr::UNKNOWN;
}

void build_trie(tokenizer::impl & m) {
    // Per-node children in std::map while building, then flattened with each node's edges contiguous
    // and sorted by byte.
    std::vector<std::map<uint8_t, int32_t>> kids(1);
    std::vector<int32_t>                    tok(1, -1);
    for (int32_t id = 0; id < m.n_vocab(); ++id) {
        if (!is_special_attr(m.attr[id]) || m.text[id].empty()) continue;
        int32_t node = 0;
        for (unsigned char c : m.text[id]) {
            auto it = kids[node].find(c);
            if (it == kids[node].end()) {
                const auto child = int32_t(kids.size());
                kids[node].emplace(c, child);
                kids.emplace_back();
                tok.push_back(-1);
                node = child;
            } else {
                node = it->second;
            }
        }
        if (tok[node] < 0) tok[node] = id; // the lowest id of a repeated text
    }
    m.trie.assign(kids.size(), {});
    m.trie_edges.clear();
    m.trie_root_child.fill(-1);
    for (size_t n = 0; n < kids.size(); ++n) {
        m.trie[n].token       = tok[n];
        m.trie[n].first_child = int32_t(m.trie_edges.size());
        m.trie[n].n_children  = int32_t(kids[n].size());
        for (const auto & [c, child] : kids[n]) m.trie_edges.push_back({c, child});
    }
    for (const auto & [c, child] : kids[0]) m.trie_root_child[c] = child;
}

int32_t trie_child(const tokenizer::impl & m, int32_t node, uint8_t c) {
    const tokenizer::impl::trie_node & n     = m.trie[node];
    const auto *                       begin = m.trie_edges.data() + n.first_child;
    const auto *                       end   = begin + n.n_children;
    const auto *                       it =
        std::lower_bound(begin, end, c, [](const tokenizer::impl::trie_edge & e, uint8_t v) { return e.byte < v; });
    return (it != end && it->byte == c) ? it->node : -1;
}

struct fragment {
    int32_t token; // >= 0: a special token; -1: text [start, start + len)
    size_t  start, len;
};

// Splits text into special tokens and the text between them. Candidates are all occurrences of special
// token texts; they are taken longest first (then lowest id, then leftmost), each only where it does not
// overlap one already taken. This equals matching each special text in turn, longest first, in the text
// left over by longer ones.
std::vector<fragment> partition(const tokenizer::impl & m, std::string_view text, bool parse_special) {
    LC_ASSERT(text.size() < UINT32_MAX, "tokenizer: text of %zu bytes is over the 4 GiB limit", text.size());
    struct occurrence {
        uint32_t pos;
        int32_t  token;
    };
    // Occurrences by length (index = length); each list is in position order as found.
    std::vector<std::vector<occurrence>> by_len;
    bool                                 any = false;
    if (m.trie.size() > 1) {
        for (size_t p = 0; p < text.size(); ++p) {
            int32_t node  = m.trie_root_child[uint8_t(text[p])];
            size_t  depth = 1;
            while (node >= 0) {
                const int32_t t = m.trie[node].token;
                if (t >= 0 && (parse_special || m.attr[t] == token_attr::USER_DEFINED)) {
                    if (by_len.size() <= depth) by_len.resize(depth + 1);
                    by_len[depth].push_back({uint32_t(p), t});
                    any = true;
                }
                if (p + depth >= text.size()) break;
                node = trie_child(m, node, uint8_t(text[p + depth]));
                ++depth;
            }
        }
    }
    if (!any) {
        if (text.empty()) return {};
        return {{-1, 0, text.size()}};
    }
    std::vector<uint8_t>  taken(text.size(), 0);
    std::vector<fragment> chosen;
    for (size_t len = by_len.size(); len-- > 1;) {
        std::vector<occurrence> & occ = by_len[len];
        // same length: lower id first, each token left to right
        auto by_token = [](const occurrence & a, const occurrence & b) { return a.token < b.token; };
        if (!std::is_sorted(occ.begin(), occ.end(), by_token)) std::stable_sort(occ.begin(), occ.end(), by_token);
        for (const occurrence & o : occ) {
            auto b = taken.begin() + o.pos;
            if (std::any_of(b, b + len, [](uint8_t v) { return v != 0; })) continue;
            std::fill(b, b + len, 1);
            chosen.push_back({o.token, o.pos, len});
        }
    }
    std::sort(chosen.begin(), chosen.end(), [](const fragment & a, const fragment & b) { return a.start < b.start; });
    std::vector<fragment> out;
    size_t                at = 0;
    for (const fragment & c : chosen) {
        if (c.start > at) out.push_back({-1, at, c.start - at});
        out.push_back(c);
        at = c.start + c.len;
    }
    if (at < text.size()) out.push_back({-1, at, text.size() - at});
    return out;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// "<0xAB>" -> 0xAB, or -1.
int parse_byte_token(const std::string & s) {
    if (s.size() != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    const int hi = hex_digit(s[3]);
    const int lo = hex_digit(s[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

void replace_all(std::string & s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    size_t at = 0;
    for (size_t p; (p = s.find(from, at)) != std::string::npos; at = p + from.size()) {
        out.append(s, at, p - at);
        out.append(to);
    }
    out.append(s, at, std::string::npos);
    s.swap(out);
}

} // namespace

uint64_t token_index::hash(std::string_view s) {
    // 8 bytes per step, multiply-rotate mixing (in the manner of xxHash's rounds), then an avalanche.
    constexpr uint64_t p1 = 0x9E3779B185EBCA87ull;
    constexpr uint64_t p2 = 0xC2B2AE3D27D4EB4Full;
    uint64_t           h  = 0x27D4EB2F165667C5ull ^ (uint64_t(s.size()) * p1);
    size_t             i  = 0;
    for (; i + 8 <= s.size(); i += 8) {
        uint64_t k;
        std::memcpy(&k, s.data() + i, 8);
        h = std::rotl(h ^ (k * p2), 31) * p1;
    }
    if (i < s.size()) {
        uint64_t k = 0;
        std::memcpy(&k, s.data() + i, s.size() - i);
        h = std::rotl(h ^ (k * p2), 31) * p1;
    }
    h ^= h >> 33;
    h *= p2;
    h ^= h >> 29;
    return h;
}

void token_index::build(const std::vector<std::string> & texts) {
    texts_     = &texts;
    size_t cap = 16;
    while (cap < texts.size() * 2) cap *= 2;
    slots_.assign(cap, slot{});
    mask_    = cap - 1;
    max_len_ = 0;
    for (size_t id = 0; id < texts.size(); ++id) {
        const std::string & s = texts[id];
        max_len_              = std::max(max_len_, s.size());
        const uint64_t h      = hash(s);
        const auto     tag    = uint32_t(h >> 32);
        for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
            slot & e = slots_[i];
            if (e.id < 0 || (e.tag == tag && texts[e.id] == s)) {
                e = {tag, int32_t(id)};
                break;
            }
        }
    }
}

result<tokenizer> tokenizer::from_vocab(tokenizer_vocab v) {
    auto m = std::make_shared<impl>();
    if (v.model == "gpt2") {
        m->type = tokenizer_type::BPE;
    } else if (v.model == "llama") {
        m->type = tokenizer_type::SPM;
    } else {
        return error(status_code::UNSUPPORTED,
                     "tokenizer: model '%s' (tokenizer.ggml.model) is not supported; this build supports 'gpt2' "
                     "(byte-level BPE) and 'llama' (SentencePiece BPE)",
                     v.model.c_str());
    }
    const size_t n = v.tokens.size();
    if (n == 0) return error(status_code::INVALID_FILE, "tokenizer: the vocabulary (tokenizer.ggml.tokens) is empty");
    if (n > size_t(INT32_MAX)) return error(status_code::INVALID_FILE, "tokenizer: %zu tokens is too many", n);
    if (!v.scores.empty() && v.scores.size() != n) {
        return error(status_code::INVALID_FILE, "tokenizer: %zu scores for %zu tokens (tokenizer.ggml.scores)",
                     v.scores.size(), n);
    }
    if (!v.token_types.empty() && v.token_types.size() != n) {
        return error(status_code::INVALID_FILE, "tokenizer: %zu token types for %zu tokens (tokenizer.ggml.token_type)",
                     v.token_types.size(), n);
    }
    if (m->type == tokenizer_type::SPM && v.scores.empty()) {
        return error(status_code::INVALID_FILE, "tokenizer: SentencePiece vocabulary without tokenizer.ggml.scores");
    }

    m->text  = std::move(v.tokens);
    m->score = v.scores.empty() ? std::vector<float>(n, 0.0f) : std::move(v.scores);
    m->attr.assign(n, token_attr::NORMAL);
    for (size_t i = 0; i < v.token_types.size(); ++i) {
        const int32_t t = v.token_types[i];
        if (t == 0) continue; // "undefined" in some converters: treat as normal
        if (t < 1 || t > 6) {
            return error(status_code::INVALID_FILE, "tokenizer: token %zu ('%s') has type %d; expected 1..6", i,
                         m->text[i].c_str(), t);
        }
        m->attr[i] = token_attr(t - 1);
    }
    m->index.build(m->text);

    if (m->type == tokenizer_type::BPE) {
        auto pre = pretok_from_name(v.pre);
        if (!pre) return pre.get_status();
        m->pre = *pre;
    }

    // Special ids: SentencePiece files default to <unk>=0, <s>=1, </s>=2.
    const bool spm        = m->type == tokenizer_type::SPM;
    auto       special_id = [&](int32_t id, int32_t def, const char * key, int32_t & out) -> status {
        if (id < 0) id = (def >= 0 && size_t(def) < n) ? def : -1;
        if (id >= 0 && size_t(id) >= n) {
            return error(status_code::INVALID_FILE, "tokenizer: %s = %d is outside the vocabulary of %zu tokens", key,
                               id, n);
        }
        out = id;
        return status::ok();
    };
    LC_RETURN_IF_ERROR(special_id(v.bos_id, spm ? 1 : -1, "tokenizer.ggml.bos_token_id", m->bos));
    LC_RETURN_IF_ERROR(special_id(v.eos_id, spm ? 2 : -1, "tokenizer.ggml.eos_token_id", m->eos));
    LC_RETURN_IF_ERROR(special_id(v.unk_id, spm ? 0 : -1, "tokenizer.ggml.unknown_token_id", m->unk));
    LC_RETURN_IF_ERROR(special_id(v.eot_id, -1, "tokenizer.ggml.eot_token_id", m->eot));
    LC_RETURN_IF_ERROR(special_id(v.eom_id, -1, "tokenizer.ggml.eom_token_id", m->eom));
    LC_RETURN_IF_ERROR(special_id(v.pad_id, -1, "tokenizer.ggml.padding_token_id", m->pad));

    m->add_bos          = v.add_bos >= 0 ? v.add_bos != 0 : (spm || m->pre.add_bos);
    m->add_eos          = v.add_eos >= 0 ? v.add_eos != 0 : false;
    m->add_space_prefix = v.add_space_prefix >= 0 ? v.add_space_prefix != 0 : spm;
    if (m->add_bos && m->bos < 0) {
        return error(status_code::INVALID_FILE, "tokenizer: add_bos_token is set but the file has no bos_token_id");
    }
    if (m->add_eos && m->eos < 0) {
        return error(status_code::INVALID_FILE, "tokenizer: add_eos_token is set but the file has no eos_token_id");
    }

    // End of generation. Tokens recognised by text are made CONTROL so that plain text never produces them
    // (some converters mark them NORMAL).
    m->eog.assign(n, 0);
    for (int32_t id : {m->eos, m->eot, m->eom}) {
        if (id >= 0) m->eog[id] = 1;
    }
    for (const char * t : k_eog_texts) {
        const int32_t id = m->find(t);
        if (id < 0) continue;
        m->eog[id] = 1;
        if (m->attr[id] == token_attr::NORMAL) m->attr[id] = token_attr::CONTROL;
    }

    build_trie(*m);

    if (m->type == tokenizer_type::BPE) {
        LC_RETURN_IF_ERROR(bpe_build(*m, v.merges));
    } else {
        char buf[8];
        for (int b = 0; b < 256; ++b) {
            std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
            m->spm_byte_token[b] = m->find(buf);
        }
    }
    m->chat_template = std::move(v.chat_template);

    tokenizer tok;
    tok.impl_ = std::move(m);
    return tok;
}

result<tokenizer> tokenizer::from_gguf(const gguf_file & f) {
    tokenizer_vocab v;
    LC_ASSIGN_OR_RETURN(v.model, f.get_str("tokenizer.ggml.model"));
    LC_ASSIGN_OR_RETURN(v.pre, f.get_str_or("tokenizer.ggml.pre", ""));
    {
        LC_ASSIGN_OR_RETURN(auto tokens, f.get_arr_str("tokenizer.ggml.tokens"));
        v.tokens.assign(tokens.begin(), tokens.end());
    }
    if (f.find("tokenizer.ggml.scores")) {
        LC_ASSIGN_OR_RETURN(v.scores, f.get_arr_f32("tokenizer.ggml.scores"));
    }
    if (f.find("tokenizer.ggml.token_type")) {
        LC_ASSIGN_OR_RETURN(v.token_types, f.get_arr_i32("tokenizer.ggml.token_type"));
    }
    if (v.model == "gpt2") {
        LC_ASSIGN_OR_RETURN(auto merges, f.get_arr_str("tokenizer.ggml.merges"));
        v.merges.assign(merges.begin(), merges.end());
    }
    struct id_key {
        const char * key;
        int32_t *    out;
    };
    for (const id_key & k :
         {id_key{"tokenizer.ggml.bos_token_id", &v.bos_id}, id_key{"tokenizer.ggml.eos_token_id", &v.eos_id},
          id_key{"tokenizer.ggml.unknown_token_id", &v.unk_id}, id_key{"tokenizer.ggml.eot_token_id", &v.eot_id},
          id_key{"tokenizer.ggml.eom_token_id", &v.eom_id}, id_key{"tokenizer.ggml.padding_token_id", &v.pad_id}}) {
        if (!f.find(k.key)) continue;
        LC_ASSIGN_OR_RETURN(const uint32_t id, f.get_u32(k.key));
        *k.out = id > uint32_t(INT32_MAX) ? INT32_MAX : int32_t(id);
    }
    struct flag_key {
        const char * key;
        int *        out;
    };
    for (const flag_key & k :
         {flag_key{"tokenizer.ggml.add_bos_token", &v.add_bos}, flag_key{"tokenizer.ggml.add_eos_token", &v.add_eos},
          flag_key{"tokenizer.ggml.add_space_prefix", &v.add_space_prefix}}) {
        if (!f.find(k.key)) continue;
        LC_ASSIGN_OR_RETURN(const bool b, f.get_bool(k.key));
        *k.out = b ? 1 : 0;
    }
    LC_ASSIGN_OR_RETURN(v.chat_template, f.get_str_or("tokenizer.chat_template", ""));
    auto tok = from_vocab(std::move(v));
    if (!tok) {
        return error(tok.get_status().code(), "%s: %s", f.path().c_str(), tok.get_status().message().c_str());
    }
    return tok;
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    const impl &         m = *impl_;
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special && m.add_bos) out.push_back(m.bos);

    const std::vector<fragment> frags = partition(m, text, parse_special);
    if (m.type == tokenizer_type::BPE) {
        bpe_scratch scratch;
        for (const fragment & f : frags) {
            if (f.token >= 0) {
                out.push_back(f.token);
            } else {
                bpe_encode(m, text.substr(f.start, f.len), scratch, out);
            }
        }
    } else {
        // A space goes in front of the text and after every special token when add_space_prefix is set.
        bool prev_special = true;
        for (const fragment & f : frags) {
            if (f.token >= 0) {
                out.push_back(f.token);
                prev_special = true;
                continue;
            }
            std::string s = (m.add_space_prefix && prev_special) ? " " : "";
            s.append(text.substr(f.start, f.len));
            replace_all(s, " ", k_spm_space);
            spm_encode(m, s, out);
            prev_special = false;
        }
    }

    if (add_special && m.add_eos) out.push_back(m.eos);
    return out;
}

std::string tokenizer::token_to_piece(int32_t id, bool special) const {
    const impl & m = *impl_;
    if (id < 0 || id >= m.n_vocab()) return {};
    const std::string & t = m.text[id];
    switch (m.attr[id]) {
    case token_attr::CONTROL:
    case token_attr::UNKNOWN:
        return special ? t : std::string();
    case token_attr::UNUSED:
        return {};
    case token_attr::USER_DEFINED:
        return t;
    case token_attr::BYTE: {
        const int b = parse_byte_token(t);
        return b >= 0 ? std::string(1, char(b)) : t;
    }
    case token_attr::NORMAL:
        if (m.type == tokenizer_type::BPE) return bpe_token_bytes(m, t);
        {
            std::string s = t;
            replace_all(s, k_spm_space, " ");
            return s;
        }
    }
    return {};
}

std::string tokenizer::decode(const std::vector<int32_t> & ids, bool special) const {
    std::string out;
    bool        first = true;
    for (int32_t id : ids) {
        std::string piece = token_to_piece(id, special);
        if (piece.empty()) continue;
        if (first && impl_->type == tokenizer_type::SPM && impl_->add_space_prefix && piece[0] == ' ') {
            piece.erase(0, 1);
        }
        first = false;
        out += piece;
    }
    return out;
}

int32_t tokenizer::n_vocab() const {
    return impl_->n_vocab();
}
int32_t tokenizer::bos() const {
    return impl_->bos;
}
int32_t tokenizer::eos() const {
    return impl_->eos;
}
int32_t tokenizer::unk() const {
    return impl_->unk;
}
bool tokenizer::add_bos() const {
    return impl_->add_bos;
}
bool tokenizer::add_eos() const {
    return impl_->add_eos;
}
bool tokenizer::is_eog(int32_t id) const {
    return id >= 0 && id < impl_->n_vocab() && impl_->eog[id];
}
token_attr tokenizer::attr(int32_t id) const {
    return impl_->attr.at(size_t(id));
}
const std::string & tokenizer::token_text(int32_t id) const {
    return impl_->text.at(size_t(id));
}
int32_t tokenizer::token_id(std::string_view text) const {
    return impl_->find(text);
}
tokenizer_type tokenizer::type() const {
    return impl_->type;
}
const std::string & tokenizer::chat_template() const {
    return impl_->chat_template;
}

} // namespace lc
