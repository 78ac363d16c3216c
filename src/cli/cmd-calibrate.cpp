// `longctx calibrate minference`: the offline MInference pattern search (or the import of a MInference JSON
// config); `longctx calibrate loki`: the offline key PCA of Loki. Both write into the model's sidecar
// MODEL.longctx.gguf, keeping the other sections.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "calibrate/calib-text.h"
#include "calibrate/loki-pca.h"
#include "calibrate/minference-search.h"
#include "calibrate/sidecar.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "core/sha256.h"
#include "eval/corpus.h"

namespace lc::cli {

namespace {

void print_histogram(const minference_search_result & r, int64_t n_heads_searched) {
    std::printf("| candidate | budgets after re-timing | kernel time (ms) | heads | share |\n");
    std::printf("| --- | --- | ---: | ---: | ---: |\n");
    for (const minference_candidate & c : r.candidates) {
        std::printf("| %s(%lld, %lld) | (%lld, %lld) | %.3f | %lld | %.1f%% |\n", head_pattern_name(c.initial.pattern),
                    (long long)c.initial.a, (long long)c.initial.b, (long long)c.budget.a, (long long)c.budget.b,
                    1e3 * c.time_s, (long long)c.n_heads,
                    n_heads_searched ? 100.0 * double(c.n_heads) / double(n_heads_searched) : 0.0);
    }
}

// The sidecar at `out` as it is (empty when absent or unreadable), with the model's identity filled in.
sidecar sidecar_load_for_update(const std::string & out, const model_hparams & hp) {
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
    return sc;
}

int calibrate_minference(const args_t & args) {
    arg_parser p("calibrate minference",
                 "longctx calibrate minference [-m MODEL] [--calib-file TEXT] [--calib-len N] [--target-keys K] "
                 "[--timer cpu|cuda] [--import-json CONFIG] [-o SIDECAR]");
    add_model_flags(p);
    p.add({"", "--calib-file", "PATH",
           "calibration text (default: a generated KV-retrieval prompt, InfiniteBench style)", ""});
    p.add({"", "--calib-len", "N", "calibration prompt length in tokens (0: the model's context, at most 32768)", "0"});
    p.add({"", "--calib-seed", "N", "seed of the generated calibration prompt", "1"});
    p.add({"", "--target-keys", "K",
           "every candidate is re-timed to cost what an A-shape of K visible keys per query costs", "4096"});
    p.add({"", "--timer", "cpu|cuda",
           "the sparse kernel that re-times the candidates: ours on the CPU, or the GPU's (a build with "
           "-DLONGCTX_CUDA=ON and a GPU)",
           "cpu"});
    p.add({"", "--import-json", "PATH", "import a MInference per-head JSON config instead of searching", ""});
    p.add({"-o", "--output", "PATH", "sidecar to write (default: MODEL.longctx.gguf beside the model)", ""});
    bool done;
    if (int rc = parse_or_help(p, args, "calibrate", &done); done) return rc;
    auto calib_len = p.get_int("--calib-len", 0, 1 << 22);
    auto seed      = p.get_int("--calib-seed", 0, INT64_MAX);
    auto target    = p.get_int("--target-keys", 64, 1 << 22);
    auto threads   = p.get_int("--threads", 1, 1024);
    for (const status * st : {&calib_len.get_status(), &seed.get_status(), &target.get_status(), &threads.get_status()})
        if (!st->is_ok()) return fail("calibrate", *st);
    const std::string timer = p.get("--timer");
    if (timer != "cpu" && timer != "cuda")
        return fail("calibrate", error(status_code::INVALID_ARGUMENT, "--timer %s: expected cpu or cuda", timer.c_str()));
    plan_time_fn plan_time;
    if (timer == "cuda") {
        auto t = minference_gpu_plan_time();
        if (!t) return fail("calibrate", t.get_status());
        plan_time = std::move(*t);
    }

    auto lm = load_model(p);
    if (!lm) return fail("calibrate", lm.get_status());
    const model_hparams & hp  = lm->mdl->hparams();
    const std::string     out = p.has("--output") ? p.get("--output") : sidecar_path_for(lm->path);

    // Keep what the sidecar already holds for other methods.
    sidecar sc = sidecar_load_for_update(out, hp);

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
        sp.plan_time   = plan_time;
        LC_LOG_I("calibrate: candidates re-timed with the %s sparse kernel", timer == "cuda" ? "GPU's" : "CPU");
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

// Calibration sequences of `len` tokens (BOS first when the model adds one) until n_keys tokens in all (the last
// one shorter), cut in order from the token ids of `text`, wrapping around when the text is too short. Only as
// much of the text is tokenized as the sequences need.
result<std::vector<std::vector<int32_t>>> loki_sequences(const tokenizer & tok, const std::string & text, int64_t len,
                                                         int64_t n_keys) {
    const bool bos = tok.add_bos() && tok.bos() >= 0;
    if (len <= (bos ? 1 : 0))
        return error(status_code::INVALID_ARGUMENT, "--calib-len %lld is too short", (long long)len);
    const int64_t        n_seq  = (n_keys + len - 1) / len;
    const int64_t        n_body = n_keys - (bos ? n_seq : 0); // text tokens needed
    std::vector<int32_t> body;
    size_t               n_bytes = size_t(std::min<int64_t>(int64_t(text.size()), n_body * 6 + 4096));
    for (;;) {
        size_t cut = n_bytes;
        if (cut < text.size()) {
            const size_t nl = text.rfind('\n', cut);
            if (nl != std::string::npos && nl > 0) cut = nl + 1;
        }
        body = tok.encode(std::string_view(text).substr(0, cut), false, false);
        if (int64_t(body.size()) >= n_body || cut >= text.size()) break;
        n_bytes = std::min(text.size(), n_bytes * 2);
    }
    if (body.empty()) return error(status_code::INVALID_ARGUMENT, "calibration text has no tokens");
    std::vector<std::vector<int32_t>> seqs;
    size_t                            pos = 0;
    for (int64_t left = n_keys; left > 0;) {
        const int64_t        n = std::min(len, left);
        std::vector<int32_t> s;
        if (bos) s.push_back(tok.bos());
        while (int64_t(s.size()) < n) {
            s.push_back(body[pos]);
            pos = (pos + 1) % body.size();
        }
        left -= n;
        seqs.push_back(std::move(s));
    }
    return seqs;
}

int calibrate_loki(const args_t & args) {
    arg_parser p("calibrate loki", "longctx calibrate loki [-m MODEL] [--calib-file TEXT] [--calib-len N] "
                                   "[--calib-keys K] [--pre-rope] [-o SIDECAR]");
    add_model_flags(p);
    p.add({"", "--calib-file", "PATH", "calibration text (default: the King James Bible from Genesis 1:1)", ""});
    p.add({"", "--calib-len", "N", "tokens per calibration sequence (0: min(4096, the model's context))", "0"});
    p.add(
        {"", "--calib-keys", "K", "keys per (layer, KV head) to fit on: sequences are run until this many", "200000"});
    p.add({"", "--pre-rope", "",
           "fit on keys with RoPE undone, for analysis (their rank is lower); --decode loki needs the default "
           "post-RoPE basis",
           ""});
    p.add({"-o", "--output", "PATH", "sidecar to write (default: MODEL.longctx.gguf beside the model)", ""});
    bool done;
    if (int rc = parse_or_help(p, args, "calibrate", &done); done) return rc;
    auto calib_len  = p.get_int("--calib-len", 0, 1 << 22);
    auto calib_keys = p.get_int("--calib-keys", 1, int64_t(1) << 32);
    auto threads    = p.get_int("--threads", 1, 1024);
    for (const status * st : {&calib_len.get_status(), &calib_keys.get_status(), &threads.get_status()})
        if (!st->is_ok()) return fail("calibrate", *st);

    auto lm = load_model(p);
    if (!lm) return fail("calibrate", lm.get_status());
    const model_hparams & hp  = lm->mdl->hparams();
    const std::string     out = p.has("--output") ? p.get("--output") : sidecar_path_for(lm->path);
    const int64_t         len = *calib_len > 0 ? *calib_len : std::min<int64_t>(4096, hp.n_ctx_train);
    if (len > hp.n_ctx_train)
        return fail("calibrate",
                    error(status_code::OUT_OF_RANGE, "--calib-len %lld exceeds the model's context of %lld tokens",
                          (long long)len, (long long)hp.n_ctx_train));

    std::string text, source;
    if (p.has("--calib-file")) {
        auto t = read_text_file(p.get("--calib-file"));
        if (!t) return fail("calibrate", t.get_status());
        text   = std::move(*t);
        source = p.get("--calib-file");
    } else {
        auto c = eval::corpus_kjv();
        if (!c) return fail("calibrate", c.get_status());
        text   = std::move(c->text);
        source = "builtin:";
        source += c->id;
        source += " from Genesis 1:1";
    }
    const auto t_tok = std::chrono::steady_clock::now();
    auto       seqs  = loki_sequences(*lm->tok, text, len, *calib_keys);
    if (!seqs) return fail("calibrate", seqs.get_status());
    std::vector<int32_t> all;
    for (const auto & s : *seqs) all.insert(all.end(), s.begin(), s.end());
    char what[96];
    std::snprintf(what, sizeof what, ", %zu sequences of %lld tokens", seqs->size(), (long long)len);
    source += what;
    LC_LOG_I("calibrate loki: %s, %lld keys per KV head from %s%s (tokenized in %.1f s)", hp.name.c_str(),
             (long long)all.size(), source.c_str(), p.has("--pre-rope") ? ", pre-RoPE" : "",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count());

    loki_calib_params lp;
    lp.pre_rope    = p.has("--pre-rope");
    lp.n_threads   = int(*threads);
    const auto t0  = std::chrono::steady_clock::now();
    auto       res = loki_calibrate(*lm->mdl, *seqs, lp, [&](int64_t done, int64_t total) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        LC_LOG_I("calibrate loki: %lld/%lld keys per head, %.0f s, ETA %.0f s", (long long)done, (long long)total, el,
                       el / double(done) * double(total - done));
    });
    if (!res) return fail("calibrate", res.get_status());
    const double t_fit = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res->calib_source  = source;
    res->calib_sha256  = token_ids_sha256(all);

    // Per-layer summary: rank reaching 90% of the variance (mean over KV heads, and each head's), the share the
    // default rank D / 4 explains.
    const int D = hp.head_dim;
    std::printf("| layer | rank for 90%% (mean over KV heads) | per KV head | variance in the first %d dims |\n",
                std::max(1, D / 4));
    std::printf("| ---: | ---: | --- | ---: |\n");
    double sum_rank = 0;
    int    n_fit    = 0;
    for (int il = 0; il < hp.n_layer; ++il) {
        if (!res->fitted[size_t(il)]) continue;
        std::string per;
        double      mean = 0, var = 0;
        for (int g = 0; g < hp.n_head_kv; ++g) {
            const float *            c = res->curve_at(il, g);
            const std::vector<float> curve(c, c + D);
            const int                r = pca_rank_for(curve, 0.9);
            if (g) per += ' ';
            per += std::to_string(r);
            mean += double(r) / hp.n_head_kv;
            var += double(curve[size_t(std::max(1, D / 4) - 1)]) / hp.n_head_kv;
        }
        std::printf("| %d | %.1f | %s | %.1f%% |\n", il, mean, per.c_str(), 100.0 * var);
        sum_rank += mean;
        ++n_fit;
    }
    std::printf("\n%s keys, %d layers fitted (of %d), mean rank for 90%%: %.1f of %d; %.0f s\n",
                res->pre_rope ? "pre-RoPE" : "post-RoPE", n_fit, hp.n_layer, n_fit ? sum_rank / n_fit : 0.0, D, t_fit);

    sidecar sc = sidecar_load_for_update(out, hp);
    sc.loki    = std::move(*res);
    if (status st = sidecar_write(out, sc); !st) return fail("calibrate", st);
    std::printf("wrote %s\n", out.c_str());
    return 0;
}

} // namespace

int cmd_calibrate(const args_t & args) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::FILE * f = args.empty() ? stderr : stdout;
        std::fprintf(f, "usage: longctx calibrate minference|loki [options]   (--help after the method lists them)\n"
                        "  minference  offline per-head sparse prefill pattern search, written to MODEL.longctx.gguf\n"
                        "  loki        offline PCA of the keys per (layer, KV head) for --decode loki, written to "
                        "MODEL.longctx.gguf\n");
        return args.empty() ? 2 : 0;
    }
    const args_t rest(args.begin() + 1, args.end());
    if (args[0] == "minference") return calibrate_minference(rest);
    if (args[0] == "loki") return calibrate_loki(rest);
    return fail("calibrate", error(status_code::INVALID_ARGUMENT, "unknown calibration '%s'; use minference or loki",
                                   args[0].c_str()));
}

} // namespace lc::cli
