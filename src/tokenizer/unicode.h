// Code point utilities for the tokenizers: UTF-8 decoding that never fails (bad bytes become U+FFFD),
// UTF-8 encoding, and Unicode category flags from our generated range table (unicode-data.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lc {

// Category flags; the values must match scripts/gen-unicode-data.py.
enum unicode_flag : uint8_t {
    UNICODE_LETTER     = 0x01, // \p{L}
    UNICODE_NUMBER     = 0x02, // \p{N}
    UNICODE_PUNCT      = 0x04, // \p{P}
    UNICODE_SYMBOL     = 0x08, // \p{S}
    UNICODE_MARK       = 0x10, // \p{M}
    UNICODE_SEPARATOR  = 0x20, // \p{Z}
    UNICODE_OTHER      = 0x40, // \p{C}, including unassigned code points
    UNICODE_WHITESPACE = 0x80, // White_Space property: what \s matches
};

struct unicode_range {
    uint32_t start; // first code point; the range ends before the next entry's start
    uint8_t  flags;
};

extern const unicode_range unicode_ranges[];
extern const int           n_unicode_ranges;
extern const char * const  unicode_data_version; // e.g. "14.0.0"

// Flags of a code point; code points past U+10FFFF get UNICODE_OTHER.
uint8_t unicode_flags(uint32_t cp);

inline bool unicode_is_letter(uint32_t cp) {
    return unicode_flags(cp) & UNICODE_LETTER;
}
inline bool unicode_is_number(uint32_t cp) {
    return unicode_flags(cp) & UNICODE_NUMBER;
}
inline bool unicode_is_whitespace(uint32_t cp) {
    return unicode_flags(cp) & UNICODE_WHITESPACE;
}

// Length in bytes of the UTF-8 sequence that starts with byte c, judged from c alone (1 for stray
// continuation bytes and invalid lead bytes).
inline size_t utf8_seq_len(uint8_t c) {
    if (c < 0xC0) return 1;
    if (c < 0xE0) return 2;
    if (c < 0xF0) return 3;
    if (c < 0xF8) return 4;
    return 1;
}

// Decodes the code point at s[0..n) (n >= 1) and sets *len to the bytes used. A lead byte whose
// continuation bytes are missing or malformed decodes to U+FFFD with *len = 1.
uint32_t utf8_decode(const char * s, size_t n, size_t * len);

// Whole string to code points, with the same replacement rule.
std::vector<uint32_t> utf8_to_cpts(std::string_view s);

void        utf8_append(std::string & out, uint32_t cp);
std::string utf8_from_cpt(uint32_t cp);

} // namespace lc
