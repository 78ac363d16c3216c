// Bad input to the `longctx` executable: unknown commands and flags, bad values, missing and truncated model
// files, prompts longer than -c, `serve` on a port in use. Each must end with exactly one line on stderr and exit code
// 1 (runtime) or 2 (usage), never a crash. Runs the built executable; skips when it has not been built.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "common/util.h"
#include "gguf/gguf-test-util.h"

using namespace lc;

namespace {

struct run_result {
    int         rc        = -1;
    bool        signalled = false;
    std::string err;
};

std::string exe() {
    return std::string(LC_BINARY_DIR) + "/longctx";
}

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

run_result run(const test::temp_dir & dir, const std::string & args) {
    const std::string err = dir.file("stderr.txt");
    const std::string cmd = exe() + " " + args + " >/dev/null 2>" + err + " </dev/null";
    const int         st  = std::system(cmd.c_str());
    run_result        r;
    r.signalled = WIFSIGNALED(st);
    r.rc        = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.err       = slurp(err);
    return r;
}

int count_lines(const std::string & s) {
    int n = 0;
    for (char c : s) n += c == '\n';
    return n;
}

} // namespace

class cli_errors : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!std::filesystem::exists(exe())) GTEST_SKIP() << exe() << " not built";
    }
    void expect_one_line_error(const std::string & args, int rc, const std::string & needle) {
        const run_result r = run(dir, args);
        EXPECT_FALSE(r.signalled) << args;
        EXPECT_EQ(r.rc, rc) << args << "\n" << r.err;
        EXPECT_EQ(count_lines(r.err), 1) << args << "\n" << r.err;
        EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": '" << needle << "' not in: " << r.err;
    }
    test::temp_dir dir;
};

TEST_F(cli_errors, usage) {
    expect_one_line_error("frobnicate", 2, "unknown command 'frobnicate'");
    expect_one_line_error("run --bogus -p hi", 2, "unknown flag '--bogus'");
    expect_one_line_error("run -p hi -n abc", 2, "--n-predict expects an integer, got 'abc'");
    expect_one_line_error("run -p hi -n", 2, "needs a value");
    expect_one_line_error("run -n 5", 2, "give a prompt with -p TEXT or -f FILE");
    expect_one_line_error("run -p hi --top-p 1.5", 2, "--top-p 1.5 is out of range");
    expect_one_line_error("run -p hi -t 0", 2, "--threads 0 is out of range");
    expect_one_line_error("bench -o xml", 2, "-o must be md or json");
    expect_one_line_error("bench -p 512,abc", 2, "comma-separated list of integers");
    expect_one_line_error("run -p hi --decode fast", 2, "--decode 'fast' is not a method");
    expect_one_line_error("bench --decode topk,fast", 2, "--decode 'fast' is not a method");
    expect_one_line_error("bench -np 0", 2, "-np expects sequence counts 1..1024 or max");
    expect_one_line_error("bench --kv-memory 12X", 2, "not a byte count");
    expect_one_line_error("bench -p 0 -n 4 -np max", 2, "-np max needs --kv-memory");
    expect_one_line_error("run -p hi --decode-budget 150%", 2, "--decode-budget 150%: at most 100%");
    expect_one_line_error("run -p hi --decode-budget 12.5", 2, "a number of tokens is a whole number");
    expect_one_line_error("run -p hi --lsh 10", 2, "--lsh '10': expected two integers");
    expect_one_line_error("run -p hi --decode-select both", 2, "--decode-select 'both': use head or kv");
    expect_one_line_error("run -p hi --loki-d 2.5", 2, "--loki-d 2.5: a rank is a whole number");
}

TEST_F(cli_errors, serve_flags) {
#if !LC_HAVE_SERVER
    GTEST_SKIP() << "built without longctx serve (-DLONGCTX_SERVER=OFF)";
#endif
    expect_one_line_error("serve --bogus", 2, "unknown flag '--bogus'");
    expect_one_line_error("serve --port 70000", 2, "--port 70000 is out of range");
    expect_one_line_error("serve -np 0", 2, "--parallel 0 is out of range");
    expect_one_line_error("serve --kv-memory 12X", 2, "not a byte count");
    expect_one_line_error("serve --max-body 0", 2, "--max-body 0");
    expect_one_line_error("serve --prefill magic", 2, "--prefill 'magic' is not a method");
    expect_one_line_error("serve extra", 2, "unexpected argument 'extra'");
    const std::string model = test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (model.empty()) GTEST_SKIP() << "default model not in the cache";
    expect_one_line_error("serve -m " + model + " -c 256 --kv-memory 1K", 2, "less than one page");
    // A port in use: one line and exit code 1, never a second server on the same port.
    const int sock = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(sock, 0);
    sockaddr_in addr{};
    addr.sin_family      = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port        = 0;
    ASSERT_EQ(::bind(sock, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(sock, 1), 0);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(::getsockname(sock, reinterpret_cast<sockaddr *>(&addr), &len), 0);
    const int port = ntohs(addr.sin_port);
    expect_one_line_error("serve -m " + model + " -c 256 --port " + std::to_string(port), 1, "cannot listen on");
    ::close(sock);
}

TEST_F(cli_errors, missing_and_corrupt_model_files) {
    expect_one_line_error("run -m " + dir.file("nope.gguf") + " -p hi", 1, "nope.gguf");
    expect_one_line_error("run -m " + dir.file("") + " -p hi", 2, "directory");
    expect_one_line_error("run -m no-such-model-name -p hi", 1, "no-such-model-name");

    // a valid small GGUF without a model in it, then truncated, then with a bad magic
    const auto bytes = test::make_sample().to_bytes();
    test::write_bytes(dir.file("sample.gguf"), bytes);
    expect_one_line_error("run -m " + dir.file("sample.gguf") + " -p hi", 1, "missing required key");
    test::write_bytes(dir.file("trunc.gguf"), std::vector<uint8_t>(bytes.begin(), bytes.begin() + 100));
    expect_one_line_error("run -m " + dir.file("trunc.gguf") + " -p hi", 1, "trunc.gguf");
    auto bad = bytes;
    bad[0]   = 'X';
    test::write_bytes(dir.file("magic.gguf"), bad);
    expect_one_line_error("bench -m " + dir.file("magic.gguf"), 1, "bad magic");
    test::write_bytes(dir.file("empty.gguf"), {});
    expect_one_line_error("run -m " + dir.file("empty.gguf") + " -p hi", 1, "empty.gguf");
}

TEST_F(cli_errors, prompt_longer_than_context) {
    const std::string model = test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (model.empty()) GTEST_SKIP() << "default model not in the cache";
    std::string text;
    for (int i = 0; i < 40; ++i) text += "word ";
    expect_one_line_error("run -m " + model + " -c 16 -n 4 -p '" + text + "'", 1, "exceeds the context of 16 tokens");
    expect_one_line_error("run -m " + model + " -c 100000 -p hi", 1, "exceeds llama.context_length 8192");
    expect_one_line_error("run -m " + model + " -f " + dir.file("missing.txt"), 1, "missing.txt");
    expect_one_line_error("run -m " + model + " -p hi --decode magicpig --lsh 20,150", 2, "outside 1..16");
    expect_one_line_error("run -m " + model + " -p hi --decode loki --sidecar none", 1, "longctx calibrate loki");
}
