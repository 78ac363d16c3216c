// Several sequences in one context: a batched decode step (one token of each sequence in one forward pass) gives
// each sequence the logits it gets decoded alone, with and without a KV policy per sequence; the KV memory budget
// is enforced (a prefill that does not fit fails and leaves every sequence as it was, and fits once pages are
// freed); bad batches are refused. Uses the cached SmolLM2 file and the essays in ../shared/data (skips without).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "common/util.h"
#include "model/model.h"
#include "runtime/context.h"

namespace {

std::unique_ptr<lc::context> make(const lc::model & m, int n_seq, size_t kv_memory = 0,
                                  lc::kv_method kv = lc::kv_method::FULL) {
    lc::context_params p;
    p.n_ctx     = 2048;
    p.n_threads = 2;
    p.n_seq     = n_seq;
    p.kv_memory = kv_memory;
    p.attn.kv   = kv;
    auto c      = lc::context::create(m, p);
    EXPECT_TRUE(c.is_ok()) << (c.is_ok() ? "" : c.get_status().message());
    return c.is_ok() ? std::move(*c) : nullptr;
}

int argmax(const float * x, int n) {
    return int(std::max_element(x, x + n) - x);
}

// The prompt of sequence i: a slice of the essay at offset 97 * i, of the given length.
std::vector<int32_t> prompt_of(const std::vector<int32_t> & text, int i, int64_t n) {
    return std::vector<int32_t>(text.begin() + 97 * i, text.begin() + 97 * i + n);
}

// Greedy decoding of n_steps tokens from each prompt, sequence by sequence in contexts of their own (the reference);
// returns the logits of every step [seq][step][n_vocab] and the tokens.
void decode_alone(const lc::model & m, const std::vector<std::vector<int32_t>> & prompts,
                  const std::vector<lc::kv_method> & kvs, int n_steps, std::vector<std::vector<float>> & logits,
                  std::vector<std::vector<int32_t>> & tokens) {
    const int n_vocab = int(m.hparams().n_vocab);
    logits.assign(prompts.size(), {});
    tokens.assign(prompts.size(), {});
    for (size_t i = 0; i < prompts.size(); ++i) {
        auto c = make(m, 1, 0, kvs[i]);
        ASSERT_TRUE(c->decode(prompts[i]).is_ok());
        for (int s = 0; s < n_steps; ++s) {
            logits[i].insert(logits[i].end(), c->logits(), c->logits() + n_vocab);
            tokens[i].push_back(argmax(c->logits(), n_vocab));
            ASSERT_TRUE(c->decode({tokens[i].back()}).is_ok());
        }
    }
}

void check_batched_equals_alone(const std::vector<lc::kv_method> & kvs) {
    lc::test::model_text f = lc::test::load_model_text(1500);
    if (!f.m) GTEST_SKIP() << "needs the cached default model and ../shared/data";
    const int                         n_vocab = int(f.m->hparams().n_vocab), n_steps = 8;
    const int64_t                     lens[3] = {300, 130, 420};
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 3; ++i) prompts.push_back(prompt_of(f.prompt, i, lens[i]));
    std::vector<std::vector<float>>   ref;
    std::vector<std::vector<int32_t>> ref_tok;
    decode_alone(*f.m, prompts, kvs, n_steps, ref, ref_tok);

    auto c = make(*f.m, 3);
    for (int i = 0; i < 3; ++i) {
        lc::attn_config a;
        a.kv = kvs[size_t(i)];
        ASSERT_TRUE(c->set_methods(i, a).is_ok());
        ASSERT_TRUE(c->decode_seq(i, prompts[size_t(i)]).is_ok());
    }
    double worst = 0.0;
    for (int s = 0; s < n_steps; ++s) {
        // The batch in a changing order; teacher-forced with the reference tokens.
        std::vector<int>     seqs = s % 2 ? std::vector<int>{2, 0, 1} : std::vector<int>{0, 1, 2};
        std::vector<int32_t> toks;
        for (int i : seqs) {
            const float * want = ref[size_t(i)].data() + size_t(s) * size_t(n_vocab);
            const float * got  = c->logits_of(i);
            for (int v = 0; v < n_vocab; ++v) worst = std::max(worst, double(std::fabs(want[v] - got[v])));
            EXPECT_EQ(argmax(got, n_vocab), ref_tok[size_t(i)][size_t(s)]) << "sequence " << i << " step " << s;
            toks.push_back(ref_tok[size_t(i)][size_t(s)]);
        }
        ASSERT_TRUE(c->decode_step(seqs, toks).is_ok());
    }
    // Batching changes only the order of float sums inside the products (the same quantized rows).
    EXPECT_LT(worst, 1e-3) << "max |logit difference| between batched and alone";
    std::printf("max |logit difference| batched vs alone: %.3g\n", worst);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(c->n_past(i), lens[i] + n_steps);
}

} // namespace

TEST(batched_decode, equals_each_sequence_alone) {
    check_batched_equals_alone({lc::kv_method::FULL, lc::kv_method::FULL, lc::kv_method::FULL});
}

TEST(batched_decode, equals_alone_with_a_kv_policy_per_sequence) {
    check_batched_equals_alone({lc::kv_method::H2O, lc::kv_method::FULL, lc::kv_method::STREAMING});
}

TEST(batched_decode, kv_memory_is_enforced) {
    lc::test::model_text f = lc::test::load_model_text(1500);
    if (!f.m) GTEST_SKIP() << "needs the cached default model and ../shared/data";
    // Room for 1024 tokens in every layer: sequence 0 takes 640, sequence 1's 512 do not fit.
    auto probe = make(*f.m, 1);
    auto c     = make(*f.m, 2, probe->kv_bytes_for(1024));
    ASSERT_TRUE(c);
    EXPECT_EQ(c->kv_bytes_capacity(), probe->kv_bytes_for(1024));
    ASSERT_TRUE(c->decode_seq(0, prompt_of(f.prompt, 0, 640)).is_ok());
    std::vector<float> before(c->logits_of(0), c->logits_of(0) + f.m->hparams().n_vocab);
    const size_t       free0 = c->kv_bytes_free();
    EXPECT_EQ(free0, c->kv_bytes_capacity() - c->kv_bytes_for(640));
    lc::status st = c->decode_seq(1, prompt_of(f.prompt, 1, 512));
    EXPECT_EQ(st.code(), lc::status_code::RESOURCE_EXHAUSTED) << st.message();
    // Nothing of the failed prefill is kept, sequence 0 is untouched.
    EXPECT_EQ(c->n_past(1), 0);
    EXPECT_EQ(c->kv_bytes_free(), free0);
    EXPECT_EQ(c->kv_bytes_held(1), 0u);
    ASSERT_TRUE(c->decode_step({0}, {argmax(before.data(), int(before.size()))}).is_ok());
    // Clearing sequence 0 returns its pages; the prompt then fits.
    c->clear(0);
    EXPECT_EQ(c->kv_bytes_free(), c->kv_bytes_capacity());
    EXPECT_TRUE(c->decode_seq(1, prompt_of(f.prompt, 1, 512)).is_ok());
}

TEST(batched_decode, bad_batches_are_refused) {
    lc::test::model_text f = lc::test::load_model_text(64);
    if (!f.m) GTEST_SKIP() << "needs the cached default model and ../shared/data";
    auto c = make(*f.m, 2);
    ASSERT_TRUE(c->decode_seq(0, f.prompt).is_ok());
    ASSERT_TRUE(c->decode_seq(1, f.prompt).is_ok());
    EXPECT_EQ(c->decode_step({0, 0}, {1, 2}).code(), lc::status_code::INVALID_ARGUMENT);
    EXPECT_EQ(c->decode_step({0, 2}, {1, 2}).code(), lc::status_code::INVALID_ARGUMENT);
    EXPECT_EQ(c->decode_step({0, 1}, {1}).code(), lc::status_code::INVALID_ARGUMENT);
    EXPECT_EQ(c->decode_step({}, {}).code(), lc::status_code::INVALID_ARGUMENT);
    EXPECT_EQ(c->decode_seq(-1, {1}).code(), lc::status_code::INVALID_ARGUMENT);
    lc::attn_config a;
    a.kv = lc::kv_method::H2O;
    EXPECT_EQ(c->set_methods(1, a).code(), lc::status_code::INVALID_ARGUMENT); // holds tokens
    c->clear(1);
    EXPECT_TRUE(c->set_methods(1, a).is_ok());
    EXPECT_EQ(c->n_past(0), int64_t(f.prompt.size()));
    lc::context_params p;
    p.n_seq = 0;
    EXPECT_FALSE(lc::context::create(*f.m, p).is_ok());
}
