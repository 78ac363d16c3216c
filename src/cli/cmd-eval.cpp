// `longctx eval`: accuracy and fidelity evaluations (docs/eval.md): niah, ruler, ppl, fidelity, and report (tables
// and plots from result files). Every eval runs dense and the method given by the shared method flags on identical
// prompts, writes a JSON result file after each cell and resumes from it.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "eval/eval-common.h"
#include "eval/haystack.h"
#include "eval/niah.h"
#include "eval/results.h"

namespace lc::cli {

namespace {

using eval::json;

void add_eval_common_flags(arg_parser & p, const std::string & default_out) {
    add_model_flags(p);
    add_context_flags(p);
    p.add({"-o", "--out", "FILE", "JSON result file (resumed when it exists with the same settings)", default_out});
    p.add({"", "--overwrite", "", "start the result file over instead of resuming it", ""});
    p.add({"-s", "--seed", "N", "base seed of the generators", "42"});
}

// Usage errors first, then --help.
int parse_or_help(arg_parser & p, const args_t & args, const char * cmd, bool * done) {
    *done = true;
    if (status st = p.parse(args); !st) return fail(cmd, st);
    if (p.help_requested()) {
        p.print_help();
        return 0;
    }
    if (!p.positional().empty())
        return fail(cmd, error(status_code::INVALID_ARGUMENT, "unexpected argument '%s'", p.positional()[0].c_str()));
    *done = false;
    return 0;
}

std::string replace_ext(const std::string & path, const std::string & ext) {
    std::filesystem::path p(path);
    p.replace_extension(ext);
    return p.string();
}

// The haystack directory: --haystack, else ../shared/data/pg_essays or shared/data/pg_essays when present.
std::string default_haystack_dir() {
    for (const char * d : {"../shared/data/pg_essays", "shared/data/pg_essays"})
        if (std::filesystem::is_directory(d)) return d;
    return "";
}

json model_meta(const loaded_model & lm, const std::string & sha, const context & c) {
    return json{{"model", lm.path},          {"model_name", lm.mdl->hparams().name},
                {"model_sha256", sha},       {"weights", lm.mdl->weight_type_name()},
                {"n_ctx", c.n_ctx()},        {"threads", c.n_threads()},
                {"build", LC_VERSION_STRING}};
}

int cmd_eval_niah(const args_t & args) {
    const char * cmd = "eval niah";
    arg_parser   p(cmd, "longctx eval niah [-m MODEL] [--needle classic|numeric|passkey] [--lengths L,..] "
                          "[--depths D,..|START:STOP:STEP] [--rounds N] [--haystack DIR] [-o FILE] [method flags]");
    add_eval_common_flags(p, "eval-niah.json");
    p.add({"", "--needle", "KIND",
           "classic (San Francisco sentence), numeric (7-digit magic number for a city) or "
           "passkey (5-digit key in filler text)",
           "numeric"});
    p.add({"", "--lengths", "L,..",
           "context lengths in model tokens (default: the grid of EVAL_TASKS.md 1.5 for the "
           "model's trained context)",
           ""});
    p.add({"", "--depths", "D,..", "needle depths in percent, a list or START:STOP:STEP", "0:100:10"});
    p.add(
        {"", "--rounds", "N", "rounds per cell, each with its own haystack start and needle (EVAL_TASKS.md: 5)", "1"});
    p.add({"", "--haystack", "DIR",
           "directory of *.txt files (sorted order); default ../shared/data/pg_essays "
           "when present, else the built-in filler text",
           ""});
    p.add({"-n", "--n-predict", "N", "tokens to generate (0: classic 48, numeric 32, passkey 16)", "0"});
    p.add({"", "--no-chat", "", "plain prompt even when the model has a chat template", ""});
    p.add({"", "--svg", "FILE", "heatmap (default: the result file with .svg)", ""});
    bool done;
    int  rc = parse_or_help(p, args, cmd, &done);
    if (done) return rc;

    eval::niah_params np;
    {
        auto k = eval::niah_kind_parse(p.get("--needle"));
        if (!k) return fail(cmd, k.get_status());
        np.kind = *k;
        auto d  = eval::parse_number_list(p.get("--depths"), "--depths");
        if (!d) return fail(cmd, d.get_status());
        np.depths = *d;
        for (double x : np.depths)
            if (x < 0 || x > 100)
                return fail(cmd, error(status_code::INVALID_ARGUMENT, "--depths %g is outside [0, 100]", x));
        auto r = p.get_int("--rounds", 1, 1000);
        if (!r) return fail(cmd, r.get_status());
        np.rounds = int(*r);
        auto s    = p.get_int("--seed", 0, INT64_MAX);
        if (!s) return fail(cmd, s.get_status());
        np.seed = uint64_t(*s);
        auto n  = p.get_int("--n-predict", 0, 4096);
        if (!n) return fail(cmd, n.get_status());
        np.n_gen = int(*n) > 0 ? int(*n) : eval::niah_default_n_gen(np.kind);
    }
    auto lm = load_model(p);
    if (!lm) return fail(cmd, lm.get_status());
    const int64_t n_ctx_train = lm->mdl->hparams().n_ctx_train;
    if (p.has("--lengths")) {
        auto l = p.get_int_list("--lengths", 300, int64_t(1) << 31);
        if (!l) return fail(cmd, l.get_status());
        np.lengths = *l;
    } else if (n_ctx_train == 8192) {
        np.lengths = {1000, 2000, 3000, 4000, 6000, 8000};
    } else if (n_ctx_train == 32768) {
        np.lengths = {1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000};
    } else {
        return fail(cmd, error(status_code::INVALID_ARGUMENT,
                               "no default grid for a model trained on %lld tokens; give --lengths",
                               (long long)n_ctx_train));
    }
    const int64_t max_len = *std::max_element(np.lengths.begin(), np.lengths.end());

    auto cp = context_params_from(p);
    if (!cp) return fail(cmd, cp.get_status());
    // The prompt holds at most L - reserve context tokens plus the template; L + n_gen always fits.
    if (!p.has("--ctx-size")) cp->n_ctx = std::min(n_ctx_train, max_len + np.n_gen + 64);
    if (max_len + np.n_gen > (cp->n_ctx > 0 ? cp->n_ctx : n_ctx_train))
        return fail(cmd, error(status_code::OUT_OF_RANGE,
                               "--lengths up to %lld plus %d generated tokens exceed the context (%lld tokens)",
                               (long long)max_len, np.n_gen, (long long)(cp->n_ctx > 0 ? cp->n_ctx : n_ctx_train)));

    const tokenizer & tok = *lm->tok;
    np.use_chat           = !p.has("--no-chat") && !tok.chat_template().empty();

    eval::haystack    hay;
    const std::string dir = p.has("--haystack") ? p.get("--haystack") : default_haystack_dir();
    if (np.kind == eval::niah_kind::PASSKEY) {
        hay = eval::haystack::filler(tok);
    } else if (!dir.empty()) {
        auto h = eval::haystack::from_dir(dir, tok);
        if (!h) return fail(cmd, h.get_status());
        hay = std::move(*h);
    } else {
        LC_LOG_W("eval niah: no haystack directory (--haystack; ../shared/data/pg_essays absent); using the "
                 "built-in filler text");
        hay = eval::haystack::filler(tok);
    }

    auto slots = eval::method_slots_create(*lm->mdl, *cp);
    if (!slots) return fail(cmd, slots.get_status());
    auto sha = eval::model_file_sha256(lm->path);
    if (!sha) return fail(cmd, sha.get_status());

    json methods = json::array();
    for (const auto & s : *slots) methods.push_back(eval::method_json(s));
    json meta                  = model_meta(*lm, *sha, *slots->front().ctx);
    meta["task"]               = std::string("niah-") + eval::niah_kind_name(np.kind);
    meta["template"]           = eval::niah_template_version(np.kind);
    meta["haystack"]           = hay.id();
    meta["seed"]               = np.seed;
    meta["n_gen"]              = np.n_gen;
    meta["chat"]               = np.use_chat;
    meta["reserve"]            = np.reserve;
    meta["methods"]            = methods;
    meta["identity"]           = json{{"task", meta["task"]}, {"template", meta["template"]},
                            {"model_sha256", *sha}, {"haystack", hay.id()},
                            {"seed", np.seed},      {"n_gen", np.n_gen},
                            {"chat", np.use_chat},  {"reserve", np.reserve},
                            {"methods", methods}};
    const std::string out_path = p.get("--out");
    auto              out      = eval::result_file::open(out_path, "niah", meta, p.has("--overwrite"));
    if (!out) return fail(cmd, out.get_status());

    LC_LOG_I("eval niah: %s, %s needle, %zu lengths x %zu depths x %d rounds, haystack %s, %s, methods: %s%s",
             lm->mdl->hparams().name.c_str(), eval::niah_kind_name(np.kind), np.lengths.size(), np.depths.size(),
             np.rounds, hay.id().c_str(), np.use_chat ? "chat template" : "plain prompt", slots->front().label.c_str(),
             slots->size() > 1 ? (", " + (*slots)[1].label).c_str() : "");
    eval::eval_env env;
    env.mdl      = lm->mdl.get();
    env.tok      = &tok;
    env.slots    = &*slots;
    env.use_chat = np.use_chat;
    if (status st = eval::niah_run(np, hay, env, *out); !st) return fail(cmd, st);

    // Plots come from the file, not from memory.
    auto doc = eval::result_file::load(out_path);
    if (!doc) return fail(cmd, doc.get_status());
    auto svg = eval::niah_heatmap_svg(*doc);
    if (!svg) return fail(cmd, svg.get_status());
    const std::string svg_path = p.has("--svg") ? p.get("--svg") : replace_ext(out_path, ".svg");
    if (status st = eval::write_file_atomic(svg_path, *svg); !st) return fail(cmd, st);

    // Summary on stdout: mean score per method.
    for (const auto & s : *slots) {
        double sum = 0;
        int    n   = 0;
        for (const auto & rec : (*doc)["records"])
            for (const auto & run : rec["runs"])
                if (run["label"] == s.label) {
                    sum += run["score"].get<double>();
                    ++n;
                }
        std::printf("%-40s mean score %.4f over %d cells\n", s.label.c_str(), n ? sum / n : 0.0, n);
    }
    std::printf("results: %s\nheatmap: %s\n", out_path.c_str(), svg_path.c_str());
    return 0;
}

void print_eval_usage(FILE * f) {
    std::fprintf(f, "usage: longctx eval <task> [options]\n\ntasks:\n"
                    "  niah      needle in a haystack: classic, numeric needle, passkey; JSON + SVG heatmap\n"
                    "\n`longctx eval <task> --help` lists the options of a task.\n");
}

} // namespace

int cmd_eval(const args_t & args) {
    if (args.empty()) {
        print_eval_usage(stderr);
        return 2;
    }
    const std::string task = args[0];
    const args_t      rest(args.begin() + 1, args.end());
    if (task == "-h" || task == "--help" || task == "help") {
        print_eval_usage(stdout);
        return 0;
    }
    if (task == "niah") return cmd_eval_niah(rest);
    std::fprintf(stderr, "longctx eval: unknown task '%s'; tasks: niah (see longctx eval --help)\n", task.c_str());
    return 2;
}

} // namespace lc::cli
