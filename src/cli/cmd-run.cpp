// `longctx run`: generate from a prompt (-p) and/or a file (-f), streaming tokens to stdout, with a progress
// line for long prompts and a timings summary on stderr.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "runtime/sampling.h"

namespace lc::cli {

namespace {

using clock_type = std::chrono::steady_clock;
double since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Progress on stderr for prompts over 2048 tokens: tokens done/total, tokens/s, ETA.
struct prefill_progress {
    clock_type::time_point t0 = clock_type::now();
    void                   operator()(int64_t done, int64_t total) const {
                          const double dt   = since(t0);
                          const double rate = dt > 0 ? double(done) / dt : 0.0;
                          const double eta  = rate > 0 ? double(total - done) / rate : 0.0;
                          LC_LOG_I("prefill: %lld/%lld tokens (%d%%), %.1f t/s, ETA %.1f s", (long long)done, (long long)total,
                                   int(100 * done / total), rate, eta);
    }
};

} // namespace

int cmd_run(const args_t & args) {
    arg_parser p("run", "longctx run [-m MODEL] (-p TEXT | -f FILE) [-n N] [options]");
    add_model_flags(p);
    add_context_flags(p);
    p.add({"-p", "--prompt", "TEXT", "prompt text (after the file's text when -f is also given)", ""});
    p.add({"-f", "--file", "FILE", "read the prompt from a file", ""});
    p.add({"-n", "--n-predict", "N", "tokens to generate", "128"});
    p.add({"", "--chat", "", "wrap the prompt in the model's chat template as a user message", ""});
    p.add({"", "--system", "TEXT", "system message for --chat (default: the template's own)", ""});
    add_sampling_flags(p);
    p.add({"", "--ignore-eos", "", "keep generating after an end-of-generation token", ""});
    if (status st = p.parse(args); !st) return fail("run", st);
    if (p.help_requested()) {
        p.print_help();
        return 0;
    }
    if (!p.positional().empty())
        return fail("run", error(status_code::INVALID_ARGUMENT, "unexpected argument '%s'", p.positional()[0].c_str()));
    if (!p.has("--prompt") && !p.has("--file"))
        return fail("run", error(status_code::INVALID_ARGUMENT, "give a prompt with -p TEXT or -f FILE"));

    auto n_predict = p.get_int("--n-predict", 0, int64_t(1) << 31);
    if (!n_predict) return fail("run", n_predict.get_status());
    auto sp_r = sampling_params_from(p);
    if (!sp_r) return fail("run", sp_r.get_status());
    const sampling_params sp = *sp_r;

    std::string text;
    if (p.has("--file")) {
        auto t = read_text_file(p.get("--file"));
        if (!t) return fail("run", t.get_status());
        text = *t;
        if (p.has("--prompt")) text += "\n\n";
    }
    if (p.has("--prompt")) text += p.get("--prompt");

    auto cp = context_params_from(p);
    if (!cp) return fail("run", cp.get_status());
    auto lm = load_model(p);
    if (!lm) return fail("run", lm.get_status());
    const tokenizer & tok = *lm->tok;

    if (p.has("--chat")) {
        std::vector<chat_message> msgs;
        if (p.has("--system")) msgs.push_back({"system", p.get("--system")});
        msgs.push_back({"user", text});
        auto t = tok.apply_chat_template(msgs, true);
        if (!t) return fail("run", t.get_status());
        text = *t;
    }
    const auto t_tok0 = clock_type::now();
    // A rendered chat template already holds the BOS text where the template wants it.
    std::vector<int32_t> prompt = tok.encode(text, !p.has("--chat"), true);
    const double         t_tok  = since(t_tok0);
    if (prompt.empty()) return fail("run", error(status_code::INVALID_ARGUMENT, "the prompt is empty"));

    auto ctx = context::create(*lm->mdl, *cp);
    if (!ctx) return fail("run", ctx.get_status());
    context & c = **ctx;
    if (int64_t(prompt.size()) + *n_predict > c.n_ctx())
        return fail("run", error(status_code::OUT_OF_RANGE,
                                 "prompt of %zu tokens + -n %lld exceeds the context of %lld tokens; raise -c (the "
                                 "model was trained on %lld) or shorten the prompt",
                                 prompt.size(), (long long)*n_predict, (long long)c.n_ctx(),
                                 (long long)lm->mdl->hparams().n_ctx_train));
    LC_LOG_I("run: %s, %zu prompt tokens (tokenized in %.3f s), %d threads, -c %lld, -ub %lld",
             lm->mdl->hparams().name.c_str(), prompt.size(), t_tok, c.n_threads(), (long long)c.n_ctx(),
             (long long)cp->n_ubatch);

    // Each decode samples its next token where the model runs (on the GPU only the token id comes back).
    sampler          smp(sp);
    prefill_progress progress;
    const auto       t_pp0 = clock_type::now();
    result<int32_t>  next  = c.decode_sample(prompt, smp, prompt.size() > 2048 ? progress_fn(progress) : progress_fn());
    if (!next) return fail("run", next.get_status());
    const double t_pp = since(t_pp0);
    log_prefill_attention(c, cp->attn);

    int64_t    n_gen      = 0;
    int64_t    n_dec      = 0;
    double     t_tg       = 0.0;
    const bool ignore_eos = p.has("--ignore-eos");
    while (n_gen < *n_predict) {
        const int32_t id = *next;
        if (tok.is_eog(id) && !ignore_eos) break;
        const std::string piece = tok.token_to_piece(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        ++n_gen;
        if (n_gen == *n_predict) break;
        const auto t0 = clock_type::now();
        next          = c.decode_sample({id}, smp);
        if (!next) return fail("run", next.get_status());
        t_tg += since(t0);
        ++n_dec;
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);

    const auto & tm = c.timings();
    LC_LOG_I("timings: prefill %zu tokens in %.2f s (%.1f tok/s), decode %lld tokens in %.2f s (%.1f tok/s)",
             prompt.size(), t_pp, double(prompt.size()) / t_pp, (long long)n_dec, t_tg,
             n_dec > 0 ? double(n_dec) / t_tg : 0.0);
    if (c.on_gpu())
        LC_LOG_I("timings: on the GPU; KV cache %s for %lld tokens (bf16)", format_bytes(double(c.kv_bytes_held())).c_str(),
                 (long long)c.n_past());
    else
        LC_LOG_I("timings: matmul %.2f s, attention %.2f s, other %.2f s; KV cache %s for %lld tokens (fp16)",
                 tm.matmul_s, tm.attn_s, tm.other_s, format_bytes(double(c.kv_bytes_held())).c_str(),
                 (long long)c.n_past());
    log_decode_attention(c, cp->attn);
    log_kv_policy(c);
    if (!sp.greedy()) LC_LOG_I("sampling: seed %llu", (unsigned long long)smp.seed());
    return 0;
}

} // namespace lc::cli
