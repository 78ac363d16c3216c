// `longctx gguf info` end to end: runs the built executable on writer-made files and checks the listing,
// the one-line errors and the exit codes. Skips when the executable has not been built.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "gguf/gguf-test-util.h"

using namespace lc;
using namespace lc::test;

namespace {

struct run_result {
    int         rc = -1;
    std::string out, err;
};

std::string slurp(const std::string & path) {
    std::string s;
    FILE *      f = std::fopen(path.c_str(), "rb");
    if (!f) return s;
    char   buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
    std::fclose(f);
    return s;
}

std::string exe() {
    return std::string(LC_BINARY_DIR) + "/longctx";
}

run_result run(const temp_dir & dir, const std::string & args) {
    const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
    const std::string cmd = exe() + " " + args + " >" + out + " 2>" + err;
    const int         st  = std::system(cmd.c_str());
    run_result        r;
    r.rc  = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

bool contains(const std::string & s, const std::string & sub) {
    return s.find(sub) != std::string::npos;
}

} // namespace

class cmd_gguf : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!std::filesystem::exists(exe())) GTEST_SKIP() << exe() << " not built (cmake --build . --target longctx)";
    }
    temp_dir dir;
};

TEST_F(cmd_gguf, info_lists_keys_tensors_and_totals) {
    gguf_writer w = make_sample();
    w.set_str("tokenizer.chat_template", std::string(200, 'x') + "\n");
    const std::string path = dir.file("m.gguf");
    ASSERT_TRUE(w.write(path));
    const run_result r = run(dir, "gguf info " + path);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
    EXPECT_TRUE(contains(r.out, "version:     3\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "alignment:   32\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "size:        " + std::to_string(w.to_bytes().size()) + " bytes")) << r.out;
    EXPECT_TRUE(contains(r.out, "metadata: 8 keys")) << r.out;
    EXPECT_TRUE(contains(r.out, "general.architecture          STRING   \"llama\"\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "llama.block_count             UINT32   2\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "llama.rope.freq_base          FLOAT32  10000\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "tokenizer.ggml.add_bos_token  BOOL     true\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "x.i64                         INT64    -5\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "tokenizer.ggml.tokens         ARRAY    STRING[3] [\"<s>\", \"a\", \"b\"]\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "tokenizer.ggml.token_type     ARRAY    INT32[3] [3, 1, 1]\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "\"" + std::string(64, 'x') + "\"... (201 bytes)\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "tensors: 3\n")) << r.out;
    // token_embd: 64 x 3 F32 = 768 bytes at 0; attn_q: 64 x 5 Q4_1 = 200 bytes at 768; norm: 64 bytes at 992.
    EXPECT_TRUE(contains(r.out, "token_embd.weight       F32    [64, 3]           768             0\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "blk.0.attn_q.weight     Q4_1   [64, 5]           200           768\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "blk.0.attn_norm.weight  F32    [16]               64           992\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "  F32           2             208             832       832 B\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "  Q4_1          1             320             200       200 B\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "  total         3             528            1032     1.0 KiB\n")) << r.out;
}

TEST_F(cmd_gguf, errors_and_usage) {
    const std::string bad = dir.file("bad.gguf");
    write_bytes(bad, {'G', 'G', 'U', 'X', 3, 0, 0, 0});
    run_result r = run(dir, "gguf info " + bad);
    EXPECT_EQ(r.rc, 1);
    EXPECT_EQ(r.err, "longctx gguf: " + bad + ": bad magic 0x58554747 (expected \"GGUF\")\n");
    EXPECT_TRUE(r.out.empty());

    r = run(dir, "gguf info " + dir.file("absent.gguf"));
    EXPECT_EQ(r.rc, 1);
    EXPECT_TRUE(contains(r.err, "longctx gguf: " + dir.file("absent.gguf") + ": cannot open")) << r.err;

    r = run(dir, "gguf");
    EXPECT_EQ(r.rc, 2);
    r = run(dir, "gguf info");
    EXPECT_EQ(r.rc, 2);
    EXPECT_TRUE(contains(r.err, "info needs a MODEL file")) << r.err;
    r = run(dir, "gguf info --bogus x");
    EXPECT_EQ(r.rc, 2);
    EXPECT_TRUE(contains(r.err, "unknown option '--bogus'")) << r.err;
    r = run(dir, "gguf frobnicate");
    EXPECT_EQ(r.rc, 2);
    r = run(dir, "gguf --help");
    EXPECT_EQ(r.rc, 0);
    EXPECT_TRUE(contains(r.out, "usage: longctx gguf info MODEL")) << r.out;
    r = run(dir, "gguf info --help");
    EXPECT_EQ(r.rc, 0);
}

TEST_F(cmd_gguf, unsupported_types_are_listed_and_marked) {
    gguf_writer          w;
    std::vector<uint8_t> q(sizeof(block_q5_1) * 2, 0);
    w.add_tensor("w", dtype::Q5_1, {64}, q.data());
    const std::string path = dir.file("q51.gguf");
    ASSERT_TRUE(w.write(path));
    const run_result r = run(dir, "gguf info -m " + path);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "(not supported by this build)")) << r.out;
}

TEST_F(cmd_gguf, real_model) {
    const std::string path = model_path();
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not found: " << path;
    const run_result r = run(dir, "gguf info " + path);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "metadata: 33 keys")) << r.out.substr(0, 2000);
    EXPECT_TRUE(contains(r.out, "tensors: 272\n"));
    EXPECT_TRUE(contains(r.out, "llama.block_count"));
    EXPECT_TRUE(contains(r.out, "STRING[49152]"));
}
