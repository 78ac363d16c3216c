// The calibration sidecar and the MInference head configs: write/read round trip, shape checks, corrupt files;
// the Loki section (round trip beside the MInference section, shape mismatch, arrays of the wrong size);
// the MInference JSON import on hand-written configs (patterns, defaults for unlisted heads, the block-sparse
// rule, one-line errors); budget resolution under --prefill-budget; parsing of the method flags.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <tuple>

#include "attn/attention.h"
#include "attn/attn-config.h"
#include "attn/minference/head-config.h"
#include "calibrate/sidecar.h"
#include "gguf/gguf-test-util.h"

namespace {

void write_text(const std::string & path, const std::string & s) {
    std::ofstream(path) << s;
}

TEST(sidecar, path_beside_the_model) {
    EXPECT_EQ(lc::sidecar_path_for("/m/SmolLM2.Q4_1.gguf"), "/m/SmolLM2.Q4_1.longctx.gguf");
    EXPECT_EQ(lc::sidecar_path_for("model.bin"), "model.bin.longctx.gguf");
}

TEST(sidecar, round_trip_and_shape_check) {
    lc::test::temp_dir dir;
    const std::string  path = dir.path() + "/m.longctx.gguf";
    lc::sidecar        s;
    s.model_name = "tiny";
    s.n_layer    = 2;
    s.n_head     = 3;
    lc::sidecar_minference mi;
    mi.config           = lc::minference_config_uniform(2, 3, lc::head_pattern::VSLASH);
    mi.config.at(0, 1)  = {lc::head_pattern::A_SHAPE, 64, 512, 0.75f};
    mi.config.at(1, 2)  = {lc::head_pattern::BLOCK, 12, 0, 0.5f};
    mi.calib_source     = "builtin:kv-retrieval seed=1";
    mi.calib_sha256     = "abc";
    mi.calib_n_tokens   = 8000;
    mi.expected_density = 0.25f;
    s.minference        = mi;
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());

    auto r = lc::sidecar_read(path, 2, 3);
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    ASSERT_TRUE(r->minference.has_value());
    const auto & c = r->minference->config;
    EXPECT_EQ(c.at(0, 1).pattern, lc::head_pattern::A_SHAPE);
    EXPECT_EQ(c.at(0, 1).a, 64);
    EXPECT_EQ(c.at(0, 1).b, 512);
    EXPECT_FLOAT_EQ(c.at(0, 1).score, 0.75f);
    EXPECT_EQ(c.at(1, 2).pattern, lc::head_pattern::BLOCK);
    EXPECT_EQ(c.at(0, 0).pattern, lc::head_pattern::VSLASH);
    EXPECT_EQ(c.at(0, 0).a, 1000);
    EXPECT_EQ(r->minference->calib_n_tokens, 8000);
    EXPECT_EQ(r->minference->calib_source, "builtin:kv-retrieval seed=1");

    auto wrong = lc::sidecar_read(path, 3, 3);
    ASSERT_FALSE(wrong.is_ok());
    EXPECT_NE(wrong.get_status().message().find("recalibrate"), std::string::npos);

    write_text(path, "not a gguf file at all");
    EXPECT_FALSE(lc::sidecar_read(path, 2, 3).is_ok());
}

lc::sidecar_loki tiny_loki(int n_layer, int n_head_kv, int D) {
    lc::sidecar_loki l;
    l.n_head_kv = n_head_kv;
    l.head_dim  = D;
    l.fitted.assign(size_t(n_layer), 1);
    l.fitted[0] = 0;
    for (int i = 0; i < n_layer * n_head_kv * D * D; ++i) l.basis.push_back(float(i % 7) - 3.0f);
    for (int i = 0; i < n_layer * n_head_kv * D; ++i) l.curve.push_back(float(i % D + 1) / float(D));
    l.pre_rope     = true;
    l.calib_source = "builtin:kjv sequences of 4096 tokens";
    l.calib_sha256 = "0123";
    l.calib_n_keys = 200000;
    return l;
}

TEST(sidecar, loki_round_trip_keeps_minference) {
    lc::test::temp_dir dir;
    const std::string  path = dir.path() + "/m.longctx.gguf";
    lc::sidecar        s;
    s.model_name = "tiny";
    s.n_layer    = 2;
    s.n_head     = 6;
    lc::sidecar_minference mi;
    mi.config          = lc::minference_config_uniform(2, 6, lc::head_pattern::VSLASH);
    mi.config.at(1, 4) = {lc::head_pattern::A_SHAPE, 64, 512, 0.75f};
    s.minference       = mi;
    s.loki             = tiny_loki(2, 3, 8);
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());

    auto r = lc::sidecar_read(path, 2, 6);
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    ASSERT_TRUE(r->minference.has_value());
    EXPECT_EQ(r->minference->config.at(1, 4).pattern, lc::head_pattern::A_SHAPE);
    ASSERT_TRUE(r->loki.has_value());
    const lc::sidecar_loki & l = *r->loki;
    EXPECT_EQ(l.n_head_kv, 3);
    EXPECT_EQ(l.head_dim, 8);
    EXPECT_EQ(l.fitted, (std::vector<int32_t>{0, 1}));
    EXPECT_EQ(l.basis, s.loki->basis);
    EXPECT_EQ(l.curve, s.loki->curve);
    EXPECT_TRUE(l.pre_rope);
    EXPECT_EQ(l.calib_source, "builtin:kjv sequences of 4096 tokens");
    EXPECT_EQ(l.calib_sha256, "0123");
    EXPECT_EQ(l.calib_n_keys, 200000);
    EXPECT_EQ(l.basis_at(1, 2)[0], s.loki->basis[size_t((1 * 3 + 2) * 64)]);
    EXPECT_TRUE(lc::sidecar_loki_check(l, path, 2, 3, 8).is_ok());

    // Shape mismatch against the model: KV heads, head dimension, layers.
    for (auto [nl, nkv, d] : {std::tuple{2, 1, 8}, std::tuple{2, 3, 16}, std::tuple{3, 3, 8}}) {
        const lc::status st = lc::sidecar_loki_check(l, path, nl, nkv, d);
        ASSERT_FALSE(st.is_ok());
        EXPECT_NE(st.message().find("recalibrate"), std::string::npos) << st.message();
    }

    // A sidecar with only a MInference section has no Loki section; rewriting it keeps both.
    s.loki.reset();
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());
    r = lc::sidecar_read(path, 2, 6);
    ASSERT_TRUE(r.is_ok());
    EXPECT_FALSE(r->loki.has_value());
    EXPECT_TRUE(r->minference.has_value());
}

TEST(sidecar, loki_arrays_of_the_wrong_size_are_rejected) {
    lc::test::temp_dir dir;
    const std::string  path = dir.path() + "/m.longctx.gguf";
    lc::sidecar        s;
    s.n_layer = 2;
    s.n_head  = 3;
    s.loki    = tiny_loki(2, 3, 8);
    s.loki->basis.pop_back();
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());
    auto r = lc::sidecar_read(path, 2, 3);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.get_status().message().find("loki arrays"), std::string::npos) << r.get_status().message();

    s.loki = tiny_loki(2, 3, 8);
    s.loki->curve.resize(3);
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());
    EXPECT_FALSE(lc::sidecar_read(path, 2, 3).is_ok());

    s.loki           = tiny_loki(2, 3, 8);
    s.loki->basis[5] = NAN;
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());
    EXPECT_FALSE(lc::sidecar_read(path, 2, 3).is_ok());

    // Truncated file: a valid sidecar cut in the middle of the basis array.
    s.loki = tiny_loki(2, 3, 8);
    ASSERT_TRUE(lc::sidecar_write(path, s).is_ok());
    std::string bytes;
    {
        std::ifstream in(path, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    write_text(path, bytes.substr(0, bytes.size() / 2));
    EXPECT_FALSE(lc::sidecar_read(path, 2, 3).is_ok());
}

TEST(minference_json, import_hand_written_config) {
    lc::test::temp_dir dir;
    const std::string  path = dir.path() + "/cfg.json";
    write_text(path, R"([{"0": ["vertical_and_slash", 500, 2000, 0.9], "2": ["stream_llm", 128, 1024, 0.8]},
                         {"1": ["block_sparse", 7, 7, 0.7]}])");
    auto c = lc::minference_config_import_json(path, 3, 3);
    ASSERT_TRUE(c.is_ok()) << c.get_status().message();
    EXPECT_EQ(c->at(0, 0).pattern, lc::head_pattern::VSLASH);
    EXPECT_EQ(c->at(0, 0).a, 500);
    EXPECT_EQ(c->at(0, 0).b, 2000);
    EXPECT_FLOAT_EQ(c->at(0, 0).score, 0.9f);
    EXPECT_EQ(c->at(0, 2).pattern, lc::head_pattern::A_SHAPE);
    EXPECT_EQ(c->at(0, 2).a, 128);
    EXPECT_EQ(c->at(0, 2).b, 1024);
    // MInference's block-sparse kernel keeps 100 blocks whatever the config says.
    EXPECT_EQ(c->at(1, 1).pattern, lc::head_pattern::BLOCK);
    EXPECT_EQ(c->at(1, 1).a, 100);
    // Unlisted heads and layers: VS(1000, 6096).
    EXPECT_EQ(c->at(0, 1).pattern, lc::head_pattern::VSLASH);
    EXPECT_EQ(c->at(0, 1).a, 1000);
    EXPECT_EQ(c->at(2, 0).b, 6096);
}

TEST(minference_json, errors_are_one_line_and_specific) {
    lc::test::temp_dir dir;
    const std::string  path = dir.path() + "/bad.json";
    struct bad_case {
        const char * json;
        const char * expect;
    };
    for (const bad_case & b : {bad_case{"[{\"0\": [\"vertical_and_slash\", 1, 2", "not valid JSON"},
                               bad_case{"{\"0\": 1}", "must be a list"},
                               bad_case{"[{\"9\": [\"vertical_and_slash\", 1, 2, 0]}]", "heads 0..2"},
                               bad_case{"[{\"0\": [\"diagonal\", 1, 2, 0]}]", "not one of"},
                               bad_case{"[{\"0\": [\"vertical_and_slash\", -5, 2, 0]}]", "budgets"},
                               bad_case{"[{}, {}, {}, {}]", "has 4 layers"},
                               bad_case{"[{\"0\": \"vertical_and_slash\"}]", "[pattern, v, s, score]"}}) {
        write_text(path, b.json);
        auto c = lc::minference_config_import_json(path, 3, 3);
        ASSERT_FALSE(c.is_ok()) << b.json;
        EXPECT_NE(c.get_status().message().find(b.expect), std::string::npos) << c.get_status().message();
        EXPECT_EQ(c.get_status().message().find('\n'), std::string::npos);
    }
    EXPECT_FALSE(lc::minference_config_import_json(dir.path() + "/absent.json", 3, 3).is_ok());
}

TEST(prefill_budget, parse_and_resolve) {
    auto x = lc::prefill_budget_parse("0.5x");
    ASSERT_TRUE(x.is_ok());
    EXPECT_EQ(x->mode, lc::prefill_budget::kind::SCALE);
    auto pc = lc::prefill_budget_parse("20%");
    ASSERT_TRUE(pc.is_ok());
    EXPECT_EQ(pc->mode, lc::prefill_budget::kind::FRACTION);
    EXPECT_DOUBLE_EQ(pc->value, 0.2);
    auto fr = lc::prefill_budget_parse("0.25");
    ASSERT_TRUE(fr.is_ok());
    EXPECT_DOUBLE_EQ(fr->value, 0.25);
    for (const char * bad : {"", "x", "-1x", "150%", "2", "abc", "nan%", "0"})
        EXPECT_FALSE(lc::prefill_budget_parse(bad).is_ok()) << bad;

    const lc::head_budget vs{lc::head_pattern::VSLASH, 1000, 6096};
    auto                  r = lc::head_budget_effective(vs, *x, 10000);
    EXPECT_EQ(r.a, 500);
    EXPECT_EQ(r.b, 3048);
    r = lc::head_budget_effective(vs, *pc, 10000);
    EXPECT_EQ(r.a, 2000);
    EXPECT_EQ(r.b, 2000);
    r = lc::head_budget_effective({lc::head_pattern::BLOCK, 100, 0}, *pc, 6400); // 100 key blocks
    EXPECT_EQ(r.a, 20);

    EXPECT_TRUE(lc::prefill_method_parse("minference").is_ok());
    EXPECT_FALSE(lc::prefill_method_parse("sparse").is_ok());
}

} // namespace
