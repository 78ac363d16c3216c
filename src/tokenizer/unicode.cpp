// UTF-8 decoding/encoding and category lookup over the generated range table. Code points below
// U+10000 are looked up in a flat table built once from the ranges; the rest by binary search.
#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <memory>

namespace lc {

namespace {

uint8_t flags_search(uint32_t cp) {
    // last range whose start <= cp
    const unicode_range * begin = unicode_ranges;
    const unicode_range * end   = unicode_ranges + n_unicode_ranges;
    const unicode_range * it =
        std::upper_bound(begin, end, cp, [](uint32_t v, const unicode_range & r) { return v < r.start; });
    return it == begin ? uint8_t(UNICODE_OTHER) : (it - 1)->flags;
}

const uint8_t * bmp_table() {
    static const std::unique_ptr<uint8_t[]> table = [] {
        std::unique_ptr<uint8_t[]> t(new uint8_t[0x10000]);
        for (int i = 0; i < n_unicode_ranges; ++i) {
            const uint32_t b = unicode_ranges[i].start;
            if (b >= 0x10000) break;
            const uint32_t e =
                i + 1 < n_unicode_ranges ? std::min<uint32_t>(unicode_ranges[i + 1].start, 0x10000) : 0x10000;
            std::fill(t.get() + b, t.get() + e, unicode_ranges[i].flags);
        }
        return t;
    }();
    return table.get();
}

} // namespace

uint8_t unicode_flags(uint32_t cp) {
    if (cp < 0x10000) return bmp_table()[cp];
    if (cp > 0x10FFFF) return UNICODE_OTHER;
    return flags_search(cp);
}

uint32_t utf8_decode(const char * s, size_t n, size_t * len) {
    const auto   b0   = uint8_t(s[0]);
    const size_t need = utf8_seq_len(b0);
    if (b0 < 0x80) {
        *len = 1;
        return b0;
    }
    if (need == 1 || need > n) {
        *len = 1;
        return 0xFFFD;
    }
    for (size_t i = 1; i < need; ++i) {
        if ((uint8_t(s[i]) & 0xC0) != 0x80) {
            *len = 1;
            return 0xFFFD;
        }
    }
    *len = need;
    switch (need) {
    case 2:
        return (uint32_t(b0 & 0x1F) << 6) | (uint8_t(s[1]) & 0x3F);
    case 3:
        return (uint32_t(b0 & 0x0F) << 12) | (uint32_t(uint8_t(s[1]) & 0x3F) << 6) | (uint8_t(s[2]) & 0x3F);
    default:
        return (uint32_t(b0 & 0x07) << 18) | (uint32_t(uint8_t(s[1]) & 0x3F) << 12) |
               (uint32_t(uint8_t(s[2]) & 0x3F) << 6) | (uint8_t(s[3]) & 0x3F);
    }
}

std::vector<uint32_t> utf8_to_cpts(std::string_view s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        size_t len = 1;
        out.push_back(utf8_decode(s.data() + i, s.size() - i, &len));
        i += len;
    }
    return out;
}

void utf8_append(std::string & out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back(char(cp));
    } else if (cp < 0x800) {
        out.push_back(char(0xC0 | (cp >> 6)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(char(0xE0 | (cp >> 12)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (cp >> 18)));
        out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    }
}

std::string utf8_from_cpt(uint32_t cp) {
    std::string s;
    utf8_append(s, cp);
    return s;
}

} // namespace lc
