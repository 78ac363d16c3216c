// Tokenizer on tiny vocab-only GGUF files written with gguf_writer: byte-level BPE merges, SentencePiece
// merges by score with byte fallback, special tokens, BOS/EOS, decoding, and load errors. Every expected id
// is worked out by hand from the vocabulary built here.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer-test-util.h"
#include "tokenizer/tokenizer.h"

using ids = std::vector<int32_t>;

namespace {

// GPT-2's byte-to-character table, written out independently of the library: printable Latin-1 bytes stand
// for themselves, the other 68 bytes become U+0100.. in byte order (space -> U+0120 'Ġ', '\n' -> U+010A).
std::string gpt2_char(int b) {
    auto printable = [](int c) {
        return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    };
    int cp = b;
    if (!printable(b)) {
        cp = 0x100;
        for (int c = 0; c < b; ++c) cp += printable(c) ? 0 : 1;
    }
    std::string s;
    if (cp < 0x80) {
        s.push_back(char(cp));
    } else {
        s.push_back(char(0xC0 | (cp >> 6)));
        s.push_back(char(0x80 | (cp & 0x3F)));
    }
    return s;
}

// Byte-level BPE vocabulary:
//   0 <|endoftext|> (control)   1 <|im_start|> (control)   2 <|im_end|> (control)   3 <tool> (user-defined)
//   4 + b: the character of byte b (so 'a' = 101, ' ' = 'Ġ' = 36, '1' = 53)
//   260.. merge results below, 273 "bcd", 274 "ab", 275 "<|im" (control)
const char * const k_bpe_merges[] = {
    "h e",     // 0 -> 260 he
    "l l",     // 1 -> 261 ll
    "he ll",   // 2 -> 262 hell
    "hell o",  // 3 -> 263 hello
    "Ġ w",     // 4 -> 264 Ġw
    "o r",     // 5 -> 265 or
    "Ġw or",   // 6 -> 266 Ġwor
    "l d",     // 7 -> 267 ld
    "Ġwor ld", // 8 -> 268 Ġworld
    "1 2",     // 9 -> 269 12
    "' s",     // 10 -> 270 's
    "a a",     // 11 -> 271 aa
    "Ġ Ġ",     // 12 -> 272 ĠĠ
};

lc::gguf_writer bpe_writer(const std::string & pre) {
    std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"};
    std::vector<int32_t>     types  = {3, 3, 3, 4};
    for (int b = 0; b < 256; ++b) {
        tokens.push_back(gpt2_char(b));
        types.push_back(1);
    }
    std::vector<std::string> merges;
    for (const char * m : k_bpe_merges) {
        std::string line(m);
        merges.push_back(line);
        tokens.push_back(line.erase(line.find(' '), 1));
        types.push_back(1);
    }
    for (const char * s : {"bcd", "ab", "<|im"}) {
        tokens.push_back(s);
        types.push_back(3);
    }
    lc::gguf_writer w;
    w.set_str("general.architecture", "llama");
    w.set_str("tokenizer.ggml.model", "gpt2");
    if (!pre.empty()) w.set_str("tokenizer.ggml.pre", pre);
    w.set_arr_str("tokenizer.ggml.tokens", tokens);
    w.set_arr_i32("tokenizer.ggml.token_type", types);
    w.set_arr_str("tokenizer.ggml.merges", merges);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    return w;
}

lc::tokenizer bpe_tokenizer(const std::string & pre = "smollm") {
    auto tok = lc::test::tokenizer_from_writer(bpe_writer(pre));
    EXPECT_TRUE(tok.is_ok()) << tok.get_status().message();
    return std::move(tok).value();
}

// SentencePiece vocabulary:
//   0 <unk> (unknown)   1 <s> (control)   2 </s> (control)   3 + b: <0xbb> byte tokens
//   259 ▁  260 a  261 b  262 c (score -10)   263 ab (-1)   264 bc (-0.5)   265 abc (-3)   266 ▁a (-2)
//   267 <ctl> (control)   268 <ud> (user-defined)   269 aa (-4)   270 xy (control)   271 x  272 y (-10)
lc::gguf_writer spm_writer() {
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<float>       scores = {0, 0, 0};
    std::vector<int32_t>     types  = {2, 3, 3};
    char                     buf[8];
    for (int b = 0; b < 256; ++b) {
        std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
        tokens.push_back(buf);
        scores.push_back(0);
        types.push_back(6);
    }
    struct piece {
        const char * text;
        float        score;
        int32_t      type;
    };
    for (const piece & p : {piece{"\xE2\x96\x81", -10, 1}, piece{"a", -10, 1}, piece{"b", -10, 1}, piece{"c", -10, 1},
                            piece{"ab", -1, 1}, piece{"bc", -0.5f, 1}, piece{"abc", -3, 1},
                            piece{"\xE2\x96\x81"
                                  "a",
                                  -2, 1},
                            piece{"<ctl>", 0, 3}, piece{"<ud>", 0, 4}, piece{"aa", -4, 1}, piece{"xy", 0, 3},
                            piece{"x", -10, 1}, piece{"y", -10, 1}}) {
        tokens.push_back(p.text);
        scores.push_back(p.score);
        types.push_back(p.type);
    }
    lc::gguf_writer w;
    w.set_str("general.architecture", "gemma3");
    w.set_str("tokenizer.ggml.model", "llama");
    w.set_arr_str("tokenizer.ggml.tokens", tokens);
    w.set_arr_f32("tokenizer.ggml.scores", scores);
    w.set_arr_i32("tokenizer.ggml.token_type", types);
    return w;
}

lc::tokenizer spm_tokenizer(bool space_prefix) {
    lc::gguf_writer w = spm_writer();
    w.set_bool("tokenizer.ggml.add_space_prefix", space_prefix);
    auto tok = lc::test::tokenizer_from_writer(w);
    EXPECT_TRUE(tok.is_ok()) << tok.get_status().message();
    return std::move(tok).value();
}

} // namespace

TEST(tokenizer_bpe, merges_by_rank) {
    const lc::tokenizer tok = bpe_tokenizer();
    EXPECT_EQ(tok.n_vocab(), 276);
    EXPECT_EQ(tok.type(), lc::tokenizer_type::BPE);
    // "hello": he (rank 0), ll (1), hell (2), hello (3); " world": Ġw, or, Ġwor, ld, Ġworld
    EXPECT_EQ(tok.encode("hello world", false, false), (ids{263, 268}));
    EXPECT_EQ(tok.encode("it's", false, false), (ids{109, 120, 270}));
    // equal ranks merge leftmost first
    EXPECT_EQ(tok.encode("aaa", false, false), (ids{271, 101}));
    EXPECT_EQ(tok.encode("aaaa", false, false), (ids{271, 271}));
    // "a", " ", " b": the lone spaces are words of their own
    EXPECT_EQ(tok.encode("a  b", false, false), (ids{101, 36, 36, 102}));
    EXPECT_EQ(tok.encode("  ", false, false), (ids{272}));
    EXPECT_EQ(tok.encode("", false, false), (ids{}));
    // a byte outside ASCII: é = C3 A9
    EXPECT_EQ(tok.encode("\xC3\xA9", false, false), (ids{4 + 0xC3, 4 + 0xA9}));
    // invalid UTF-8 becomes U+FFFD = EF BF BD before byte-level encoding
    EXPECT_EQ(tok.encode("\xFF", false, false), (ids{4 + 0xEF, 4 + 0xBF, 4 + 0xBD}));
}

TEST(tokenizer_bpe, pre_tokenizer_decides_digit_merges) {
    // smollm cuts digits apart before BPE, so the merge "1 2" never applies; gpt2 keeps "12" together
    EXPECT_EQ(bpe_tokenizer("smollm").encode("a12", false, false), (ids{101, 53, 54}));
    EXPECT_EQ(bpe_tokenizer("gpt2").encode("a12", false, false), (ids{101, 269}));
}

TEST(tokenizer_bpe, special_tokens) {
    const lc::tokenizer tok = bpe_tokenizer();
    EXPECT_EQ(tok.encode("<|im_start|>hello<|im_end|>", false, true), (ids{1, 263, 2}));
    // as plain text: "<|", "im", "_", "start", "|>", "hello", "<|", "im", "_", "end", "|>", byte by byte
    EXPECT_EQ(tok.encode("<|im_start|>hello<|im_end|>", false, false),
              (ids{64,  128, 109, 113, 99,  119, 120, 101, 118, 120, 128, 66,
                   263, 64,  128, 109, 113, 99,  105, 114, 104, 128, 66}));
    // user-defined tokens are matched even without parse_special
    EXPECT_EQ(tok.encode("a<tool>b", false, false), (ids{101, 3, 102}));
    // longer special texts win: "bcd" before "ab", "<|im_start|>" before "<|im"
    EXPECT_EQ(tok.encode("abcd", false, true), (ids{101, 273}));
    EXPECT_EQ(tok.encode("abcd", false, false), (ids{101, 102, 103, 104}));
    EXPECT_EQ(tok.encode("<|im_start|><|im", false, true), (ids{1, 275}));
}

TEST(tokenizer_bpe, bos_eos) {
    const lc::tokenizer plain = bpe_tokenizer();
    EXPECT_FALSE(plain.add_bos()); // gpt2 vocabularies add no BOS unless the file says so
    EXPECT_EQ(plain.encode("hello", true, false), (ids{263}));
    EXPECT_EQ(plain.bos(), -1);
    EXPECT_EQ(plain.eos(), 2);

    lc::gguf_writer w = bpe_writer("smollm");
    w.set_u32("tokenizer.ggml.bos_token_id", 0);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_bool("tokenizer.ggml.add_eos_token", true);
    auto tok = lc::test::tokenizer_from_writer(w);
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();
    EXPECT_EQ(tok->encode("hello", true, false), (ids{0, 263, 2}));
    EXPECT_EQ(tok->encode("hello", false, false), (ids{263}));
}

TEST(tokenizer_bpe, pieces_and_decode) {
    const lc::tokenizer tok = bpe_tokenizer();
    EXPECT_EQ(tok.token_to_piece(268), " world");
    EXPECT_EQ(tok.token_to_piece(4 + '\n'), "\n");
    EXPECT_EQ(tok.token_to_piece(4 + 0xC3), "\xC3");
    EXPECT_EQ(tok.token_to_piece(1), "");
    EXPECT_EQ(tok.token_to_piece(1, true), "<|im_start|>");
    EXPECT_EQ(tok.token_to_piece(3), "<tool>");
    EXPECT_EQ(tok.token_to_piece(-1), "");
    EXPECT_EQ(tok.token_to_piece(100000), "");
    EXPECT_EQ(tok.decode({1, 263, 268, 2}), "hello world");
    EXPECT_EQ(tok.decode({1, 263, 268, 2}, true), "<|im_start|>hello world<|im_end|>");
    const std::string text = "h\xC3\xA9llo  w\xC3\xB6rld\n\tit's 1234 <tool> \xF0\x9F\x98\x80!";
    EXPECT_EQ(tok.decode(tok.encode(text, false, false)), text);
}

TEST(tokenizer_bpe, end_of_generation) {
    const lc::tokenizer tok = bpe_tokenizer();
    EXPECT_TRUE(tok.is_eog(2));  // eos
    EXPECT_TRUE(tok.is_eog(0));  // <|endoftext|> by its text
    EXPECT_FALSE(tok.is_eog(1)); // <|im_start|>
    EXPECT_FALSE(tok.is_eog(263));
    EXPECT_FALSE(tok.is_eog(-1));
    EXPECT_EQ(tok.attr(3), lc::token_attr::USER_DEFINED);
    EXPECT_EQ(tok.token_id("Ġworld"), 268);
    EXPECT_EQ(tok.token_id("nope"), -1);
}

TEST(tokenizer_spm, merges_by_score) {
    const lc::tokenizer tok = spm_tokenizer(false);
    EXPECT_EQ(tok.type(), lc::tokenizer_type::SPM);
    // a b c: bc (-0.5) beats ab (-1), then a+bc = abc (-3)
    EXPECT_EQ(tok.encode("abc", false, false), (ids{265}));
    EXPECT_EQ(tok.encode("ab", false, false), (ids{263}));
    // "ab▁a": ab (-1) first, then ▁a (-2); "ab▁" is no token
    EXPECT_EQ(tok.encode("ab a", false, false), (ids{263, 266}));
    // equal scores merge leftmost first: aa + a
    EXPECT_EQ(tok.encode("aaa", false, false), (ids{269, 260}));
    // byte fallback for a character without a token: é = C3 A9
    EXPECT_EQ(tok.encode("\xC3\xA9", false, false), (ids{3 + 0xC3, 3 + 0xA9}));
    // merges never produce a control token: "xy" stays x + y unless parsed as special text
    EXPECT_EQ(tok.encode("xy", false, false), (ids{271, 272}));
    EXPECT_EQ(tok.encode("xy", false, true), (ids{270}));
}

TEST(tokenizer_spm, space_prefix_and_bos) {
    const lc::tokenizer tok = spm_tokenizer(true);
    EXPECT_TRUE(tok.add_bos()); // SentencePiece vocabularies add BOS by default
    EXPECT_EQ(tok.bos(), 1);
    EXPECT_EQ(tok.eos(), 2);
    EXPECT_EQ(tok.unk(), 0);
    EXPECT_EQ(tok.encode("a", false, false), (ids{266}));       // "▁a"
    EXPECT_EQ(tok.encode("ab", false, false), (ids{259, 263})); // "▁ab": ab (-1) beats ▁a (-2)
    EXPECT_EQ(tok.encode("ab", true, false), (ids{1, 259, 263}));
    // after a special token the text gets a space prefix again
    EXPECT_EQ(tok.encode("<ctl>ab", false, true), (ids{267, 259, 263}));
    EXPECT_EQ(tok.encode("a<ud>b", false, false), (ids{266, 268, 259, 261}));
    // "▁<ctl>ab" as text: only ab merges; '<', 't', 'l', '>' fall back to bytes
    EXPECT_EQ(tok.encode("<ctl>ab", false, false), (ids{259, 3 + '<', 262, 3 + 't', 3 + 'l', 3 + '>', 263}));
    // decoding drops the space that encoding put in front
    EXPECT_EQ(tok.decode({1, 266, 263}), "aab");
    EXPECT_EQ(tok.token_to_piece(266), " a");
}

TEST(tokenizer_spm, pieces) {
    const lc::tokenizer tok = spm_tokenizer(false);
    EXPECT_EQ(tok.encode("a<ud>b", false, false), (ids{260, 268, 261}));
    EXPECT_EQ(tok.token_to_piece(3 + 0xC3), "\xC3");
    EXPECT_EQ(tok.token_to_piece(0), "");
    EXPECT_EQ(tok.token_to_piece(0, true), "<unk>");
    EXPECT_EQ(tok.token_to_piece(268), "<ud>");
    EXPECT_EQ(tok.decode({266, 3 + 0xC3, 3 + 0xA9}), " a\xC3\xA9");
    const std::string text = "abc ab\xC3\xA9 xy  a";
    EXPECT_EQ(tok.decode(tok.encode(text, false, false)), text);
}

TEST(tokenizer_load, errors) {
    {
        auto tok = lc::test::tokenizer_from_writer(bpe_writer("tekken"));
        ASSERT_FALSE(tok.is_ok());
        EXPECT_EQ(tok.get_status().code(), lc::status_code::UNSUPPORTED);
        EXPECT_NE(tok.get_status().message().find("tekken"), std::string::npos) << tok.get_status().message();
    }
    {
        lc::gguf_writer w = bpe_writer("smollm");
        w.set_str("tokenizer.ggml.model", "bert");
        auto tok = lc::test::tokenizer_from_writer(w);
        ASSERT_FALSE(tok.is_ok());
        EXPECT_EQ(tok.get_status().code(), lc::status_code::UNSUPPORTED);
        EXPECT_NE(tok.get_status().message().find("'bert'"), std::string::npos) << tok.get_status().message();
    }
    {
        lc::gguf_writer w;
        w.set_str("tokenizer.ggml.model", "gpt2");
        auto tok = lc::test::tokenizer_from_writer(w);
        ASSERT_FALSE(tok.is_ok());
        EXPECT_EQ(tok.get_status().code(), lc::status_code::NOT_FOUND);
        EXPECT_NE(tok.get_status().message().find("tokenizer.ggml.tokens"), std::string::npos);
    }
    {
        lc::gguf_writer w = bpe_writer("smollm");
        w.set_arr_str("tokenizer.ggml.merges", {"h e", "noSpace"});
        auto tok = lc::test::tokenizer_from_writer(w);
        ASSERT_FALSE(tok.is_ok());
        EXPECT_EQ(tok.get_status().code(), lc::status_code::INVALID_FILE);
        EXPECT_NE(tok.get_status().message().find("noSpace"), std::string::npos) << tok.get_status().message();
    }
    {
        lc::gguf_writer w = bpe_writer("smollm");
        w.set_arr_i32("tokenizer.ggml.token_type", {1, 1, 1});
        auto tok = lc::test::tokenizer_from_writer(w);
        ASSERT_FALSE(tok.is_ok());
        EXPECT_EQ(tok.get_status().code(), lc::status_code::INVALID_FILE);
    }
    {
        lc::gguf_writer w = bpe_writer("smollm");
        w.set_u32("tokenizer.ggml.eos_token_id", 5000);
        auto tok = lc::test::tokenizer_from_writer(w);
        ASSERT_FALSE(tok.is_ok());
        EXPECT_EQ(tok.get_status().code(), lc::status_code::INVALID_FILE);
    }
}
