// Shared CLI helpers (see common.h).
#include "cli/common.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/log.h"
#include "model/model-store.h"

namespace lc::cli {

void add_model_flags(arg_parser & p) {
    p.add({"-m", "--model", "PATH|NAME",
           "GGUF model file, or a known model name (smollm2-135m-instruct-q4_1, gemma3-270m-q4_k_m)",
           "smollm2-135m-instruct-q4_1"});
    p.add({"-t", "--threads", "N", "CPU threads", std::to_string(std::max(1u, std::thread::hardware_concurrency()))});
    p.add({"-v", "--verbose", "", "debug logging", ""});
}

void add_context_flags(arg_parser & p) {
    p.add({"-c", "--ctx-size", "N", "context length in tokens (0: the model's trained context)", "0"});
    p.add({"-ub", "--ubatch-size", "N",
           "prompt tokens per forward pass (chunked prefill; sparse prefill estimates its index per chunk)", "512"});
    p.add({"", "--device", "cpu|cuda",
           "where the model runs (cuda: the whole model on the GPU; MInference prefill, top-k, Quest and Loki decode; "
           "MagicPIG and the KV policies run on the CPU only)",
           "cpu"});
    p.add({"-ngl", "--n-gpu-layers", "N", "llama.cpp's flag: any N > 0 runs the whole model on the GPU (--device cuda)",
           "0"});
    add_method_flags(p);
}

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

void add_method_flags(arg_parser & p) {
    p.add({"", "--prefill", "METHOD",
           "prefill attention: dense, a-shape, vslash, block, minference (per-head patterns from the sidecar), oracle "
           "(each block's heaviest keys by the exact attention: an accuracy bound, slower than dense); on "
           "Gemma 3 only the global layers are sparse, sliding-window layers stay windowed dense",
           "dense"});
    p.add({"", "--prefill-budget", "B",
           "sparse prefill budget: Nx scales each head's budgets (1x: calibrated or documented), P% or a fraction "
           "keeps that share of the prompt's columns/diagonals/blocks (100%: dense)",
           "1x"});
    p.add({"", "--sparse-min-len", "N",
           "prompts shorter than this (tokens, with what the context holds) prefill densely",
           std::to_string(sparse_min_len_cpu_default)});
    p.add({"", "--sidecar", "PATH",
           "calibration sidecar (auto: MODEL.longctx.gguf beside the model when present; none: ignore it)", "auto"});
    p.add({"", "--decode", "METHOD",
           "decode attention: dense, topk (exact, oracle), quest, loki (needs longctx calibrate loki), magicpig; "
           "sliding-window layers stay windowed dense",
           "dense"});
    p.add({"", "--decode-budget", "B",
           "keys each sparse decode query head selects: P% or a fraction of the cache, or "
           "a number of tokens (MagicPIG samples by --lsh instead)",
           "25%"});
    p.add({"", "--decode-keep", "S,L",
           "first S and last L tokens every sparse decode step attends densely (0,0: only what the method "
           "selects)",
           "4,64"});
    p.add({"", "--loki-d", "D", "Loki: rank of the approximate scores (below 1: a fraction of head_dim)", "0.25"});
    p.add({"", "--loki-var", "V", "Loki: per layer the smallest rank reaching explained variance V (0: use --loki-d)",
           "0"});
    p.add({"", "--lsh", "K,L", "MagicPIG: SimHash bits per table and number of tables", "10,150"});
    p.add({"", "--lsh-min-hits", "N", "MagicPIG: tables a key must collide in to be sampled", "2"});
    p.add({"", "--quest-page", "P", "Quest: tokens per metadata page", "16"});
    p.add({"", "--decode-select", "head|kv",
           "top-k, Quest, Loki: select keys per query head, or once per KV head for its group of query heads (each "
           "selected key then read once for the group)",
           "head"});
    p.add({"", "--kv", "POLICY",
           "KV cache policy: full, streaming (sinks + recent window), h2o (heavy hitters + recent), d2o (layer "
           "budgets, heavy hitters + recent, merging of evicted tokens); sliding-window layers are never compressed",
           "full"});
    p.add({"", "--kv-budget", "B",
           "tokens each compressed layer keeps: P% or a fraction of the tokens in the context, or a number of tokens "
           "(D2O: the mean over layers, the layers it keeps whole included)",
           "20%"});
    p.add({"", "--kv-sink", "N", "first tokens the KV policy always keeps (-1: streaming and d2o 4, h2o 0)", "-1"});
    p.add({"", "--kv-recent", "R", "H2O, D2O: share of the budget past the sinks that is the recent window", "0.5"});
    p.add({"", "--kv-evict-every", "N",
           "decode: evict once a layer is N tokens over its budget (1: every step; 64: a page at a time)", "64"});
    p.add({"", "--d2o-merge", "RULE", "D2O merging of evicted tokens: ref (reference code), softmax (paper), off",
           "ref"});
    p.add({"", "--d2o-whole", "LIST", "D2O: layers kept whole (negative: from the end; none)", "0,1,-1"});
    p.add({"", "--d2o-budget", "shared|extra",
           "D2O: whole layers within --kv-budget (shared: the same bytes as H2O) or on top of it (extra: the reference "
           "code)",
           "shared"});
    p.add({"", "--swa-full", "",
           "--kv full: sliding-window layers keep every token (default: their window and 256 tokens before it)", ""});
}

namespace {

// "A,B" -> two integers in [lo, hi]; errors name the flag.
status parse_pair(const std::string & flag, const std::string & s, int lo, int hi, int & a, int & b) {
    char *     end = nullptr;
    const long x   = std::strtol(s.c_str(), &end, 10);
    if (end == s.c_str() || *end != ',')
        return error(status_code::INVALID_ARGUMENT, "%s '%s': expected two integers A,B", flag.c_str(), s.c_str());
    const char * s2 = end + 1;
    const long   y  = std::strtol(s2, &end, 10);
    if (end == s2 || *end != '\0')
        return error(status_code::INVALID_ARGUMENT, "%s '%s': expected two integers A,B", flag.c_str(), s.c_str());
    if (x < lo || x > hi || y < lo || y > hi)
        return error(status_code::OUT_OF_RANGE, "%s '%s': each value must be in %d..%d", flag.c_str(), s.c_str(), lo,
                     hi);
    a = int(x);
    b = int(y);
    return status::ok();
}

} // namespace

result<attn_config> attn_config_from(const arg_parser & p, bool decode_list) {
    attn_config c;
    LC_ASSIGN_OR_RETURN(c.prefill, prefill_method_parse(p.get("--prefill")));
    LC_ASSIGN_OR_RETURN(c.budget, prefill_budget_parse(p.get("--prefill-budget")));
    LC_ASSIGN_OR_RETURN(c.sparse_min_len, p.get_int("--sparse-min-len", 0, int64_t(1) << 40));
    const std::string dec = p.get("--decode");
    LC_ASSIGN_OR_RETURN(c.decode, decode_kind_parse(decode_list ? dec.substr(0, dec.find(',')) : dec));
    LC_ASSIGN_OR_RETURN(c.decode_keys, decode_budget_parse(p.get("--decode-budget")));
    decode_params & d = c.decode_opts;
    if (p.get("--decode-keep") != "4,64")
        LC_RETURN_IF_ERROR(parse_pair("--decode-keep", p.get("--decode-keep"), 0, 1 << 30, d.n_sink, d.n_local));
    LC_ASSIGN_OR_RETURN(d.loki_d, p.get_float("--loki-d", 1e-6, 4096));
    if (d.loki_d >= 1 && d.loki_d != std::floor(d.loki_d))
        return error(status_code::INVALID_ARGUMENT,
                     "--loki-d %g: a rank is a whole number (or a fraction of head_dim below 1)", d.loki_d);
    LC_ASSIGN_OR_RETURN(d.loki_var, p.get_float("--loki-var", 0.0, 1.0));
    LC_RETURN_IF_ERROR(parse_pair("--lsh", p.get("--lsh"), 1, 1 << 20, d.lsh_k, d.lsh_l));
    LC_ASSIGN_OR_RETURN(int64_t hits, p.get_int("--lsh-min-hits", 1, 1 << 20));
    d.lsh_min_hits = int(hits);
    LC_ASSIGN_OR_RETURN(int64_t qp, p.get_int("--quest-page", 1, 4096));
    d.quest_page          = int(qp);
    const std::string sel = p.get("--decode-select");
    if (sel != "head" && sel != "kv")
        return error(status_code::INVALID_ARGUMENT, "--decode-select '%s': use head or kv", sel.c_str());
    d.kv_select = sel == "kv";
    const std::string kvs = p.get("--kv");
    LC_ASSIGN_OR_RETURN(c.kv, kv_method_parse(decode_list ? kvs.substr(0, kvs.find(',')) : kvs));
    kv_params & k = c.kv_opts;
    {
        auto b = decode_budget_parse(p.get("--kv-budget"));
        if (!b)
            return error(status_code::INVALID_ARGUMENT,
                         "--kv-budget '%s' is not a budget; use a share of the context (20%%, 0.2) or a number of "
                         "tokens (2048)",
                         p.get("--kv-budget").c_str());
        k.budget = *b;
    }
    LC_ASSIGN_OR_RETURN(int64_t ks, p.get_int("--kv-sink", -1, 1 << 30));
    k.n_sink = int(ks);
    LC_ASSIGN_OR_RETURN(k.recent_share, p.get_float("--kv-recent", 0.0, 1.0));
    LC_ASSIGN_OR_RETURN(int64_t ke, p.get_int("--kv-evict-every", 1, 1 << 30));
    k.evict_every         = int(ke);
    const std::string mr = p.get("--d2o-merge");
    if (mr == "ref")
        k.merge = d2o_merge::REFERENCE;
    else if (mr == "softmax")
        k.merge = d2o_merge::SOFTMAX;
    else if (mr == "off")
        k.merge = d2o_merge::OFF;
    else
        return error(status_code::INVALID_ARGUMENT, "--d2o-merge '%s': use ref, softmax or off", mr.c_str());
    k.whole_layers.clear();
    if (const std::string w = p.get("--d2o-whole"); w != "none") {
        std::stringstream ss(w);
        std::string       item;
        while (std::getline(ss, item, ',')) {
            char *     end = nullptr;
            const long v   = std::strtol(item.c_str(), &end, 10);
            if (item.empty() || *end != '\0' || v < -100000 || v > 100000)
                return error(status_code::INVALID_ARGUMENT,
                             "--d2o-whole '%s': expected layer numbers separated by commas, or none", w.c_str());
            k.whole_layers.push_back(int(v));
        }
    }
    const std::string db = p.get("--d2o-budget");
    if (db != "extra" && db != "shared")
        return error(status_code::INVALID_ARGUMENT, "--d2o-budget '%s': use extra or shared", db.c_str());
    k.d2o_shared = db == "shared";
    k.swa_full   = p.has("--swa-full");
    c.sidecar   = p.get("--sidecar");
    if (c.sidecar != "auto" && c.sidecar != "none" && !std::ifstream(c.sidecar).good())
        return error(status_code::NOT_FOUND, "--sidecar '%s' cannot be opened; run longctx calibrate or pass none",
                     c.sidecar.c_str());
    return c;
}

void add_sampling_flags(arg_parser & p) {
    p.add({"", "--temp", "T", "temperature (0: greedy)", "0.8"});
    p.add({"", "--top-k", "N", "top-k sampling (0: off)", "40"});
    p.add({"", "--top-p", "P", "top-p sampling (1: off)", "0.95"});
    p.add({"", "--min-p", "P", "min-p sampling (0: off)", "0.05"});
    p.add({"-s", "--seed", "N", "RNG seed (-1: random)", "-1"});
}

result<sampling_params> sampling_params_from(const arg_parser & p) {
    sampling_params sp;
    LC_ASSIGN_OR_RETURN(double temp, p.get_float("--temp", 0.0, 1e6));
    LC_ASSIGN_OR_RETURN(int64_t top_k, p.get_int("--top-k", 0, int64_t(1) << 30));
    LC_ASSIGN_OR_RETURN(double top_p, p.get_float("--top-p", 0.0, 1.0));
    LC_ASSIGN_OR_RETURN(double min_p, p.get_float("--min-p", 0.0, 1.0));
    LC_ASSIGN_OR_RETURN(int64_t seed, p.get_int("--seed", -1, INT64_MAX));
    sp.temp  = float(temp);
    sp.top_k = int32_t(top_k);
    sp.top_p = float(top_p);
    sp.min_p = float(min_p);
    sp.seed  = seed < 0 ? sampling_seed_random : uint64_t(seed);
    LC_RETURN_IF_ERROR(sp.validate());
    return sp;
}

result<loaded_model> load_model(const arg_parser & p) {
    if (p.has("--verbose")) log_set_level(log_level::DEBUG);
    loaded_model lm;
    LC_ASSIGN_OR_RETURN(lm.path, model_resolve(p.get("--model"), true));
    LC_LOG_D("model: loading %s", lm.path.c_str());
    LC_ASSIGN_OR_RETURN(lm.mdl, model::load(lm.path));
    LC_ASSIGN_OR_RETURN(tokenizer tok, tokenizer::from_gguf(lm.mdl->file()));
    lm.tok = std::make_unique<tokenizer>(std::move(tok));
    return lm;
}

result<context_params> context_params_from(const arg_parser & p) {
    context_params cp;
    LC_ASSIGN_OR_RETURN(cp.attn, attn_config_from(p));
    LC_ASSIGN_OR_RETURN(cp.n_ctx, p.get_int("--ctx-size", 0, int64_t(1) << 31));
    LC_ASSIGN_OR_RETURN(int64_t t, p.get_int("--threads", 1, 1024));
    cp.n_threads = int(t);
    LC_ASSIGN_OR_RETURN(cp.n_ubatch, p.get_int("--ubatch-size", 1, 1 << 20));
    const std::string dev = p.get("--device");
    if (dev != "cpu" && dev != "cuda")
        return error(status_code::INVALID_ARGUMENT, "--device '%s': use cpu or cuda", dev.c_str());
    LC_ASSIGN_OR_RETURN(int64_t ngl, p.get_int("--n-gpu-layers", 0, 1 << 20));
    cp.cuda = dev == "cuda" || ngl > 0;
    return cp;
}

result<std::string> read_text_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return error(status_code::NOT_FOUND, "cannot open '%s' for reading", path.c_str());
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return error(status_code::IO_ERROR, "error reading '%s'", path.c_str());
    return ss.str();
}

void log_kv_policy(const context & c) {
    const std::vector<kv_layer_report> rep = c.policy().report(0);
    if (rep.empty()) return;
    int64_t     ev = 0, mg = 0;
    std::string per;
    for (size_t il = 0; il < rep.size(); ++il) {
        ev += rep[il].evicted;
        mg += rep[il].merged;
        if (!rep[il].managed) continue;
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%s%zu:%lld/%lld", per.empty() ? "" : " ", il, (long long)rep[il].evicted,
                      (long long)rep[il].merged);
        per += buf;
    }
    LC_LOG_I("kv policy %s: KV cache holds %s of %s for %lld tokens (%.1f%%); %lld tokens evicted, %lld of them "
             "merged (per KV head, summed over layers)",
             c.policy().name(), format_bytes(double(c.kv_bytes_held())).c_str(),
             format_bytes(double(c.kv_bytes_full())).c_str(), (long long)c.n_past(),
             c.kv_bytes_full() ? 100.0 * double(c.kv_bytes_held()) / double(c.kv_bytes_full()) : 100.0,
             (long long)ev, (long long)mg);
    LC_LOG_I("kv policy: evicted/merged per compressed layer: %s", per.c_str());
}

void log_decode_attention(const context & c, const attn_config & cfg) {
    const forward_timings & t = c.timings();
    if (t.decode_calls == 0) return;
    const double steps = double(std::max<int64_t>(1, t.decode_tokens));
    LC_LOG_I("decode attention: %s, %.1f%% of the visible keys attended, selection %.3f s, %.2f MB read per token "
             "(selection %.2f, K/V %.2f)",
             cfg.decode == decode_kind::DENSE ? "dense" : attn_config_describe(cfg).c_str(),
             100.0 * t.decode_keys_fraction(), t.decode_select_s,
             double(t.decode_bytes_select + t.decode_bytes_attn) / 1e6 / steps,
             double(t.decode_bytes_select) / 1e6 / steps, double(t.decode_bytes_attn) / 1e6 / steps);
}

void log_prefill_attention(const context & c, const attn_config & cfg) {
    const forward_timings & t = c.timings();
    if (cfg.prefill == prefill_method::DENSE) {
        LC_LOG_I("prefill attention: dense, %.2f s", t.attn_s);
        return;
    }
    const bool sparse = t.attn_pairs_computed < t.attn_pairs_causal || t.attn_index_s > 0.0;
    LC_LOG_I("prefill attention: %s%s, density %.1f%% of causal pairs, index %.3f s, attention %.2f s (index "
             "included)",
             attn_config_describe(cfg).c_str(), sparse ? "" : " (dense: prompt below --sparse-min-len)",
             100.0 * t.density(), t.attn_index_s, t.attn_s);
}

int fail(const char * cmd, const status & st) {
    const std::string & m = st.message();
    if (m.rfind("longctx ", 0) == 0)
        std::fprintf(stderr, "%s\n", m.c_str());
    else
        std::fprintf(stderr, "longctx %s: %s\n", cmd, m.c_str());
    return st.code() == status_code::INVALID_ARGUMENT ? 2 : 1;
}

std::string format_bytes(double n) {
    const char * units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int          u       = 0;
    while (n >= 1024.0 && u < 4) {
        n /= 1024.0;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", n, units[u]);
    return buf;
}

} // namespace lc::cli
