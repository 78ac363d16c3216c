// Gemma 3 270M Q4_K_M near its 32k trained context, against llama.cpp: a 30,000-token prompt (Paul Graham essays)
// in a 32,768-token context, next-token logits (max |Δlogit|, KL, top-1) and 64 teacher-forced greedy steps at
// depth 30k. The prompt is 58 sliding windows long, so both the windowed local layers and the global layers'
// long-range attention are exercised. Label slow: measured 150 s wall (88 s CPU) on two shared cores.
// Fixtures: tests/fixtures/gemma3-long/README.md.
#include <gtest/gtest.h>

#include "model/parity-check.h"

using namespace lc;

// Thresholds, from measurements (tests/fixtures/gemma3-long/README.md, "Spread"), set above both our distance
// to llama.cpp and llama.cpp's own distance between its attention paths, as in test-gemma3-parity.cpp.
TEST(gemma3_long_parity, logits_and_greedy_30k) {
    const std::string path = test::cached_model("gemma-3-270m-q4_k_m.gguf");
    if (path.empty()) GTEST_SKIP() << "Gemma 3 270M (gemma-3-270m-q4_k_m.gguf) not in the model cache";
    const std::string base = test::fixture_path("gemma3-long/g5-30k");
    if (!test::file_exists(base + ".logits.f32")) GTEST_SKIP() << "fixtures absent";
    auto m = model::load(path);
    ASSERT_TRUE(m.is_ok()) << m.get_status().message();
    ASSERT_EQ((*m)->hparams().n_ctx_train, 32768);

    test::parity_limits lim;
    lim.max_abs_logit = 2.0;
    lim.max_kl        = 2.5e-2;
    lim.near_tie      = 1.0f;
    lim.min_agree     = 60;
    test::parity_print_header();
    const test::parity_result r = test::parity_check(**m, base, "g5-30k", 32768, lim);
    EXPECT_EQ(r.n_tokens, 30000u);
}
