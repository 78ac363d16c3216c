// `longctx calibrate minference`: the offline MInference pattern search (or the import of a MInference JSON
// config), written into the model's sidecar MODEL.longctx.gguf.
#include <chrono>
#include <cstdio>
#include <fstream>

#include "calibrate/calib-text.h"
#include "calibrate/minference-search.h"
#include "calibrate/sidecar.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "core/sha256.h"

namespace lc::cli {

namespace {

void print_histogram(const minference_search_result & r, int64_t n_heads_searched) {
    std::printf("| candidate | budgets after re-timing | kernel time (ms) | heads | share |\n");
    std::printf("| --- | --- | ---: | ---: | ---: |\n");
    for (const minference_candidate & c : r.candidates) {
        std::printf("| %s(%lld, %lld) | (%lld, %lld) | %.1f | %lld | %.1f%% |\n", head_pattern_name(c.initial.pattern),
                    (long long)c.initial.a, (long long)c.initial.b, (long long)c.budget.a, (long long)c.budget.b,
                    1e3 * c.time_s, (long long)c.n_heads,
                    n_heads_searched ? 100.0 * double(c.n_heads) / double(n_heads_searched) : 0.0);
    }
}

int calibrate_minference(const args_t & args) {
    arg_parser p("calibrate minference",
                 "longctx calibrate minference [-m MODEL] [--calib-file TEXT] [--calib-len N] [--target-keys K] "
                 "[--import-json CONFIG] [-o SIDECAR]");
    add_model_flags(p);
    p.add({"", "--calib-file", "PATH",
           "calibration text (default: a generated KV-retrieval prompt, InfiniteBench style)", ""});
    p.add({"", "--calib-len", "N", "calibration prompt length in tokens (0: the model's context, at most 32768)", "0"});
    p.add({"", "--calib-seed", "N", "seed of the generated calibration prompt", "1"});
    p.add({"", "--target-keys", "K",
           "every candidate is re-timed to cost what an A-shape of K visible keys per query costs", "4096"});
    p.add({"", "--import-json", "PATH", "import a MInference per-head JSON config instead of searching", ""});
    p.add({"-o", "--output", "PATH", "sidecar to write (default: MODEL.longctx.gguf beside the model)", ""});
    if (status st = p.parse(args); !st) return fail("calibrate", st);
    if (p.help_requested()) {
        p.print_help();
        return 0;
    }
    if (!p.positional().empty())
        return fail("calibrate",
                    error(status_code::INVALID_ARGUMENT, "unexpected argument '%s'", p.positional()[0].c_str()));
    auto calib_len = p.get_int("--calib-len", 0, 1 << 22);
    auto seed      = p.get_int("--calib-seed", 0, INT64_MAX);
    auto target    = p.get_int("--target-keys", 64, 1 << 22);
    auto threads   = p.get_int("--threads", 1, 1024);
    for (const status * st : {&calib_len.get_status(), &seed.get_status(), &target.get_status(), &threads.get_status()})
        if (!st->is_ok()) return fail("calibrate", *st);

    auto lm = load_model(p);
    if (!lm) return fail("calibrate", lm.get_status());
    const model_hparams & hp  = lm->mdl->hparams();
    const std::string     out = p.has("--output") ? p.get("--output") : sidecar_path_for(lm->path);

    // Keep what the sidecar already holds for other methods.
    sidecar sc;
    if (std::ifstream(out).good()) {
        auto old = sidecar_read(out, hp.n_layer, hp.n_head);
        if (old)
            sc = *old;
        else
            LC_LOG_W("calibrate: replacing unreadable sidecar %s (%s)", out.c_str(),
                     old.get_status().message().c_str());
    }
    sc.model_name = hp.name;
    sc.n_layer    = hp.n_layer;
    sc.n_head     = hp.n_head;

    sidecar_minference mi;
    if (p.has("--import-json")) {
        auto cfg = minference_config_import_json(p.get("--import-json"), hp.n_layer, hp.n_head);
        if (!cfg) return fail("calibrate", cfg.get_status());
        mi.config       = *cfg;
        mi.calib_source = "imported " + p.get("--import-json");
    } else {
        int64_t n = *calib_len > 0 ? *calib_len : std::min<int64_t>(hp.n_ctx_train, 32768);
        if (n > hp.n_ctx_train)
            return fail("calibrate",
                        error(status_code::OUT_OF_RANGE, "--calib-len %lld exceeds the model's context of %lld tokens",
                              (long long)n, (long long)hp.n_ctx_train));
        calib_prompt prompt;
        if (p.has("--calib-file")) {
            auto f = calib_from_file(*lm->tok, p.get("--calib-file"), n);
            if (!f) return fail("calibrate", f.get_status());
            prompt = *f;
        } else {
            prompt = calib_kv_retrieval(*lm->tok, n, uint64_t(*seed));
        }
        LC_LOG_I("calibrate: %s, %zu-token prompt from %s, target %lld keys per query", hp.name.c_str(),
                 prompt.tokens.size(), prompt.source.c_str(), (long long)*target);
        minference_search_params sp;
        sp.target_keys = *target;
        sp.n_threads   = int(*threads);
        const auto t0  = std::chrono::steady_clock::now();
        auto       res = minference_search(*lm->mdl, prompt.tokens, sp, [&](int done, int total) {
            const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            LC_LOG_I("calibrate: layer %d/%d searched, %.0f s, ETA %.0f s", done, total, el,
                           el / done * (total - done));
        });
        if (!res) return fail("calibrate", res.get_status());
        int64_t n_heads_searched = 0;
        for (const auto & c : res->candidates) n_heads_searched += c.n_heads;
        print_histogram(*res, n_heads_searched);
        std::printf("\nexpected density at %lld tokens: %.1f%% of causal pairs; mean score %.4f (fraction of output "
                    "elements within 5e-3 of dense)\n",
                    (long long)res->n_tokens, 100.0 * res->expected_density, res->mean_score);
        mi.config           = res->config;
        mi.calib_source     = prompt.source;
        mi.calib_sha256     = token_ids_sha256(prompt.tokens);
        mi.calib_n_tokens   = res->n_tokens;
        mi.expected_density = float(res->expected_density);
    }
    mi.config.source = "sidecar " + out;
    sc.minference    = mi;
    if (status st = sidecar_write(out, sc); !st) return fail("calibrate", st);
    std::printf("wrote %s\n", out.c_str());
    return 0;
}

} // namespace

int cmd_calibrate(const args_t & args) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::FILE * f = args.empty() ? stderr : stdout;
        std::fprintf(f,
                     "usage: longctx calibrate minference [options]   (--help after the method lists them)\n"
                     "  minference  offline per-head sparse prefill pattern search, written to MODEL.longctx.gguf\n");
        return args.empty() ? 2 : 0;
    }
    const args_t rest(args.begin() + 1, args.end());
    if (args[0] == "minference") return calibrate_minference(rest);
    return fail("calibrate",
                error(status_code::INVALID_ARGUMENT, "unknown calibration '%s'; use minference", args[0].c_str()));
}

} // namespace lc::cli
