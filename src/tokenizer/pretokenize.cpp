// Hand-written scanners for the pre-tokenizer regexes in pretokenize.h. Every scanner works inside one
// piece [b, e) of the previous pass: look-ahead stops at the piece end, as if the piece were the whole
// text. At each position the alternatives are tried in the regex's order and the first that matches
// wins (leftmost-first, as in PCRE and the Rust regex crate), with greedy repetition.
#include "tokenizer/pretokenize.h"

#include <cstdint>

#include "tokenizer/unicode.h"

namespace lc {

namespace {

struct scan_text {
    const uint32_t * cp;
    const uint8_t *  fl;
};

// Collects the end offsets of the pieces of one pass, skipping empty pieces.
struct piece_sink {
    std::vector<size_t> & ends;
    void                  emit(size_t end) {
                         if (end > (ends.empty() ? 0 : ends.back())) ends.push_back(end);
    }
};

using pass_fn = void (*)(const scan_text & t, size_t b, size_t e, piece_sink & out);

inline bool is_nl(uint32_t c) {
    return c == '\r' || c == '\n';
}

inline uint32_t ascii_lower(uint32_t c) {
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

// Length (2 or 3) of the contraction 's 't 're 've 'm 'll 'd at i, or 0.
size_t contraction_len(const scan_text & t, size_t i, size_t e, bool ignore_case) {
    if (t.cp[i] != '\'' || i + 1 >= e) return 0;
    const uint32_t c1 = ignore_case ? ascii_lower(t.cp[i + 1]) : t.cp[i + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (i + 2 >= e) return 0;
    const uint32_t c2 = ignore_case ? ascii_lower(t.cp[i + 2]) : t.cp[i + 2];
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void pass_gpt2(const scan_text & t, size_t b, size_t e, piece_sink & out) {
    auto has   = [&](size_t k, uint8_t f) { return k < e && (t.fl[k] & f); };
    auto other = [&](size_t k) { return k < e && !(t.fl[k] & (UNICODE_WHITESPACE | UNICODE_LETTER | UNICODE_NUMBER)); };
    size_t i   = b;
    while (i < e) {
        if (size_t n = contraction_len(t, i, e, false)) {
            out.emit(i += n);
            continue;
        }
        size_t j = i + (t.cp[i] == ' ' ? 1 : 0);
        if (has(j, UNICODE_LETTER) || has(j, UNICODE_NUMBER)) {
            const uint8_t f = t.fl[j] & UNICODE_LETTER ? UNICODE_LETTER : UNICODE_NUMBER;
            while (has(j, f)) ++j;
            out.emit(i = j);
            continue;
        }
        if (other(j)) {
            while (other(j)) ++j;
            out.emit(i = j);
            continue;
        }
        // t.cp[i] is whitespace here
        size_t k = i;
        while (has(k, UNICODE_WHITESPACE)) ++k;
        if (k < e && k - i > 1) --k; // \s+(?!\S): leave the last space to the word that follows
        out.emit(i = (k > i ? k : i + 1));
    }
    out.emit(e);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,MAX}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|
// \s+(?!\S)|\s+
template <int MAX_DIGITS> void pass_llama3(const scan_text & t, size_t b, size_t e, piece_sink & out) {
    auto has   = [&](size_t k, uint8_t f) { return k < e && (t.fl[k] & f); };
    auto other = [&](size_t k) { return k < e && !(t.fl[k] & (UNICODE_WHITESPACE | UNICODE_LETTER | UNICODE_NUMBER)); };
    size_t i   = b;
    while (i < e) {
        const uint32_t c = t.cp[i];
        if (size_t n = contraction_len(t, i, e, true)) {
            out.emit(i += n);
            continue;
        }
        if (has(i, UNICODE_LETTER) || (!is_nl(c) && !has(i, UNICODE_NUMBER) && has(i + 1, UNICODE_LETTER))) {
            size_t j = i + 1;
            while (has(j, UNICODE_LETTER)) ++j;
            out.emit(i = j);
            continue;
        }
        if (has(i, UNICODE_NUMBER)) {
            size_t j = i + 1;
            while (j < i + MAX_DIGITS && has(j, UNICODE_NUMBER)) ++j;
            out.emit(i = j);
            continue;
        }
        size_t j = i + (c == ' ' ? 1 : 0);
        if (other(j)) {
            while (other(j)) ++j;
            while (j < e && is_nl(t.cp[j])) ++j;
            out.emit(i = j);
            continue;
        }
        // whitespace run [i, k)
        size_t k       = i;
        size_t last_nl = SIZE_MAX;
        while (has(k, UNICODE_WHITESPACE)) {
            if (is_nl(t.cp[k])) last_nl = k;
            ++k;
        }
        if (last_nl != SIZE_MAX) { // \s*[\r\n]+
            out.emit(i = last_nl + 1);
            continue;
        }
        if (k < e && k - i > 1) --k;
        out.emit(i = (k > i ? k : i + 1));
    }
    out.emit(e);
}

// Regex split with a character class: runs of matching code points (or single ones when !RUNS) are pieces,
// and so is the text between them.
template <bool (*MATCH)(const scan_text &, size_t), bool RUNS>
void pass_class(const scan_text & t, size_t b, size_t e, piece_sink & out) {
    size_t i = b;
    while (i < e) {
        if (!MATCH(t, i)) {
            ++i;
            continue;
        }
        out.emit(i); // the gap before the match
        ++i;
        if (RUNS) {
            while (i < e && MATCH(t, i)) ++i;
        }
        out.emit(i);
    }
    out.emit(e);
}

bool match_number(const scan_text & t, size_t i) {
    return t.fl[i] & UNICODE_NUMBER;
}

// [\p{P}\$\+<=>\^~\|]
bool match_punct(const scan_text & t, size_t i) {
    const uint32_t c = t.cp[i];
    return (t.fl[i] & UNICODE_PUNCT) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' ||
           c == '~' || c == '|';
}

inline bool is_ascii_digit(uint32_t c) {
    return c >= '0' && c <= '9';
}

// [0-9][0-9][0-9]
void pass_digits3(const scan_text & t, size_t b, size_t e, piece_sink & out) {
    size_t i = b;
    while (i + 3 <= e) {
        if (is_ascii_digit(t.cp[i]) && is_ascii_digit(t.cp[i + 1]) && is_ascii_digit(t.cp[i + 2])) {
            out.emit(i);
            out.emit(i += 3);
        } else {
            ++i;
        }
    }
    out.emit(e);
}

struct pass_list {
    const pass_fn * passes;
    int             n;
};

pass_list passes_of(pretok_type type) {
    static const pass_fn k_default[] = {pass_class<match_punct, true>, pass_gpt2, pass_class<match_number, true>,
                                        pass_digits3};
    static const pass_fn k_gpt2[]    = {pass_gpt2};
    static const pass_fn k_smollm[]  = {pass_class<match_number, false>, pass_gpt2};
    static const pass_fn k_llama3[]  = {pass_llama3<3>};
    static const pass_fn k_qwen2[]   = {pass_llama3<1>};
    switch (type) {
    case pretok_type::DEFAULT:
        return {k_default, 4};
    case pretok_type::GPT2:
        return {k_gpt2, 1};
    case pretok_type::SMOLLM:
        return {k_smollm, 2};
    case pretok_type::LLAMA3:
        return {k_llama3, 1};
    case pretok_type::QWEN2:
        return {k_qwen2, 1};
    }
    return {k_gpt2, 1};
}

struct pretok_name_entry {
    const char * name;
    pretok_type  type;
    bool         ignore_merges;
    bool         add_bos;
};

// tokenizer.ggml.pre values as written by the usual GGUF converters, grouped by the regexes they use.
const pretok_name_entry k_pretok_names[] = {
    {"default", pretok_type::DEFAULT, false, false}, {"gpt2", pretok_type::GPT2, false, false},
    {"gpt-2", pretok_type::GPT2, false, false},      {"phi-2", pretok_type::GPT2, false, false},
    {"smollm", pretok_type::SMOLLM, false, false},   {"starcoder", pretok_type::SMOLLM, false, false},
    {"refact", pretok_type::SMOLLM, false, false},   {"codeshell", pretok_type::SMOLLM, false, false},
    {"llama3", pretok_type::LLAMA3, true, true},     {"llama-v3", pretok_type::LLAMA3, true, true},
    {"llama-bpe", pretok_type::LLAMA3, true, true},  {"falcon3", pretok_type::LLAMA3, true, true},
    {"dbrx", pretok_type::LLAMA3, false, false},     {"smaug-bpe", pretok_type::LLAMA3, false, false},
    {"qwen2", pretok_type::QWEN2, false, false},     {"deepseek-r1-qwen", pretok_type::QWEN2, false, false},
};

} // namespace

result<pretok_info> pretok_from_name(std::string_view name) {
    if (name.empty()) name = "default";
    for (const auto & entry : k_pretok_names) {
        if (name == entry.name) return pretok_info{entry.type, entry.ignore_merges, entry.add_bos};
    }
    std::string known;
    for (const auto & entry : k_pretok_names) {
        if (!known.empty()) known += ", ";
        known += entry.name;
    }
    return error(status_code::UNSUPPORTED,
                 "tokenizer: pre-tokenizer '%.*s' (tokenizer.ggml.pre) is not supported; known: %s", int(name.size()),
                 name.data(), known.c_str());
}

const char * pretok_type_name(pretok_type t) {
    switch (t) {
    case pretok_type::DEFAULT:
        return "default";
    case pretok_type::GPT2:
        return "gpt2";
    case pretok_type::SMOLLM:
        return "smollm";
    case pretok_type::LLAMA3:
        return "llama3";
    case pretok_type::QWEN2:
        return "qwen2";
    }
    return "?";
}

std::vector<std::string> pretokenize(pretok_type type, std::string_view text) {
    std::vector<uint32_t> cps;
    std::vector<size_t>   byte_off; // byte offset of each code point in the output text
    cps.reserve(text.size());
    byte_off.reserve(text.size() + 1);
    bool valid = true;
    for (size_t i = 0; i < text.size();) {
        size_t         len = 1;
        const uint32_t c   = utf8_decode(text.data() + i, text.size() - i, &len);
        valid              = valid && !(c == 0xFFFD && len == 1);
        cps.push_back(c);
        i += len;
    }
    std::string norm;
    if (!valid) {
        norm.reserve(text.size() + 16);
        for (uint32_t c : cps) utf8_append(norm, c);
        text = norm;
    }
    size_t off = 0;
    for (uint32_t c : cps) {
        byte_off.push_back(off);
        off += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    }
    byte_off.push_back(off);

    std::vector<uint8_t> fl(cps.size());
    for (size_t i = 0; i < cps.size(); ++i) fl[i] = unicode_flags(cps[i]);
    const scan_text t{cps.data(), fl.data()};

    std::vector<size_t> ends{cps.size()};
    std::vector<size_t> next;
    const pass_list     pl = passes_of(type);
    for (int ip = 0; ip < pl.n; ++ip) {
        next.clear();
        piece_sink sink{next};
        size_t     b = 0;
        for (size_t e : ends) {
            if (e > b) pl.passes[ip](t, b, e, sink);
            b = e;
        }
        ends.swap(next);
    }

    std::vector<std::string> words;
    words.reserve(ends.size());
    size_t b = 0;
    for (size_t e : ends) {
        if (e > b) words.emplace_back(text.substr(byte_off[b], byte_off[e] - byte_off[b]));
        b = e;
    }
    return words;
}

} // namespace lc
