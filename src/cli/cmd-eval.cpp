// `longctx eval`: accuracy and fidelity evaluations (docs/eval.md): niah, ruler, ppl, fidelity, and report (tables
// and plots from result files). Every eval runs dense and the method given by the shared method flags on identical
// prompts, writes a JSON result file after each cell and resumes from it.
#include <cstdio>
#include <filesystem>

#include "lc-git-commit.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "eval/corpus.h"
#include "eval/eval-common.h"
#include "eval/fidelity.h"
#include "eval/haystack.h"
#include "eval/niah.h"
#include "eval/ppl.h"
#include "eval/report.h"
#include "eval/results.h"
#include "eval/ruler.h"

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

// Writes the records not yet on disk whether the run succeeded or not; the run's error comes first.
status flushed(status run, eval::result_file & out) {
    status f = out.flush();
    return run ? f : run;
}

// What every model-running eval sets up: the model, the contexts of dense and the method, the model's hash, and the
// meta/identity of the result file.
struct eval_setup {
    loaded_model                   lm;
    context_params                 cp;
    std::vector<eval::method_slot> slots;
    std::string                    sha;
    json                           meta;
    json                           methods;
};

// n_ctx_needed: the context the eval needs when -c is not given (capped at the trained context).
result<eval_setup> eval_setup_create(const arg_parser & p, loaded_model lm, int64_t n_ctx_needed) {
    eval_setup s;
    s.lm = std::move(lm);
    LC_ASSIGN_OR_RETURN(s.cp, context_params_from(p));
    const int64_t n_ctx_train = s.lm.mdl->hparams().n_ctx_train;
    if (!p.has("--ctx-size")) s.cp.n_ctx = std::min(n_ctx_train, n_ctx_needed);
    const int64_t n_ctx = s.cp.n_ctx > 0 ? s.cp.n_ctx : n_ctx_train;
    if (n_ctx_needed > n_ctx)
        return error(status_code::OUT_OF_RANGE,
                     "this eval needs a context of %lld tokens but it is %lld (the model was trained on %lld); lower "
                     "the lengths or raise -c",
                     (long long)n_ctx_needed, (long long)n_ctx, (long long)n_ctx_train);
    LC_ASSIGN_OR_RETURN(s.slots, eval::method_slots_create(*s.lm.mdl, s.cp));
    LC_ASSIGN_OR_RETURN(s.sha, eval::model_file_sha256(s.lm.path));
    s.methods = json::array();
    for (const auto & m : s.slots) s.methods.push_back(eval::method_json(m));
    s.meta            = model_meta(s.lm, s.sha, *s.slots.front().ctx);
    s.meta["methods"] = s.methods;
    return s;
}

// --corpus kjv|essays or --file FILE.
result<eval::corpus> corpus_from(const arg_parser & p) {
    if (p.has("--file")) return eval::corpus_file(p.get("--file"));
    const std::string c = p.get("--corpus");
    if (c == "kjv") return eval::corpus_kjv();
    if (c == "essays") {
        const std::string dir = default_haystack_dir();
        if (dir.empty())
            return error(status_code::NOT_FOUND, "--corpus essays: ../shared/data/pg_essays not found; pass --file");
        return eval::corpus_dir(dir);
    }
    return error(status_code::INVALID_ARGUMENT, "--corpus '%s' is not one of kjv, essays (or pass --file)", c.c_str());
}

void add_corpus_flags(arg_parser & p) {
    p.add({"", "--corpus", "NAME",
           "text: kjv (King James Bible, Debian bible-kjv, public domain) or essays (../shared/data/pg_essays)",
           "kjv"});
    p.add({"-f", "--file", "FILE", "text file to use instead of --corpus", ""});
}

int cmd_eval_fidelity(const args_t & args) {
    const char * cmd = "eval fidelity";
    arg_parser   p(cmd,
                   "longctx eval fidelity [-m MODEL] --prefill|--decode METHOD [--lengths L,..] [--docs N] [--corpus kjv|"
                     "essays | -f FILE] [-o FILE]");
    add_eval_common_flags(p, "eval-fidelity.json");
    add_corpus_flags(p);
    p.add({"", "--lengths", "L,..", "document lengths in tokens (default: 4096, at most the trained context)", ""});
    p.add({"", "--docs", "N", "documents per length (consecutive slices of the text)", "1"});
    p.add({"", "--bucket", "N", "positions per bucket in the records", "1024"});
    p.add({"", "--decode-tail", "N",
           "last N tokens of each document fed as single-token decode steps (auto: 256 with a --decode method or a "
           "KV policy, else 0)",
           "auto"});
    p.add({"", "--layer-sample", "N",
           "per-layer attention-mass recall and output error on every N-th 64-query block (1: all; 0: off)", "4"});
    bool done;
    int  rc = parse_or_help(p, args, cmd, &done);
    if (done) return rc;
    auto docs = p.get_int("--docs", 1, 100000);
    if (!docs) return fail(cmd, docs.get_status());
    auto bucket = p.get_int("--bucket", 1, int64_t(1) << 30);
    if (!bucket) return fail(cmd, bucket.get_status());
    auto lm = load_model(p);
    if (!lm) return fail(cmd, lm.get_status());
    eval::fidelity_params fp;
    fp.docs   = int(*docs);
    fp.bucket = *bucket;
    auto layer_sample = p.get_int("--layer-sample", 0, 1 << 20);
    if (!layer_sample) return fail(cmd, layer_sample.get_status());
    fp.layer_sample = int(*layer_sample);
    if (p.get("--decode-tail") != "auto") {
        auto tail = p.get_int("--decode-tail", 0, int64_t(1) << 30);
        if (!tail) return fail(cmd, tail.get_status());
        fp.decode_tail = *tail;
    } else {
        auto a = attn_config_from(p);
        if (!a) return fail(cmd, a.get_status());
        fp.decode_tail = a->decode != decode_kind::DENSE || a->kv != kv_method::FULL ? 256 : 0;
    }
    if (p.has("--lengths")) {
        auto l = p.get_int_list("--lengths", 2, int64_t(1) << 31);
        if (!l) return fail(cmd, l.get_status());
        fp.lengths = *l;
    } else {
        fp.lengths = {std::min<int64_t>(4096, lm->mdl->hparams().n_ctx_train)};
    }
    const int64_t max_len = *std::max_element(fp.lengths.begin(), fp.lengths.end());
    auto          cor     = corpus_from(p);
    if (!cor) return fail(cmd, cor.get_status());
    auto st = eval_setup_create(p, std::move(*lm), max_len);
    if (!st) return fail(cmd, st.get_status());
    if (st->slots.size() < 2)
        return fail(cmd, error(status_code::INVALID_ARGUMENT,
                               "fidelity compares a method with dense: pass a method, e.g. --prefill vslash"));
    const tokenizer &          tok  = *st->lm.tok;
    const std::vector<int32_t> body = eval::encode_plain(tok, cor->text);
    json &                     meta = st->meta;
    meta["task"]                    = "fidelity";
    meta["corpus"]                  = cor->id;
    meta["ubatch"]                  = st->cp.n_ubatch;
    meta["layer_sample"]            = fp.layer_sample; // not in the identity: files made before it resume
    meta["identity"]           = json{{"task", "fidelity"},           {"model_sha256", st->sha}, {"corpus", cor->id},
                            {"ubatch", st->cp.n_ubatch},    {"bucket", fp.bucket},     {"methods", st->methods},
                            {"decode_tail", fp.decode_tail}};
    const std::string out_path = p.get("--out");
    auto              out      = eval::result_file::open(out_path, "fidelity", meta, p.has("--overwrite"));
    if (!out) return fail(cmd, out.get_status());
    LC_LOG_I("eval fidelity: %s, %s (%zu tokens), %s against dense, chunks of %lld tokens",
             st->lm.mdl->hparams().name.c_str(), cor->id.c_str(), body.size(), st->slots[1].label.c_str(),
             (long long)st->cp.n_ubatch);
    eval::eval_env env;
    env.mdl   = st->lm.mdl.get();
    env.tok   = &tok;
    env.slots = &st->slots;
    env.chunk = st->cp.n_ubatch;
    if (status s = flushed(eval::fidelity_run(fp, body, env, *out), *out); !s) return fail(cmd, s);
    auto doc = eval::result_file::load(out_path);
    if (!doc) return fail(cmd, doc.get_status());
    std::printf("%-8s %-5s %-12s %-12s %-10s %-9s %-9s %-10s %-12s %-12s %s\n", "length", "doc", "KL mean", "KL max",
                "top-1", "density", "recall", "rel err", "decode KL", "decode top-1", "decode keys");
    for (const auto & r : (*doc)["records"]) {
        std::printf("%-8lld %-5d %-12.4g %-12.4g %-10.4f %-9.4f", (long long)r["length"].get<int64_t>(),
                    r["doc"].get<int>(), r["kl_mean"].get<double>(), r["kl_max"].get<double>(),
                    r["top1_agree"].get<double>(), r["runs"][1]["density"].get<double>());
        if (r.contains("attn_recall_mean"))
            std::printf(" %-9.4f %-10.3g", r["attn_recall_mean"].get<double>(), r["attn_rel_err_mean"].get<double>());
        else
            std::printf(" %-9s %-10s", "-", "-");
        if (r.contains("decode_tail"))
            std::printf(" %-12.4g %-12.4f %.4f\n", r["decode_kl_mean"].get<double>(),
                        r["decode_top1_agree"].get<double>(), r["runs"][1]["decode_keys"].get<double>());
        else
            std::printf(" -            -            -\n");
    }
    std::printf("recall and rel err: means over layers without a window (per layer: the file, or longctx eval report)\n");
    std::printf("results: %s\n", out_path.c_str());
    return 0;
}

int cmd_eval_ppl(const args_t & args) {
    const char * cmd = "eval ppl";
    arg_parser   p(cmd, "longctx eval ppl [-m MODEL] [--protocol prefill|sliding|decode] [--corpus kjv|essays | -f "
                          "FILE] [protocol options] [-o FILE] [method flags]");
    add_eval_common_flags(p, "eval-ppl.json");
    add_corpus_flags(p);
    p.add({"", "--protocol", "P",
           "prefill (A: one pass over L tokens), sliding (B: window W, stride S), decode (C: prefill P tokens, then "
           "teacher-forced decode to N)",
           "prefill"});
    p.add({"", "--lengths", "L,..", "A: document lengths (default 1024,2048,4096, at most the trained context)", ""});
    p.add({"", "--docs", "N", "A, C: documents per length (consecutive slices of the text)", "1"});
    p.add({"", "--last", "K", "A: score only the last K positions (0: all)", "0"});
    p.add({"", "--window", "W", "B: window (default: min(2048, trained context))", "0"});
    p.add({"", "--stride", "S", "B: stride", "256"});
    p.add({"", "--n-tokens", "N", "B: tokens scored; C: prefix + decoded tokens", "4096"});
    p.add({"", "--prefix", "P", "C: prefilled tokens", "1024"});
    p.add({"", "--bucket", "N", "C: positions per bucket", "1024"});
    bool done;
    int  rc = parse_or_help(p, args, cmd, &done);
    if (done) return rc;
    eval::ppl_params pp;
    {
        auto pr = eval::ppl_protocol_parse(p.get("--protocol"));
        if (!pr) return fail(cmd, pr.get_status());
        pp.protocol = *pr;
        for (auto [flag, dst, lo] : {std::tuple{"--last", &pp.last, int64_t(0)},
                                     {"--window", &pp.window, int64_t(0)},
                                     {"--stride", &pp.stride, int64_t(1)},
                                     {"--n-tokens", &pp.n_tokens, int64_t(2)},
                                     {"--prefix", &pp.prefix, int64_t(1)},
                                     {"--bucket", &pp.bucket, int64_t(1)}}) {
            auto v = p.get_int(flag, lo, int64_t(1) << 31);
            if (!v) return fail(cmd, v.get_status());
            *dst = *v;
        }
        auto d = p.get_int("--docs", 1, 100000);
        if (!d) return fail(cmd, d.get_status());
        pp.docs = int(*d);
    }
    auto lm = load_model(p);
    if (!lm) return fail(cmd, lm.get_status());
    const int64_t n_ctx_train = lm->mdl->hparams().n_ctx_train;
    int64_t       need        = 0;
    if (pp.protocol == eval::ppl_protocol::PREFILL) {
        if (p.has("--lengths")) {
            auto l = p.get_int_list("--lengths", 2, int64_t(1) << 31);
            if (!l) return fail(cmd, l.get_status());
            pp.lengths = *l;
        } else {
            for (int64_t L : {1024, 2048, 4096})
                if (L <= n_ctx_train) pp.lengths.push_back(L);
        }
        need = *std::max_element(pp.lengths.begin(), pp.lengths.end());
    } else if (pp.protocol == eval::ppl_protocol::SLIDING) {
        if (pp.window == 0) pp.window = std::min<int64_t>(2048, n_ctx_train);
        if (pp.stride > pp.window)
            return fail(cmd, error(status_code::INVALID_ARGUMENT, "--stride %lld exceeds --window %lld",
                                   (long long)pp.stride, (long long)pp.window));
        need = pp.window;
    } else {
        if (pp.prefix >= pp.n_tokens)
            return fail(cmd, error(status_code::INVALID_ARGUMENT, "--prefix %lld must be below --n-tokens %lld",
                                   (long long)pp.prefix, (long long)pp.n_tokens));
        need = pp.n_tokens;
    }
    auto cor = corpus_from(p);
    if (!cor) return fail(cmd, cor.get_status());
    auto st = eval_setup_create(p, std::move(*lm), need);
    if (!st) return fail(cmd, st.get_status());
    const tokenizer &          tok  = *st->lm.tok;
    const std::vector<int32_t> body = eval::encode_plain(tok, cor->text);
    json &                     meta = st->meta;
    meta["task"]                    = std::string("ppl-") + eval::ppl_protocol_name(pp.protocol);
    meta["corpus"]                  = cor->id;
    meta["averaging"]               = "micro (pooled tokens)";
    meta["bos"]                     = tok.add_bos();
    meta["decode"]                  = pp.protocol == eval::ppl_protocol::DECODE
                                          ? "each scored token is a decode step: the method's decode attention and KV policy"
                                          : "none: tokens are scored from prefill passes";
    meta["identity"]                = json{{"task", meta["task"]},
                            {"model_sha256", st->sha},
                            {"corpus", cor->id},
                            {"ubatch", st->cp.n_ubatch},
                            {"methods", st->methods}};
    const std::string out_path      = p.get("--out");
    auto              out           = eval::result_file::open(out_path, "ppl", meta, p.has("--overwrite"));
    if (!out) return fail(cmd, out.get_status());
    LC_LOG_I("eval ppl: %s, protocol %s, %s (%zu tokens), methods: %s%s", st->lm.mdl->hparams().name.c_str(),
             eval::ppl_protocol_name(pp.protocol), cor->id.c_str(), body.size(), st->slots[0].label.c_str(),
             st->slots.size() > 1 ? (", " + st->slots[1].label).c_str() : "");
    eval::eval_env env;
    env.mdl   = st->lm.mdl.get();
    env.tok   = &tok;
    env.slots = &st->slots;
    env.chunk = st->cp.n_ubatch;
    if (status s = flushed(eval::ppl_run(pp, body, env, *out), *out); !s) return fail(cmd, s);
    auto doc = eval::result_file::load(out_path);
    if (!doc) return fail(cmd, doc.get_status());
    auto rows = eval::ppl_summary(*doc);
    if (!rows) return fail(cmd, rows.get_status());
    std::printf("%-24s %-44s %10s %10s\n", "setting", "method", "tokens", "ppl");
    for (const auto & r : *rows)
        std::printf("%-24s %-44s %10lld %10.4f\n", r.group.c_str(), r.label.c_str(), (long long)r.n_scored, r.ppl);
    std::printf("results: %s\n", out_path.c_str());
    return 0;
}

int cmd_eval_ruler(const args_t & args) {
    const char * cmd = "eval ruler";
    arg_parser   p(cmd, "longctx eval ruler [-m MODEL] [--tasks T,..] [--lengths L,..] [--samples N] [-o FILE] "
                          "[method flags]");
    add_eval_common_flags(p, "eval-ruler.json");
    p.add({"", "--tasks", "T,..",
           "tasks: all (the 11 synthetic ones) or a list of niah_single_1..3, niah_multikey_1..3, niah_multivalue, "
           "niah_multiquery, vt, cwe, fwe",
           "all"});
    p.add({"", "--lengths", "L,..", "lengths in model tokens (default: 4096,8192 for an 8k model; 4096..32768 for 32k)",
           ""});
    p.add({"", "--samples", "N", "samples per task and length (RULER: 500)", "5"});
    p.add({"", "--dict", "FILE", "word list (Debian wamerican)", "/usr/share/dict/american-english"});
    p.add({"", "--haystack", "DIR",
           "essay haystack (*.txt); default ../shared/data/pg_essays when present, else the "
           "essay tasks use the noise haystack",
           ""});
    p.add({"", "--no-chat", "", "plain prompt even when the model has a chat template", ""});
    bool done;
    int  rc = parse_or_help(p, args, cmd, &done);
    if (done) return rc;
    eval::ruler_params rp;
    if (p.get("--tasks") == "all") {
        rp.tasks = eval::ruler_task_names();
    } else {
        const std::string s = p.get("--tasks");
        size_t            a = 0;
        while (a <= s.size()) {
            const size_t b = s.find(',', a);
            rp.tasks.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
            if (b == std::string::npos) break;
            a = b + 1;
        }
        const auto & all = eval::ruler_task_names();
        for (const auto & t : rp.tasks)
            if (std::find(all.begin(), all.end(), t) == all.end())
                return fail(cmd, error(status_code::INVALID_ARGUMENT, "--tasks: unknown task '%s'", t.c_str()));
    }
    auto ns = p.get_int("--samples", 1, 100000);
    if (!ns) return fail(cmd, ns.get_status());
    rp.samples = int(*ns);
    auto sd    = p.get_int("--seed", 0, INT64_MAX);
    if (!sd) return fail(cmd, sd.get_status());
    rp.seed = uint64_t(*sd);
    auto lm = load_model(p);
    if (!lm) return fail(cmd, lm.get_status());
    const int64_t n_ctx_train = lm->mdl->hparams().n_ctx_train;
    if (p.has("--lengths")) {
        auto l = p.get_int_list("--lengths", 256, int64_t(1) << 31);
        if (!l) return fail(cmd, l.get_status());
        rp.lengths = *l;
    } else {
        for (int64_t L : {4096, 8192, 16384, 32768})
            if (L <= n_ctx_train) rp.lengths.push_back(L);
    }
    const int64_t     max_len = *std::max_element(rp.lengths.begin(), rp.lengths.end());
    const std::string dir     = p.has("--haystack") ? p.get("--haystack") : default_haystack_dir();
    auto              words   = eval::ruler_words_load(p.get("--dict"), dir);
    if (!words) return fail(cmd, words.get_status());
    if (words->essay.empty()) LC_LOG_W("eval ruler: no essay haystack; essay tasks use the noise haystack");
    auto st = eval_setup_create(p, std::move(*lm), max_len);
    if (!st) return fail(cmd, st.get_status());
    const tokenizer & tok      = *st->lm.tok;
    const bool        use_chat = !p.has("--no-chat") && !tok.chat_template().empty();
    json &            meta     = st->meta;
    meta["task"]               = "ruler";
    meta["template"]           = eval::ruler_template_version;
    meta["words"]              = words->words_id;
    meta["essays"]             = words->essay_id;
    meta["seed"]               = rp.seed;
    meta["chat"]               = use_chat;
    meta["tasks_note"]         = "11 synthetic tasks (qa_1, qa_2 need SQuAD/HotpotQA): means are over the tasks run";
    meta["identity"]           = json{{"task", "ruler"},           {"template", eval::ruler_template_version},
                            {"model_sha256", st->sha},   {"words", words->words_id},
                            {"essays", words->essay_id}, {"seed", rp.seed},
                            {"chat", use_chat},          {"methods", st->methods}};
    const std::string out_path = p.get("--out");
    auto              out      = eval::result_file::open(out_path, "ruler", meta, p.has("--overwrite"));
    if (!out) return fail(cmd, out.get_status());
    LC_LOG_I("eval ruler: %s, %zu tasks x %zu lengths x %d samples, %s", st->lm.mdl->hparams().name.c_str(),
             rp.tasks.size(), rp.lengths.size(), rp.samples, use_chat ? "chat template" : "plain prompt");
    eval::eval_env env;
    env.mdl      = st->lm.mdl.get();
    env.tok      = &tok;
    env.slots    = &st->slots;
    env.use_chat = use_chat;
    env.chunk    = st->cp.n_ubatch;
    if (status s = flushed(eval::ruler_run(rp, *words, env, *out), *out); !s) return fail(cmd, s);
    auto doc = eval::result_file::load(out_path);
    if (!doc) return fail(cmd, doc.get_status());
    auto rows = eval::ruler_summary(*doc);
    if (!rows) return fail(cmd, rows.get_status());
    for (const auto & r : *rows) {
        std::printf("L=%-6lld %-40s mean %6.2f over %zu tasks (%d samples):", (long long)r.length, r.label.c_str(),
                    r.mean, r.task_scores.size(), r.n_samples);
        for (const auto & [t, sc] : r.task_scores) std::printf(" %s %.1f", t.c_str(), sc);
        std::printf("\n");
    }
    std::printf("results: %s\n", out_path.c_str());
    return 0;
}

int cmd_eval_niah(const args_t & args) {
    const char * cmd = "eval niah";
    arg_parser   p(cmd, "longctx eval niah [-m MODEL] [--needle classic|numeric|passkey] [--lengths L,..] "
                          "[--depths D,..|START:STOP:STEP] [--rounds N] [--haystack DIR] [-o FILE] [method flags]");
    add_eval_common_flags(p, "eval-niah.json");
    p.add({"", "--needle", "KIND",
           "classic (San Francisco sentence), numeric (7-digit magic number for a city) or "
           "passkey (5-digit key in filler text), multi (--needles secret pizza ingredients, fraction recovered)",
           "numeric"});
    p.add({"", "--lengths", "L,..",
           "context lengths in model tokens (default: the grid of EVAL_TASKS.md 1.5 for the "
           "model's trained context)",
           ""});
    p.add({"", "--depths", "D,..",
           "needle depths in percent: a list, START:STOP:STEP or sigmoid:K (crowded at both ends)", "0:100:10"});
    p.add(
        {"", "--rounds", "N", "rounds per cell, each with its own haystack start and needle (EVAL_TASKS.md: 5)", "1"});
    p.add({"", "--needles", "K", "multi: needles per cell (at d, then d + i * (100 - d) / K)", "3"});
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
        auto kn  = p.get_int("--needles", 1, 10);
        if (!kn) return fail(cmd, kn.get_status());
        np.n_needles = np.kind == eval::niah_kind::MULTI ? int(*kn) : 1;
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
    json meta        = model_meta(*lm, *sha, *slots->front().ctx);
    meta["task"]     = std::string("niah-") + eval::niah_kind_name(np.kind);
    meta["template"] = eval::niah_template_version(np.kind);
    meta["haystack"] = hay.id();
    meta["seed"]     = np.seed;
    meta["n_gen"]    = np.n_gen;
    meta["chat"]     = np.use_chat;
    meta["reserve"]  = np.reserve;
    meta["needles"]  = np.n_needles;
    // The lead-in: every template ends with the start of the answer sentence (EVAL_TASKS.md 1.1: record it).
    meta["answer_prefix"]      = "answer sentence start";
    meta["methods"]            = methods;
    meta["identity"]           = json{{"task", meta["task"]},  {"template", meta["template"]},
                            {"model_sha256", *sha},  {"haystack", hay.id()},
                            {"seed", np.seed},       {"n_gen", np.n_gen},
                            {"chat", np.use_chat},   {"needles", np.n_needles},
                            {"reserve", np.reserve}, {"methods", methods}};
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
    if (status st = flushed(eval::niah_run(np, hay, env, *out), *out); !st) return fail(cmd, st);

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

int cmd_eval_report(const args_t & args) {
    const char * cmd = "eval report";
    arg_parser   p(cmd, "longctx eval report FILE.json... [-o REPORT.md] [--plots DIR]");
    p.add({"-o", "--out", "FILE", "markdown report (-: stdout)", "-"});
    p.add({"", "--plots", "DIR", "write accuracy-vs-density.svg, speed-vs-density.svg and the niah heatmaps here", ""});
    if (status st = p.parse(args); !st) return fail(cmd, st);
    if (p.help_requested()) {
        p.print_help();
        return 0;
    }
    if (p.positional().empty())
        return fail(cmd, error(status_code::INVALID_ARGUMENT, "give one or more result files (eval-*.json)"));
    std::vector<eval::report_input> in;
    for (const auto & path : p.positional()) {
        auto d = eval::result_file::load(path);
        if (!d) return fail(cmd, d.get_status());
        in.push_back({path, std::move(*d)});
    }
    auto md = eval::report_markdown(in);
    if (!md) return fail(cmd, md.get_status());
    if (p.has("--plots")) {
        const std::string dir = p.get("--plots");
        std::error_code   ec;
        std::filesystem::create_directories(dir, ec);
        auto pts = eval::report_points(in);
        if (!pts) return fail(cmd, pts.get_status());
        std::string links;
        // Links relative to the report's folder.
        const std::string md_dir =
            p.get("--out") == "-" ? std::string(".") : std::filesystem::absolute(p.get("--out")).parent_path().string();
        auto link = [&](const std::string & name) {
            const std::string rel =
                std::filesystem::relative(std::filesystem::absolute(dir + "/" + name), md_dir, ec).string();
            return "![" + name + "](" + (rel.empty() ? dir + "/" + name : rel) + ")\n";
        };
        for (const auto & [name, svg] :
             {std::pair{std::string("accuracy-vs-density.svg"), eval::report_accuracy_svg(*pts)},
              {std::string("speed-vs-density.svg"), eval::report_speed_svg(*pts)}}) {
            if (status st = eval::write_file_atomic(dir + "/" + name, svg); !st) return fail(cmd, st);
            links += link(name);
        }
        for (const auto & f : in) {
            if (f.doc["eval"] != "niah") continue;
            auto svg = eval::niah_heatmap_svg(f.doc);
            if (!svg) return fail(cmd, svg.get_status());
            const std::string name = std::filesystem::path(replace_ext(f.path, ".svg")).filename().string();
            if (status st = eval::write_file_atomic(dir + "/" + name, *svg); !st) return fail(cmd, st);
            links += link(name);
        }
        *md += "## Plots\n\n" + links;
    }
    if (p.get("--out") == "-") {
        std::fwrite(md->data(), 1, md->size(), stdout);
    } else if (status st = eval::write_file_atomic(p.get("--out"), *md); !st) {
        return fail(cmd, st);
    }
    return 0;
}

void print_eval_usage(FILE * f) {
    std::fprintf(f, "usage: longctx eval <task> [options]\n\ntasks:\n"
                    "  niah      needle in a haystack: classic, numeric needle, passkey; JSON + SVG heatmap\n"
                    "  ruler     RULER synthetic tasks: 8 NIAH variants, variable tracking, common/frequent words\n"
                    "  ppl       long-text perplexity: prefill (A), sliding window (B), teacher-forced decode (C)\n"
                    "  fidelity  agreement with dense over long text: KL and top-1 of next-token distributions\n"
                    "  report    markdown tables and SVG plots (accuracy and speed versus density) from result files\n"
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
    if (task == "fidelity") return cmd_eval_fidelity(rest);
    if (task == "ppl") return cmd_eval_ppl(rest);
    if (task == "ruler") return cmd_eval_ruler(rest);
    if (task == "report") return cmd_eval_report(rest);
    std::fprintf(
        stderr,
        "longctx eval: unknown task '%s'; tasks: niah, ruler, ppl, fidelity, report (see longctx eval --help)\n",
        task.c_str());
    return 2;
}

} // namespace lc::cli
