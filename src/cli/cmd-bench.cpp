// `longctx bench`: llama-bench-style speed tests, markdown or JSON on stdout.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "cli/commands.h"
#include "cli/common.h"

namespace lc::cli {

namespace {

std::vector<std::string> split_list(const std::string & s) {
    std::vector<std::string> out;
    size_t                   b = 0;
    for (size_t e; (e = s.find(',', b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
    out.push_back(s.substr(b));
    return out;
}

} // namespace

int cmd_bench(const args_t & args) {
    arg_parser p("bench", "longctx bench [-m MODEL] [-p 512,4096] [-n 128] [-d 0,4096] [-r 5] [-o md|json] [-f TEXT] "
                          "[--prefill M] [--decode M]");
    add_model_flags(p);
    p.add({"-p", "--n-prompt", "N,...", "prefill tests: prompt lengths (0: none)", "512"});
    p.add({"-n", "--n-gen", "N,...", "decode tests: tokens generated (0: none)", "128"});
    p.add({"-d", "--depth", "N,...", "tokens already in the context before each test", "0"});
    p.add({"-r", "--repetitions", "N", "timed repetitions per test (after one warm-up)", "5"});
    p.add({"-ub", "--ubatch-size", "N", "prompt tokens per forward pass", "512"});
    p.add({"-np", "--parallel", "N,...|max", "decode tests: sequences decoded together (batched decode steps); max: as "
                                             "many as --kv-memory holds", "1"});
    p.add({"", "--kv-memory", "BYTES", "KV-cache memory of batched tests, e.g. 512M (0: as the sequences need)", "0"});
    p.add({"", "--device", "cpu|cuda", "where the model runs (cuda: the whole model on the GPU, dense attention)",
           "cpu"});
    p.add({"-o", "--output", "md|json", "output format", "md"});
    p.add({"-f", "--file", "PATH", "cut prompts from this text (tokenized, repeated as needed) instead of random ids",
           ""});
    add_method_flags(p);
    bool done;
    if (int rc = parse_or_help(p, args, "bench", &done); done) return rc;
    bench_params bp;
    auto         np = p.get_int_list("--n-prompt", 0, 1 << 24);
    auto         ng = p.get_int_list("--n-gen", 0, 1 << 24);
    auto         nd = p.get_int_list("--depth", 0, 1 << 24);
    auto         nr = p.get_int("--repetitions", 1, 1000);
    auto         ub = p.get_int("--ubatch-size", 1, 1 << 20);
    auto         nt = p.get_int("--threads", 1, 1024);
    for (const status * st :
         {&np.get_status(), &ng.get_status(), &nd.get_status(), &nr.get_status(), &ub.get_status(), &nt.get_status()})
        if (!st->is_ok()) return fail("bench", *st);
    const std::string fmt = p.get("--output");
    if (fmt != "md" && fmt != "json")
        return fail("bench", error(status_code::INVALID_ARGUMENT, "-o must be md or json, got '%s'", fmt.c_str()));
    for (const std::string & v : split_list(p.get("--parallel"))) {
        if (v == "max") {
            bp.parallel.push_back(0);
            continue;
        }
        char *     end = nullptr;
        const long b   = std::strtol(v.c_str(), &end, 10);
        if (v.empty() || *end != '\0' || b < 1 || b > 1024)
            return fail("bench", error(status_code::INVALID_ARGUMENT,
                                       "-np expects sequence counts 1..1024 or max, got '%s'", v.c_str()));
        bp.parallel.push_back(int(b));
    }
    bp.parallel.erase(bp.parallel.begin()); // the default 1, replaced by the list
    auto kvm_bytes = p.get_bytes("--kv-memory");
    if (!kvm_bytes) return fail("bench", kvm_bytes.get_status());
    bp.kv_memory = *kvm_bytes;
    if (p.get("--device") != "cpu" && p.get("--device") != "cuda")
        return fail("bench", error(status_code::INVALID_ARGUMENT, "--device '%s': use cpu or cuda",
                                   p.get("--device").c_str()));
    bp.cuda = p.get("--device") == "cuda";
    if (bp.kv_memory == 0 && std::find(bp.parallel.begin(), bp.parallel.end(), 0) != bp.parallel.end())
        return fail("bench", error(status_code::INVALID_ARGUMENT, "-np max needs --kv-memory (the budget to fill)"));
    bp.n_prompt  = *np;
    bp.n_gen     = *ng;
    bp.depth     = *nd;
    bp.reps      = int(*nr);
    bp.n_ubatch  = *ub;
    bp.n_threads = int(*nt);
    auto method  = attn_config_from(p, true);
    if (!method) return fail("bench", method.get_status());
    // Sparse methods run beside dense; --decode and --kv may list several (topk,loki,... / h2o,d2o), each
    // combination run in turn.
    bp.methods = {attn_config{}};
    for (const std::string & d : split_list(p.get("--decode"))) {
        auto kind = decode_kind_parse(d);
        if (!kind) return fail("bench", kind.get_status());
        for (const std::string & k : split_list(p.get("--kv"))) {
            auto kvm = kv_method_parse(k);
            if (!kvm) return fail("bench", kvm.get_status());
            attn_config c = *method;
            c.decode      = *kind;
            c.kv          = *kvm;
            if (c.prefill != prefill_method::DENSE || c.decode != decode_kind::DENSE || c.kv != kv_method::FULL)
                bp.methods.push_back(c);
        }
    }

    auto lm = load_model(p);
    if (!lm) return fail("bench", lm.get_status());
    bench_env env;
    env.model_path = lm->path;
    if (p.has("--file")) {
        auto text = read_text_file(p.get("--file"));
        if (!text) return fail("bench", text.get_status());
        bp.text = lm->tok->encode(*text, false, false);
        if (bp.text.empty())
            return fail("bench",
                        error(status_code::INVALID_ARGUMENT, "-f '%s' has no tokens", p.get("--file").c_str()));
        env.prompt_source = p.get("--file");
    }
    bool header = false;
    auto rows   = bench_run(*lm->mdl, bp, env, [&](const bench_row & r) {
        if (fmt != "md") return;
        if (!header) std::fputs(bench_format_md_header(env).c_str(), stdout);
        header = true;
        std::fputs(bench_format_md_row(env, r).c_str(), stdout);
        std::fflush(stdout);
    });
    if (!rows) return fail("bench", rows.get_status());
    if (fmt == "json") std::fputs(bench_format_json(env, *rows).c_str(), stdout);
    return 0;
}

} // namespace lc::cli
