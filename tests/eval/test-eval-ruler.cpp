// RULER-style generators: Zipf counts, UUIDs and the sentence splitter by hand; instances of every task checked for
// their structure (needle counts, chain order, word repetitions, answer ranks); prompts fitted to L in real model
// tokens; the summary's per-task and mean scores on a hand-made result file.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <sstream>

#include "common/util.h"
#include "eval/haystack.h"
#include "eval/ruler.h"
#include "gguf/gguf.h"

using namespace lc;
using namespace lc::eval;

namespace {

size_t count_of(const std::string & s, const std::string & x) {
    size_t n = 0;
    for (size_t p = s.find(x); p != std::string::npos; p = s.find(x, p + x.size())) ++n;
    return n;
}

struct fixture {
    std::unique_ptr<tokenizer> tok;
    ruler_words                words;
    bool                       ok = false;
};

fixture load() {
    fixture           f;
    const std::string path = test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty() || !test::file_exists("/usr/share/dict/american-english")) return f;
    auto g = gguf_file::open(path);
    if (!g) return f;
    auto t = tokenizer::from_gguf(**g);
    if (!t) return f;
    f.tok  = std::make_unique<tokenizer>(std::move(*t));
    auto w = ruler_words_load("/usr/share/dict/american-english", test::shared_data_path("pg_essays"));
    if (!w) return f;
    f.words = std::move(*w);
    f.ok    = true;
    return f;
}

} // namespace

TEST(eval_ruler, zipf_counts_by_hand) {
    // T = 1000, alpha = 2, zeta(2) = 1.6449341: 1000/1.6449 = 607.9 -> 607; 250/1.6449 = 151.98 -> 151;
    // 111.1/1.6449 = 67.5 -> 67; 62.5/1.6449 = 37.99 -> 37; 40/1.6449 = 24.3 -> 24.
    EXPECT_EQ(ruler_zipf_counts(1000, 5, 2.0), (std::vector<int64_t>{607, 151, 67, 37, 24}));
}

TEST(eval_ruler, uuid_and_sentences) {
    rng               r(1);
    const std::regex  v4("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
    const std::string a = ruler_uuid(r), b = ruler_uuid(r);
    EXPECT_TRUE(std::regex_match(a, v4)) << a;
    EXPECT_TRUE(std::regex_match(b, v4)) << b;
    EXPECT_NE(a, b);
    EXPECT_EQ(ruler_split_sentences("One. Two! Three? Four 4.5 five"),
              (std::vector<std::string>{"One.", "Two!", "Three?", "Four 4.5 five"}));
}

TEST(eval_ruler, instances_have_the_specified_structure) {
    auto f = load();
    if (!f.ok) GTEST_SKIP() << "needs SmolLM2-135M-Instruct.Q4_1.gguf in the cache and Debian's wamerican";
    const int64_t L = 2048;
    {
        auto t = ruler_task::create("niah_single_1", f.words, *f.tok, true, L, 42);
        ASSERT_TRUE(t) << t.get_status().message();
        auto in = t->make(40, 7);
        // 40 filler lines plus one needle line holding the one reference.
        EXPECT_EQ(count_of(in.context, filler_line), 40u);
        EXPECT_EQ(count_of(in.context, "\n"), 40u);
        ASSERT_EQ(in.refs.size(), 1u);
        EXPECT_EQ(in.refs[0].size(), 7u);
        EXPECT_EQ(count_of(in.context, "is: " + in.refs[0] + "."), 1u);
        EXPECT_NE(in.t.answer_prefix.find("number for "), std::string::npos); // singular
    }
    {
        auto t  = ruler_task::create("niah_multikey_2", f.words, *f.tok, true, L, 42);
        auto in = t->make(30, 7);
        // 30 decoys + 1 needle, all of the same shape.
        EXPECT_EQ(count_of(in.context, "One of the special magic numbers for "), 31u);
    }
    {
        auto t  = ruler_task::create("niah_multiquery", f.words, *f.tok, true, L, 42);
        auto in = t->make(600, 7);
        EXPECT_EQ(in.refs.size(), 4u);
        for (const auto & r : in.refs) EXPECT_EQ(count_of(in.context, r), 1u);
        EXPECT_NE(in.t.answer_prefix.find(", and "), std::string::npos); // "a, b, c, and d"
        EXPECT_NE(in.t.answer_prefix.find(" are"), std::string::npos);
    }
    {
        auto t  = ruler_task::create("vt", f.words, *f.tok, true, L, 42);
        auto in = t->make(20, 7);
        ASSERT_EQ(in.refs.size(), 5u);
        // The chain in order: VAR A = 12345, VAR B = VAR A, ...
        size_t pos = in.context.find("VAR " + in.refs[0] + " = ");
        ASSERT_NE(pos, std::string::npos);
        std::string value = in.context.substr(pos + 4 + 5 + 3, 5);
        EXPECT_TRUE(std::all_of(value.begin(), value.end(), ::isdigit)) << value;
        for (int i = 1; i < 5; ++i) {
            const size_t p = in.context.find("VAR " + in.refs[size_t(i)] + " = VAR " + in.refs[size_t(i - 1)]);
            ASSERT_NE(p, std::string::npos);
            EXPECT_GT(p, pos);
            pos = p;
        }
        EXPECT_NE(in.t.after.find(value), std::string::npos);
        // The worked example precedes the task and ends with its five 3-letter names.
        EXPECT_TRUE(
            std::regex_search(in.t.before, std::regex("they are: [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3}")));
    }
    {
        // L < 4096: common words 6 times, the others once; 30 distinct words -> 10 * 6 + 20 = 80 entries.
        auto t  = ruler_task::create("cwe", f.words, *f.tok, true, L, 42);
        auto in = t->make(30, 7);
        ASSERT_EQ(in.refs.size(), 10u);
        EXPECT_NE(in.context.find("80. "), std::string::npos);
        EXPECT_EQ(in.context.find("81. "), std::string::npos);
        std::map<std::string, int> n;
        std::istringstream         ss(in.context);
        std::string                tok;
        while (ss >> tok)
            if (tok.back() != '.') ++n[tok];
        for (const auto & r : in.refs) EXPECT_EQ(n[r], 6) << r;
        EXPECT_EQ(n.size(), 30u);
    }
    {
        // V_w = (2048 - 50) / 50 = 39 words; T = 1000: ranks 2..4 occur 151, 67, 37 times; rank 1 is "...".
        auto t  = ruler_task::create("fwe", f.words, *f.tok, true, L, 42);
        auto in = t->make(1000, 7);
        ASSERT_EQ(in.refs.size(), 3u);
        std::map<std::string, int> n;
        std::istringstream         ss(in.context);
        std::string                tok;
        while (ss >> tok) ++n[tok];
        EXPECT_EQ(n["..."], 607);
        EXPECT_EQ(n[in.refs[0]], 151);
        EXPECT_EQ(n[in.refs[1]], 67);
        EXPECT_EQ(n[in.refs[2]], 37);
        // Ranks past 24 get floor(1000 / (k^2 * 1.6449)) = 0 occurrences (k = 25: 0.97): 24 distinct words.
        EXPECT_EQ(n.size(), 24u);
    }
}

TEST(eval_ruler, samples_fit_the_length) {
    auto f = load();
    if (!f.ok) GTEST_SKIP() << "needs SmolLM2-135M-Instruct.Q4_1.gguf in the cache and Debian's wamerican";
    const int64_t L = 1024;
    for (const auto & name : ruler_task_names()) {
        auto t = ruler_task::create(name, f.words, *f.tok, true, L, 42);
        ASSERT_TRUE(t) << name << ": " << t.get_status().message();
        for (int i = 0; i < 2; ++i) {
            auto s = t->sample(i);
            ASSERT_TRUE(s) << name;
            const int64_t used = int64_t(s->prompt.size()) + s->n_gen;
            EXPECT_LE(used, L) << name;
            // Filled: within one size increment of the budget (generously: 40% of L for the coarse knobs).
            EXPECT_GT(used, L * 6 / 10) << name;
            // Seeded: the same sample twice is the same prompt.
            auto again = t->sample(i);
            EXPECT_EQ(token_ids_sha256(s->prompt), token_ids_sha256(again->prompt)) << name;
        }
    }
}

TEST(eval_ruler, summary_scores) {
    // Two tasks at one length, dense only: niah_single_1 samples 1, 0 -> 50; vt samples 0.6, 1 -> 80; mean 65.
    json doc = {{"eval", "ruler"}, {"meta", json::object()}, {"records", json::array()}};
    auto add = [&](const char * task, double s) {
        doc["records"].push_back(
            {{"key", "k"}, {"task", task}, {"length", 4096}, {"runs", {{{"label", "dense"}, {"score", s}}}}});
    };
    add("niah_single_1", 1);
    add("niah_single_1", 0);
    add("vt", 0.6);
    add("vt", 1);
    auto rows = ruler_summary(doc);
    ASSERT_TRUE(rows);
    ASSERT_EQ(rows->size(), 1u);
    EXPECT_DOUBLE_EQ((*rows)[0].mean, 65.0);
    ASSERT_EQ((*rows)[0].task_scores.size(), 2u);
    EXPECT_DOUBLE_EQ((*rows)[0].task_scores[0].second, 50.0);
    EXPECT_DOUBLE_EQ((*rows)[0].task_scores[1].second, 80.0);
}
