// context::decode_sample() on the CPU path (the GPU path is tests/cuda/test-cuda-model.cpp): the same tokens as
// decode() followed by sampler::sample() with a sampler of the same seed, and sampler::next_uniform() returns the
// number sample() would have drawn (the GPU sampler relies on it). SmolLM2 from the model cache; skips without it.
#include <gtest/gtest.h>

#include <vector>

#include "common/util.h"
#include "runtime/context.h"
#include "runtime/sampling.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace lc;

TEST(ContextSample, DecodeSampleEqualsDecodeThenSample) {
    test::model_text mt = test::load_model_text(48);
    if (!mt.m) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf or pg_essays missing";
    const int      n_vocab = int(mt.m->hparams().n_vocab);
    context_params p;
    p.n_ctx     = 256;
    p.n_threads = 2;
    auto a      = context::create(*mt.m, p);
    auto b      = context::create(*mt.m, p);
    ASSERT_TRUE(a.is_ok() && b.is_ok());
    sampling_params sp;
    sp.seed = 99;
    sampler sa(sp), sb(sp), su(sp);
    auto    r = (*a)->decode_sample(mt.prompt, sa);
    ASSERT_TRUE(r.is_ok());
    ASSERT_TRUE((*b)->decode(mt.prompt).is_ok());
    for (int i = 0; i < 12; ++i) {
        // su draws the uniform number by hand and walks the distribution: the token sample() picks
        std::vector<token_prob> d;
        su.distribution((*b)->logits(), n_vocab, d);
        const double u   = su.next_uniform();
        double       cum = 0.0, sum = 0.0, near = 1.0;
        for (const token_prob & t : d) sum += t.p;
        int32_t by_hand = d.back().id;
        for (const token_prob & t : d) {
            cum += t.p / sum;
            near = std::min(near, std::abs(cum - u));
            if (u < cum) {
                by_hand = t.id;
                break;
            }
        }
        const int32_t want = sb.sample((*b)->logits(), n_vocab);
        if (near > 1e-6) EXPECT_EQ(by_hand, want) << "step " << i << " u " << u;
        EXPECT_EQ(*r, want) << "step " << i;
        r = (*a)->decode_sample({*r}, sa);
        ASSERT_TRUE(r.is_ok());
        ASSERT_TRUE((*b)->decode({want}).is_ok());
    }
    EXPECT_EQ((*a)->n_past(), (*b)->n_past());
    EXPECT_FALSE((*a)->decode_sample(std::vector<int32_t>{}, sa).is_ok());
}

} // namespace
