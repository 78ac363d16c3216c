// Pre-tokenizer scanners and Unicode categories: expected splits worked out by hand from the regexes in
// src/tokenizer/pretokenize.h (leftmost-first alternation, greedy repetition, each pass per piece).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

using lc::pretok_type;
using words = std::vector<std::string>;

static words split(pretok_type t, const std::string & s) {
    return lc::pretokenize(t, s);
}

TEST(unicode, categories) {
    EXPECT_TRUE(lc::unicode_flags('A') & lc::UNICODE_LETTER);
    EXPECT_TRUE(lc::unicode_flags('5') & lc::UNICODE_NUMBER);
    EXPECT_TRUE(lc::unicode_flags(',') & lc::UNICODE_PUNCT);
    EXPECT_TRUE(lc::unicode_flags('$') & lc::UNICODE_SYMBOL);
    EXPECT_EQ(lc::unicode_flags(' '), lc::UNICODE_SEPARATOR | lc::UNICODE_WHITESPACE);
    EXPECT_EQ(lc::unicode_flags('\n'), lc::UNICODE_OTHER | lc::UNICODE_WHITESPACE);
    EXPECT_TRUE(lc::unicode_is_whitespace(0x00A0));  // no-break space
    EXPECT_TRUE(lc::unicode_is_whitespace(0x3000));  // ideographic space
    EXPECT_TRUE(lc::unicode_is_whitespace(0x0085));  // next line
    EXPECT_FALSE(lc::unicode_is_whitespace(0x001C)); // Python's isspace() says yes; White_Space says no
    EXPECT_FALSE(lc::unicode_is_whitespace(0x200B)); // zero-width space is a format character
    EXPECT_TRUE(lc::unicode_is_number(0x0661));      // ARABIC-INDIC DIGIT ONE
    EXPECT_TRUE(lc::unicode_is_number(0x2163));      // ROMAN NUMERAL FOUR (Nl)
    EXPECT_TRUE(lc::unicode_is_number(0x00B2));      // SUPERSCRIPT TWO (No)
    EXPECT_TRUE(lc::unicode_is_letter(0x4E2D));      // CJK
    EXPECT_TRUE(lc::unicode_is_letter(0x1D400));     // MATHEMATICAL BOLD CAPITAL A (outside the BMP)
    EXPECT_TRUE(lc::unicode_flags(0x0301) & lc::UNICODE_MARK);
    EXPECT_TRUE(lc::unicode_flags(0x1F600) & lc::UNICODE_SYMBOL); // emoji
    EXPECT_EQ(lc::unicode_flags(0x10FFFF), lc::UNICODE_OTHER);
    EXPECT_EQ(lc::unicode_flags(0x110000), lc::UNICODE_OTHER);
}

TEST(unicode, utf8) {
    EXPECT_EQ(lc::utf8_to_cpts("a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80"),
              (std::vector<uint32_t>{'a', 0xE9, 0x4E2D, 0x1F600}));
    // a stray continuation byte, a lead byte without its continuation, a truncated sequence at the end
    EXPECT_EQ(lc::utf8_to_cpts("\x80x\xC3y\xE4\xB8"),
              (std::vector<uint32_t>{0xFFFD, 'x', 0xFFFD, 'y', 0xFFFD, 0xFFFD}));
    EXPECT_EQ(lc::utf8_from_cpt(0x1F600), "\xF0\x9F\x98\x80");
    EXPECT_EQ(lc::utf8_from_cpt(0x2581), "\xE2\x96\x81");
}

TEST(pretokenize, gpt2) {
    EXPECT_EQ(split(pretok_type::GPT2, "Hello world's 12345 test"),
              (words{"Hello", " world", "'s", " 12345", " test"}));
    EXPECT_EQ(split(pretok_type::GPT2, "a  b"), (words{"a", " ", " b"})); // \s+(?!\S) leaves the last space
    EXPECT_EQ(split(pretok_type::GPT2, "a \n"), (words{"a", " \n"}));
    EXPECT_EQ(split(pretok_type::GPT2, "x\ny"), (words{"x", "\n", "y"})); // single space before a word: \s+
    EXPECT_EQ(split(pretok_type::GPT2, "  "), (words{"  "}));
    EXPECT_EQ(split(pretok_type::GPT2, "I'M"), (words{"I", "'", "M"})); // contractions are case-sensitive
    EXPECT_EQ(split(pretok_type::GPT2, "we'll they're"), (words{"we", "'ll", " they", "'re"}));
    EXPECT_EQ(split(pretok_type::GPT2, "x = a... (1+2)"), (words{"x", " =", " a", "...", " (", "1", "+", "2", ")"}));
    EXPECT_EQ(split(pretok_type::GPT2, "a\xE3\x80\x80"
                                       "b"),
              (words{"a", "\xE3\x80\x80", "b"})); // U+3000 is \s, not ' '
    EXPECT_EQ(split(pretok_type::GPT2, ""), (words{}));
}

TEST(pretokenize, smollm_splits_digits_first) {
    EXPECT_EQ(split(pretok_type::SMOLLM, "Hello world's 12345 test"),
              (words{"Hello", " world", "'s", " ", "1", "2", "3", "4", "5", " test"}));
    // the digit pass cuts "  42" into "  " | "4" | "2": the spaces are a piece of their own
    EXPECT_EQ(split(pretok_type::SMOLLM, "it's  42\n\nok"), (words{"it", "'s", "  ", "4", "2", "\n", "\n", "ok"}));
    EXPECT_EQ(split(pretok_type::SMOLLM, "d\xC3\xA9j\xC3\xA0 vu \xD9\xA1\xD9\xA2"),
              (words{"d\xC3\xA9j\xC3\xA0", " vu", " ", "\xD9\xA1", "\xD9\xA2"})); // "déjà vu ١٢"
}

TEST(pretokenize, llama3_and_qwen2) {
    EXPECT_EQ(split(pretok_type::LLAMA3, "I'M"), (words{"I", "'M"})); // case-insensitive contractions
    EXPECT_EQ(split(pretok_type::LLAMA3, "1234567"), (words{"123", "456", "7"}));
    EXPECT_EQ(split(pretok_type::QWEN2, "1234567"), (words{"1", "2", "3", "4", "5", "6", "7"}));
    EXPECT_EQ(split(pretok_type::LLAMA3, "Hello, world!\n\nok"), (words{"Hello", ",", " world", "!\n\n", "ok"}));
    EXPECT_EQ(split(pretok_type::LLAMA3, " \n  x"), (words{" \n", " ", " x"})); // \s*[\r\n]+ then \s+(?!\S)
    EXPECT_EQ(split(pretok_type::LLAMA3, "(hello"), (words{"(hello"}));         // one non-letter may lead a word
}

TEST(pretokenize, default_passes) {
    EXPECT_EQ(split(pretok_type::DEFAULT, "a+b=12345"), (words{"a", "+", "b", "=", "123", "45"}));
    EXPECT_EQ(split(pretok_type::DEFAULT, "x = a... (12+3)"),
              (words{"x", " ", "=", " a", "...", " ", "(", "12", "+", "3", ")"}));
}

TEST(pretokenize, invalid_utf8_becomes_replacement_char) {
    // U+FFFD is a symbol, so it is a word of its own between two letters
    EXPECT_EQ(split(pretok_type::GPT2, "a\xFF"
                                       "b"),
              (words{"a", "\xEF\xBF\xBD", "b"}));
}

TEST(pretokenize, names) {
    auto smollm = lc::pretok_from_name("smollm");
    ASSERT_TRUE(smollm.is_ok());
    EXPECT_EQ(smollm->type, pretok_type::SMOLLM);
    auto llama3 = lc::pretok_from_name("llama-bpe");
    ASSERT_TRUE(llama3.is_ok());
    EXPECT_EQ(llama3->type, pretok_type::LLAMA3);
    EXPECT_TRUE(llama3->ignore_merges);
    auto def = lc::pretok_from_name("");
    ASSERT_TRUE(def.is_ok());
    EXPECT_EQ(def->type, pretok_type::DEFAULT);
    auto bad = lc::pretok_from_name("tekken");
    ASSERT_FALSE(bad.is_ok());
    EXPECT_EQ(bad.get_status().code(), lc::status_code::UNSUPPORTED);
    EXPECT_NE(bad.get_status().message().find("'tekken'"), std::string::npos);
}
