// Needle-in-a-haystack harness: scoring and clean-up on hand-worked examples, needle insertion at sentence starts,
// exact-length haystack cuts in model tokens, prompt assembly, prompt identity across methods, resume from a
// partial result file and well-formed SVG output.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "common/util.h"
#include "eval/eval-common.h"
#include "eval/haystack.h"
#include "eval/niah.h"
#include "eval/results.h"
#include "eval/svg.h"
#include "gguf/gguf.h"
#include "model/model.h"

using namespace lc;
using namespace lc::eval;

namespace {

std::unique_ptr<tokenizer> smollm2_tokenizer() {
    const std::string path = test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty()) return nullptr;
    auto f = gguf_file::open(path);
    if (!f) return nullptr;
    auto t = tokenizer::from_gguf(**f);
    if (!t) return nullptr;
    return std::make_unique<tokenizer>(std::move(*t));
}

std::string tmp_path(const std::string & name) {
    return std::string(LC_BINARY_DIR) + "/test-eval-niah-" + name;
}

} // namespace

TEST(eval_scoring, clean_up) {
    // Strip, control characters (tab, 0x01) become newlines, strip again.
    EXPECT_EQ(answer_clean("  \tThe answer\x01is 42 \n"), "The answer\nis 42");
    EXPECT_EQ(answer_clean("\x02\x03 x"), "x");
    EXPECT_EQ(answer_clean(""), "");
}

TEST(eval_scoring, substring_metrics) {
    const std::vector<std::string> sf = {"sandwich", "Dolores Park"};
    EXPECT_DOUBLE_EQ(score_all_match("eat a Sandwich and sit in dolores park", sf), 1.0);
    EXPECT_DOUBLE_EQ(score_all_match("eat a sandwich at the beach", sf), 0.5);
    EXPECT_DOUBLE_EQ(score_all_match("go hiking", sf), 0.0);
    EXPECT_DOUBLE_EQ(score_any_match("eat a sandwich at the beach", sf), 1.0);
    EXPECT_DOUBLE_EQ(score_any_match("go hiking", sf), 0.0);
    // 100 * mean, 2 decimals: (1 + 1 + 0) / 3 = 66.666.. -> 66.67; (1 + 0.5 + 0) / 3 -> 50.
    EXPECT_DOUBLE_EQ(score_percent({1, 1, 0}), 66.67);
    EXPECT_DOUBLE_EQ(score_percent({1, 0.5, 0}), 50.0);
    EXPECT_DOUBLE_EQ(score_percent({}), 0.0);
    EXPECT_EQ(first_digit_run("The pass key is 12345. Remember"), "12345");
    EXPECT_EQ(first_digit_run("none"), "");
}

TEST(eval_scoring, niah_scores) {
    EXPECT_EQ(niah_score(niah_kind::CLASSIC, {"sandwich", "Dolores Park"}, " eat a sandwich in Dolores Park."), 1.0);
    EXPECT_EQ(niah_score(niah_kind::CLASSIC, {"sandwich", "Dolores Park"}, " eat a sandwich."), 0.0);
    EXPECT_EQ(niah_score(niah_kind::NUMERIC, {"3376904"}, " 3376904."), 1.0);
    EXPECT_EQ(niah_score(niah_kind::NUMERIC, {"3376904"}, " 3376905."), 0.0);
    // Multi: the fraction of ingredients named.
    EXPECT_DOUBLE_EQ(niah_score(niah_kind::MULTI, {"figs", "lemons", "goat cheese"}, " figs and Goat Cheese."),
                     2.0 / 3.0);
    // Passkey is exact: the first number must be the key, not merely contain it.
    EXPECT_EQ(niah_score(niah_kind::PASSKEY, {"12345"}, " 12345. Remember it."), 1.0);
    EXPECT_EQ(niah_score(niah_kind::PASSKEY, {"12345"}, " 123456"), 0.0);
    EXPECT_EQ(niah_score(niah_kind::PASSKEY, {"12345"}, " 99 then 12345"), 0.0);
}

TEST(eval_common, number_lists) {
    auto a = parse_number_list("0:100:25", "--depths");
    ASSERT_TRUE(a);
    EXPECT_EQ(*a, (std::vector<double>{0, 25, 50, 75, 100}));
    auto b = parse_number_list("1,2.5", "--depths");
    ASSERT_TRUE(b);
    EXPECT_EQ(*b, (std::vector<double>{1, 2.5}));
    // sigmoid:5: x = 0, 25, 50, 75, 100 -> 100 / (1 + e^{2.5}) = 7.586, 50, 100 / (1 + e^{-2.5}) = 92.414; ends exact.
    auto c = parse_number_list("sigmoid:5", "--depths");
    ASSERT_TRUE(c);
    EXPECT_EQ(*c, (std::vector<double>{0, 7.586, 50, 92.414, 100}));
    EXPECT_FALSE(parse_number_list("sigmoid:1", "--depths"));
    EXPECT_FALSE(parse_number_list("a", "--depths"));
    EXPECT_FALSE(parse_number_list("1,,2", "--depths"));
    EXPECT_FALSE(parse_number_list("0:10:0", "--depths"));
}

TEST(eval_common, token_hash) {
    // Bytes 01 00 00 00 ff ff ff ff 00 01 00 00; digest from Python's hashlib.
    EXPECT_EQ(token_ids_sha256({1, -1, 256}), "3fde8dbe317263914180478af0eca893a8e5e52d6cd2bd626e9b01052a44d176");
    EXPECT_EQ(token_ids_sha256({}), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(eval_common, rng_is_seeded) {
    rng            a(7), b(7), c(8);
    const uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    EXPECT_NE(x, c.next());
    for (int i = 0; i < 1000; ++i) {
        const int64_t v = a.range(10000, 99999);
        EXPECT_GE(v, 10000);
        EXPECT_LE(v, 99999);
    }
}

// Token 0 is the full stop. Worked by hand: hay = 5 6 . 7 8 9 . 10 11 12 (n = 10).
TEST(eval_haystack, needle_at_sentence_start) {
    auto                       stop = [](int32_t id) { return id == 0; };
    const std::vector<int32_t> hay  = {5, 6, 0, 7, 8, 9, 0, 10, 11, 12};
    const std::vector<int32_t> nd   = {100, 101};
    {
        // depth 50: p = 5; hay[4] = 8, hay[3] = 7 are not stops, hay[2] is: insert at 3.
        auto h = hay;
        EXPECT_EQ(needle_insert(h, nd, 50, stop), 3);
        EXPECT_EQ(h, (std::vector<int32_t>{5, 6, 0, 100, 101, 7, 8, 9, 0, 10, 11, 12}));
    }
    {
        // depth 95: p = floor(9.5) = 9 -> walks back to 7 (after the second stop).
        auto h = hay;
        EXPECT_EQ(needle_insert(h, nd, 95, stop), 7);
    }
    {
        // depth 20: p = 2; hay[1] = 6, hay[0] = 5: walks back to the start.
        auto h = hay;
        EXPECT_EQ(needle_insert(h, nd, 20, stop), 0);
        EXPECT_EQ(h[0], 100);
    }
    {
        auto h = hay;
        EXPECT_EQ(needle_insert(h, nd, 100, stop), 10);
        EXPECT_EQ(h.back(), 101);
    }
}

TEST(eval_haystack, multi_needles_into_the_growing_list) {
    // Units give the stream 1 2 0 | 3 4 5 0 | ...; L = 16, reserve 2 -> 14 = haystack (10) + needles (2 + 2).
    // Needle A at depth 0 -> index 0. The list now has 12 tokens: A A 1 2 0 3 4 5 0 1 2 0; needle B at depth 50:
    // p = 6 (token 4), walks back past 3 to 5, after the full stop at index 4.
    haystack                                h    = haystack::from_units({{1, 2, 0}, {3, 4, 5, 0}}, "test");
    auto                                    stop = [](int32_t id) { return id == 0; };
    std::vector<int64_t>                    pos;
    const std::vector<std::vector<int32_t>> nd  = {{100, 100}, {200, 200}};
    auto                                    ctx = haystack_with_needles(h, 0, 16, 2, nd, {0.0, 50.0}, stop, &pos);
    EXPECT_EQ(ctx, (std::vector<int32_t>{100, 100, 1, 2, 0, 200, 200, 3, 4, 5, 0, 1, 2, 0}));
    EXPECT_EQ(pos, (std::vector<int64_t>{0, 5}));
}

TEST(eval_haystack, exact_length_cut) {
    // Units of 3 and 4 tokens, wrapping: the stream is 1 2 0 | 3 4 5 0 | 1 2 0 | ...
    haystack h = haystack::from_units({{1, 2, 0}, {3, 4, 5, 0}}, "test");
    EXPECT_EQ(h.tokens(9), (std::vector<int32_t>{1, 2, 0, 3, 4, 5, 0, 1, 2}));
    EXPECT_EQ(h.tokens(5, 1), (std::vector<int32_t>{3, 4, 5, 0, 1}));
    auto                       stop = [](int32_t id) { return id == 0; };
    const std::vector<int32_t> nd   = {100, 101, 102};
    for (int64_t L : {250, 1000, 1001, 4096}) {
        for (double d : {0.0, 33.0, 100.0}) {
            int64_t pos = -1;
            auto    ctx = haystack_with_needle(h, 0, L, 200, nd, d, stop, &pos);
            // Haystack + needle = L - 200 exactly.
            EXPECT_EQ(int64_t(ctx.size()), L - 200) << "L=" << L << " d=" << d;
            ASSERT_GE(pos, 0);
            EXPECT_EQ(ctx[size_t(pos)], 100);
            if (d == 100.0)
                EXPECT_EQ(pos, L - 200 - 3); // appended at the end
            else if (pos > 0)
                EXPECT_EQ(ctx[size_t(pos - 1)], 0) << "needle not at a sentence start";
        }
    }
}

TEST(eval_haystack, real_tokenizer_cell) {
    auto tok = smollm2_tokenizer();
    if (!tok) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not in the model cache";
    const std::string dir = test::shared_data_path("pg_essays");
    haystack          h   = haystack::filler(*tok);
    if (!dir.empty()) {
        auto r = haystack::from_dir(dir, *tok);
        ASSERT_TRUE(r) << r.get_status().message();
        h = std::move(*r);
        // The README's hash of the files concatenated in sorted order.
        EXPECT_EQ(h.id(), "dir:pg_essays:sha256=b3a70ebc054f2eab5057baf3c4b7e857711472be8086240a516fd29b648ad857");
        EXPECT_EQ(h.n_units(), 49u);
    }
    niah_params p;
    p.kind = niah_kind::NUMERIC;
    for (int64_t L : {1000, 3000}) {
        for (double d : {0.0, 40.0, 100.0}) {
            auto c = niah_cell_build(p, h, *tok, true, L, d, 0);
            ASSERT_TRUE(c);
            EXPECT_EQ(c->n_context, L - 200);
            EXPECT_LT(int64_t(c->prompt.size()), L); // the template fits in the 200-token reserve
            const std::string text = tok->decode(c->prompt, true);
            EXPECT_NE(text.find("\n" + c->needle + "\n"), std::string::npos);
            EXPECT_NE(text.find("<|im_start|>user\n"), std::string::npos);
            // The answer prefix follows the assistant header.
            EXPECT_NE(text.find("<|im_start|>assistant\nThe special magic number for "), std::string::npos);
            EXPECT_EQ(text.find(c->answer), text.find(c->needle) + c->needle.size() - c->answer.size() - 1);
            // The same cell is the same prompt, token for token.
            auto c2 = niah_cell_build(p, h, *tok, true, L, d, 0);
            ASSERT_TRUE(c2);
            EXPECT_EQ(token_ids_sha256(c->prompt), token_ids_sha256(c2->prompt));
        }
    }
    // Multi-needle: three ingredients, each in the text once, the context still exactly L - 200.
    niah_params pm;
    pm.kind      = niah_kind::MULTI;
    pm.n_needles = 3;
    auto m       = niah_cell_build(pm, h, *tok, true, 2000, 20, 0);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->n_context, 1800);
    ASSERT_EQ(m->refs.size(), 3u);
    const std::string mt = tok->decode(m->prompt);
    for (const auto & ing : m->refs)
        EXPECT_NE(mt.find("\nOne of the secret ingredients of the perfect pizza is " + ing + ".\n"), std::string::npos);
    // Another round: another needle.
    auto a = niah_cell_build(p, h, *tok, true, 1000, 50, 0), b = niah_cell_build(p, h, *tok, true, 1000, 50, 1);
    ASSERT_TRUE(a && b);
    EXPECT_NE(a->answer, b->answer);
}

TEST(eval_haystack, base_model_plain_prompt) {
    // Gemma 3 270M: a base model used without a chat template; its file asks for BOS.
    const std::string path = test::cached_model("gemma-3-270m-q4_k_m.gguf");
    if (path.empty()) GTEST_SKIP() << "gemma-3-270m-q4_k_m.gguf not in the model cache";
    auto f = gguf_file::open(path);
    ASSERT_TRUE(f);
    auto tok = tokenizer::from_gguf(**f);
    ASSERT_TRUE(tok);
    ASSERT_TRUE(tok->add_bos());
    haystack    h = haystack::filler(*tok);
    niah_params p;
    p.kind = niah_kind::NUMERIC;
    auto c = niah_cell_build(p, h, *tok, false, 1500, 30, 0);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->n_context, 1300);
    EXPECT_EQ(c->prompt[0], tok->bos());
    EXPECT_NE(c->prompt[1], tok->bos());
    const std::string text = tok->decode(c->prompt);
    EXPECT_EQ(text.rfind("Some important information is hidden in the text below", 0), 0u) << text.substr(0, 80);
    const std::string tail = "\n\nAnswer: The special magic number for ";
    EXPECT_NE(text.find(tail), std::string::npos);
    EXPECT_EQ(text.substr(text.size() - 3), " is"); // the prompt ends with the start of the answer sentence
}

TEST(eval_prompt, plain_and_chat_assembly) {
    auto tok = smollm2_tokenizer();
    if (!tok) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not in the model cache";
    prompt_template t;
    t.before                        = "Read this:\n";
    t.after                         = "\nQuestion?";
    t.answer_prefix                 = " Answer:";
    const std::vector<int32_t> ctxt = encode_plain(*tok, "Hello world. Bye.");
    auto                       p    = prompt_build(*tok, false, t, ctxt);
    ASSERT_TRUE(p);
    // Plain: before, the context tokens verbatim, after + prefix (SmolLM2's file says no BOS).
    std::vector<int32_t> want = tok->add_bos() ? std::vector<int32_t>{tok->bos()} : std::vector<int32_t>{};
    for (int32_t id : encode_plain(*tok, "Read this:\n")) want.push_back(id);
    want.insert(want.end(), ctxt.begin(), ctxt.end());
    for (int32_t id : encode_plain(*tok, "\nQuestion? Answer:")) want.push_back(id);
    EXPECT_EQ(*p, want);
    auto c = prompt_build(*tok, true, t, ctxt);
    ASSERT_TRUE(c);
    EXPECT_EQ(tok->decode(*c, true), "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                                     "Hugging Face<|im_end|>\n<|im_start|>user\nRead this:\nHello world. "
                                     "Bye.\nQuestion?<|im_end|>\n<|im_start|>assistant\n Answer:");
}

TEST(eval_results, resume_from_partial_file) {
    const std::string path = tmp_path("resume.json");
    const json        id   = {{"task", "niah-numeric"}, {"seed", 42}};
    // A partial file as an interrupted run leaves it: one of several cells done.
    {
        std::ofstream o(path);
        o << R"({"eval": "niah", "format": 1, "meta": {"identity": {"seed": 42, "task": "niah-numeric"}},
                 "records": [{"key": "L=1000,d=0,r=0", "runs": []}]})";
    }
    auto f = result_file::open(path, "niah", json{{"identity", id}}, false);
    ASSERT_TRUE(f) << f.get_status().message();
    EXPECT_TRUE(f->has("L=1000,d=0,r=0"));
    EXPECT_FALSE(f->has("L=1000,d=50,r=0"));
    ASSERT_TRUE(f->add(json{{"key", "L=1000,d=50,r=0"}, {"runs", json::array()}}));
    auto g = result_file::open(path, "niah", json{{"identity", id}}, false);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->n_records(), 2u);
    // Writes are throttled: within the interval a record stays in memory until flush().
    g->save_interval_s = 3600;
    ASSERT_TRUE(g->add(json{{"key", "L=1000,d=100,r=0"}, {"runs", json::array()}}));
    ASSERT_TRUE(g->add(json{{"key", "L=2000,d=0,r=0"}, {"runs", json::array()}}));
    EXPECT_EQ(result_file::load(path)->at("records").size(), 3u); // the first add wrote, the second waits
    ASSERT_TRUE(g->flush());
    EXPECT_EQ(result_file::load(path)->at("records").size(), 4u);
    // Other settings: refused unless overwrite.
    EXPECT_FALSE(result_file::open(path, "niah", json{{"identity", {{"seed", 43}}}}, false));
    EXPECT_FALSE(result_file::open(path, "ppl", json{{"identity", id}}, false));
    auto h = result_file::open(path, "niah", json{{"identity", {{"seed", 43}}}}, true);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->n_records(), 0u);
    // Not JSON at all.
    {
        std::ofstream o(path);
        o << "{\"eval\": ";
    }
    auto bad = result_file::load(path);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.get_status().code(), status_code::INVALID_FILE);
    std::remove(path.c_str());
}

namespace {
// Tags balanced and no bare '&' or '<' in text: enough to know a browser will parse the file.
void expect_well_formed_svg(const std::string & s) {
    ASSERT_EQ(s.rfind("<?xml", 0), 0u);
    EXPECT_EQ(s.substr(s.size() - 7), "</svg>\n");
    int    depth = 0;
    size_t i     = s.find("<svg");
    ASSERT_NE(i, std::string::npos);
    while (i < s.size()) {
        if (s[i] == '<') {
            const size_t e = s.find('>', i);
            ASSERT_NE(e, std::string::npos);
            const std::string tag = s.substr(i, e - i + 1);
            if (tag[1] == '/')
                --depth;
            else if (tag[tag.size() - 2] != '/')
                ++depth;
            EXPECT_EQ(tag.find('<', 1), std::string::npos) << tag;
            ASSERT_GE(depth, 0);
            i = e + 1;
        } else {
            if (s[i] == '&') {
                const size_t e = s.find(';', i);
                ASSERT_NE(e, std::string::npos);
                const std::string ent = s.substr(i, e - i + 1);
                EXPECT_TRUE(ent == "&lt;" || ent == "&gt;" || ent == "&amp;" || ent == "&quot;") << ent;
            }
            ++i;
        }
    }
    EXPECT_EQ(depth, 0);
}
} // namespace

TEST(eval_svg, heatmap_from_result_file) {
    json doc = {{"eval", "niah"}, {"meta", {{"model_name", "tiny <model> & co"}}}, {"records", json::array()}};
    for (int64_t L : {1000, 2000})
        for (double d : {0.0, 50.0})
            for (int r = 0; r < 2; ++r)
                doc["records"].push_back({{"key", "k"},
                                          {"task", "niah-numeric"},
                                          {"length", L},
                                          {"depth", d},
                                          {"round", r},
                                          {"runs",
                                           {{{"label", "dense"}, {"score", 1.0}},
                                            {{"label", "prefill=vslash budget=1x"}, {"score", r == 0 ? 1.0 : 0.0}}}}});
    auto s = niah_heatmap_svg(doc);
    ASSERT_TRUE(s);
    expect_well_formed_svg(*s);
    EXPECT_NE(s->find("tiny &lt;model&gt; &amp; co"), std::string::npos);
    EXPECT_NE(s->find("dense (mean 1.00)"), std::string::npos);
    EXPECT_NE(s->find("prefill=vslash budget=1x (mean 0.50)"), std::string::npos);
    // Mean 0.5 is the middle colour of the scale.
    EXPECT_NE(s->find("fill=\"#EBB839\""), std::string::npos);
    EXPECT_EQ(score_colour(0.0), "#F0496E");
    EXPECT_EQ(score_colour(1.0), "#0CD79F");
    auto chart = svg_chart("t", "x", "y", {{"a & b", {0.1, 0.5}, {1, 2}, true}});
    expect_well_formed_svg(chart);
    EXPECT_FALSE(niah_heatmap_svg(json{{"records", {{{"length", "x"}}}}, {"meta", json::object()}}));
}

TEST(eval_niah, prompt_identical_across_methods_and_resume) {
    const std::string path = test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty()) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not in the model cache";
    auto m = model::load(path);
    ASSERT_TRUE(m);
    auto t = tokenizer::from_gguf((*m)->file());
    ASSERT_TRUE(t);
    context_params cp;
    cp.n_ctx               = 512;
    cp.n_threads           = 2;
    cp.attn.prefill        = prefill_method::VSLASH;
    cp.attn.sparse_min_len = 0;
    auto slots             = method_slots_create(**m, cp);
    ASSERT_TRUE(slots);
    ASSERT_EQ(slots->size(), 2u);
    haystack    h = haystack::filler(*t);
    niah_params p;
    p.kind    = niah_kind::PASSKEY;
    p.lengths = {400};
    p.depths  = {50};
    p.n_gen   = 8;
    eval_env env;
    env.mdl                 = m->get();
    env.tok                 = &*t;
    env.slots               = &*slots;
    env.use_chat            = true;
    const std::string out_p = tmp_path("run.json");
    std::remove(out_p.c_str());
    auto out = result_file::open(out_p, "niah", json{{"identity", {{"x", 1}}}}, true);
    ASSERT_TRUE(out);
    ASSERT_TRUE(niah_run(p, h, env, *out));
    ASSERT_EQ(out->n_records(), 1u);
    const json & rec = out->doc()["records"][0];
    ASSERT_EQ(rec["runs"].size(), 2u);
    EXPECT_EQ(rec["runs"][0]["label"], "dense");
    EXPECT_EQ(rec["runs"][1]["prefill"], "vslash");
    // Both runs consumed this one prompt.
    auto c = niah_cell_build(p, h, *t, true, 400, 50, 0);
    ASSERT_TRUE(c);
    EXPECT_EQ(rec["prompt_sha256"], token_ids_sha256(c->prompt));
    EXPECT_EQ(rec["n_prompt"], int64_t(c->prompt.size()));
    // Resuming runs nothing new.
    auto again = result_file::open(out_p, "niah", json{{"identity", {{"x", 1}}}}, false);
    ASSERT_TRUE(again);
    ASSERT_TRUE(niah_run(p, h, env, *again));
    EXPECT_EQ(again->n_records(), 1u);
    std::remove(out_p.c_str());
}
