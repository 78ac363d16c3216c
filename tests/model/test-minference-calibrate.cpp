// The MInference search on the real default model at a short length: the generated calibration prompt fits
// its length; with a target cost below the prompt's length the search picks sparse patterns whose plans skip
// pairs, every head gets exactly one candidate with a score in [0, 1], and with a target above the length every
// candidate is dense so every head scores 1; the written sidecar drives --prefill minference.
#include <gtest/gtest.h>

#include <memory>

#include "attn/attention.h"
#include "calibrate/calib-text.h"
#include "calibrate/minference-search.h"
#include "calibrate/sidecar.h"
#include "common/util.h"
#include "gguf/gguf-test-util.h"
#include "model/model.h"
#include "runtime/context.h"
#include "tokenizer/tokenizer.h"

namespace {

struct loaded {
    std::unique_ptr<lc::model>     m;
    std::unique_ptr<lc::tokenizer> tok;
};

loaded load() {
    loaded            l;
    const std::string path = lc::test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty()) return l;
    auto m = lc::model::load(path);
    EXPECT_TRUE(m.is_ok());
    l.m      = std::move(*m);
    auto tok = lc::tokenizer::from_gguf(l.m->file());
    EXPECT_TRUE(tok.is_ok());
    l.tok = std::make_unique<lc::tokenizer>(std::move(*tok));
    return l;
}

TEST(calib_prompt, kv_retrieval_fits_and_is_seeded) {
    loaded l = load();
    if (!l.m) GTEST_SKIP() << "default model not in the cache";
    const auto a = lc::calib_kv_retrieval(*l.tok, 1000, 7);
    const auto b = lc::calib_kv_retrieval(*l.tok, 1000, 7);
    const auto c = lc::calib_kv_retrieval(*l.tok, 1000, 8);
    EXPECT_LE(a.tokens.size(), 1000u);
    EXPECT_GT(a.tokens.size(), 900u); // one pair is ~50 tokens
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_NE(a.tokens, c.tokens);
    const std::string text = l.tok->decode(a.tokens);
    EXPECT_NE(text.find("JSON data:"), std::string::npos);
    EXPECT_NE(text.find("The value associated with the specified key is:"), std::string::npos);
}

TEST(minference_search, picks_one_candidate_per_head_and_drives_the_runtime) {
    loaded l = load();
    if (!l.m) GTEST_SKIP() << "default model not in the cache";
    const auto                   prompt = lc::calib_kv_retrieval(*l.tok, 1024, 1);
    const int                    n_l = l.m->hparams().n_layer, n_h = l.m->hparams().n_head;
    lc::minference_search_params p;
    p.target_keys = 256;
    p.n_retime    = 0; // budgets from the nominal keys per query only: deterministic, no timing noise
    p.n_threads   = 2;
    auto r        = lc::minference_search(*l.m, prompt.tokens, p);
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    int64_t chosen = 0;
    for (const auto & c : r->candidates) chosen += c.n_heads;
    EXPECT_EQ(chosen, int64_t(n_l) * n_h);
    for (const auto & h : r->config.heads) {
        EXPECT_GE(h.score, 0.0f);
        EXPECT_LE(h.score, 1.0f);
    }
    EXPECT_LT(r->expected_density, 0.9);
    EXPECT_GT(r->expected_density, 0.05);

    // The sidecar it makes drives --prefill minference: the runtime takes its patterns.
    lc::test::temp_dir dir;
    lc::sidecar        sc;
    sc.n_layer    = n_l;
    sc.n_head     = n_h;
    sc.minference = lc::sidecar_minference{r->config};
    ASSERT_TRUE(lc::sidecar_write(dir.file("s.gguf"), sc).is_ok());
    lc::attn_config a;
    a.prefill = lc::prefill_method::MINFERENCE;
    a.sidecar = dir.file("s.gguf");
    auto attn = lc::attention::create(*l.m, a);
    ASSERT_TRUE(attn.is_ok());
    for (int il = 0; il < n_l; ++il)
        for (int h = 0; h < n_h; ++h) {
            EXPECT_EQ((*attn)->heads().at(il, h).pattern, r->config.at(il, h).pattern);
            EXPECT_EQ((*attn)->heads().at(il, h).a, r->config.at(il, h).a);
        }

    // A target above the prompt length makes every candidate dense: every head scores 1.
    p.target_keys = 4096;
    auto dense    = lc::minference_search(*l.m, prompt.tokens, p);
    ASSERT_TRUE(dense.is_ok());
    EXPECT_DOUBLE_EQ(dense->mean_score, 1.0);
}

} // namespace
