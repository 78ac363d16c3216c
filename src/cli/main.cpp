// The `longctx` executable: a table of subcommands over liblongctx.
#include <cstdio>
#include <cstring>
#include <string>

#include "lc-git-commit.h"
#include "cli/commands.h"

namespace {

struct subcommand {
    const char * name;
    int (*fn)(const lc::cli::args_t &);
    const char * help;
};

const subcommand k_commands[] = {
    {"run", lc::cli::cmd_run, "generate from a prompt or a file, streaming tokens"},
    {"chat", lc::cli::cmd_chat, "interactive chat with the model's chat template"},
    {"bench", lc::cli::cmd_bench, "speed: pp/tg tokens per second, llama-bench style"},
    {"gguf", lc::cli::cmd_gguf, "inspect a model file: metadata, tensors, types, sizes"},
    {"calibrate", lc::cli::cmd_calibrate, "offline per-model artifacts: MInference head patterns (sidecar GGUF)"},
#if LC_HAVE_SERVER
    {"serve", lc::cli::cmd_serve, "OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, SSE"},
#endif
    {"eval", lc::cli::cmd_eval, "accuracy against dense: needle in a haystack, RULER, perplexity, fidelity"},
};

void print_usage(FILE * f) {
    std::fprintf(f, "usage: longctx <command> [options]\n\ncommands:\n");
    for (const auto & c : k_commands) std::fprintf(f, "  %-10s %s\n", c.name, c.help);
    std::fprintf(f, "\n`longctx <command> --help` lists the options of a command and their defaults.\n");
}

} // namespace

int main(int argc, char ** argv) {
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    const std::string cmd = argv[1];
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
        print_usage(stdout);
        return 0;
    }
    if (cmd == "--version") {
        std::printf("longctx %s\n", LC_VERSION_STRING);
        return 0;
    }
    for (const auto & c : k_commands) {
        if (cmd == c.name) return c.fn(lc::cli::args_t(argv + 2, argv + argc));
    }
    std::string names;
    for (const auto & c : k_commands) names += std::string(names.empty() ? "" : ", ") + c.name;
    std::fprintf(stderr, "longctx: unknown command '%s'; commands: %s (see longctx --help)\n", cmd.c_str(),
                 names.c_str());
    return 2;
}
