// `longctx chat`: interactive chat on stdin/stdout with the model's chat template. Each turn re-renders the
// conversation and only the tokens after the part already in the KV cache are computed.
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "runtime/sampling.h"

namespace lc::cli {

int cmd_chat(const args_t & args) {
    arg_parser p("chat",
                 "longctx chat [-m MODEL] [--system TEXT] [options]; type a message, empty line or EOF to quit");
    add_model_flags(p);
    add_context_flags(p);
    p.add({"-n", "--n-predict", "N", "most tokens per reply", "512"});
    p.add({"", "--system", "TEXT", "system message (default: the template's own)", ""});
    p.add({"", "--temp", "T", "temperature (0: greedy)", "0.8"});
    p.add({"", "--top-k", "N", "top-k sampling (0: off)", "40"});
    p.add({"", "--top-p", "P", "top-p sampling (1: off)", "0.95"});
    p.add({"", "--min-p", "P", "min-p sampling (0: off)", "0.05"});
    p.add({"-s", "--seed", "N", "RNG seed (-1: random)", "-1"});
    if (status st = p.parse(args); !st) return fail("chat", st);
    if (p.help_requested()) {
        p.print_help();
        return 0;
    }
    sampling_params sp;
    auto            n_predict = p.get_int("--n-predict", 1, int64_t(1) << 31);
    auto            temp      = p.get_float("--temp", 0.0, 1e6);
    auto            top_k     = p.get_int("--top-k", 0, int64_t(1) << 30);
    auto            top_p     = p.get_float("--top-p", 0.0, 1.0);
    auto            min_p     = p.get_float("--min-p", 0.0, 1.0);
    auto            seed      = p.get_int("--seed", -1, INT64_MAX);
    for (const status * st : {&n_predict.get_status(), &temp.get_status(), &top_k.get_status(), &top_p.get_status(),
                              &min_p.get_status(), &seed.get_status()})
        if (!st->is_ok()) return fail("chat", *st);
    sp.temp  = float(*temp);
    sp.top_k = int32_t(*top_k);
    sp.top_p = float(*top_p);
    sp.min_p = float(*min_p);
    sp.seed  = *seed < 0 ? sampling_seed_random : uint64_t(*seed);
    if (status st = sp.validate(); !st) return fail("chat", st);

    auto cp = context_params_from(p);
    if (!cp) return fail("chat", cp.get_status());
    auto lm = load_model(p);
    if (!lm) return fail("chat", lm.get_status());
    auto ctx = context::create(*lm->mdl, *cp);
    if (!ctx) return fail("chat", ctx.get_status());
    context &         c   = **ctx;
    const tokenizer & tok = *lm->tok;
    sampler           smp(sp);

    std::vector<chat_message> msgs;
    if (p.has("--system")) msgs.push_back({"system", p.get("--system")});
    std::vector<int32_t> in_cache; // tokens whose K/V the context holds
    std::string          line;
    while (true) {
        std::fprintf(stderr, "> ");
        std::fflush(stderr);
        if (!std::getline(std::cin, line) || line.empty()) break;
        msgs.push_back({"user", line});
        auto text = tok.apply_chat_template(msgs, true);
        if (!text) return fail("chat", text.get_status());
        std::vector<int32_t> all  = tok.encode(*text, false, true);
        size_t               keep = 0;
        while (keep < all.size() && keep < in_cache.size() && all[keep] == in_cache[keep]) ++keep;
        if (keep == all.size()) --keep; // always compute at least one token to get fresh logits
        if (int64_t(all.size()) + *n_predict > c.n_ctx()) {
            std::fprintf(stderr,
                         "longctx chat: the conversation (%zu tokens) + -n %lld exceeds -c %lld; starting over\n",
                         all.size(), (long long)*n_predict, (long long)c.n_ctx());
            msgs = {msgs.back()};
            c.clear();
            in_cache.clear();
            auto t2 = tok.apply_chat_template(msgs, true);
            if (!t2) return fail("chat", t2.get_status());
            all  = tok.encode(*t2, false, true);
            keep = 0;
            if (int64_t(all.size()) + *n_predict > c.n_ctx())
                return fail("chat",
                            error(status_code::OUT_OF_RANGE, "the message alone (%zu tokens) does not fit in -c %lld",
                                  all.size(), (long long)c.n_ctx()));
        }
        c.truncate(int64_t(keep));
        in_cache.resize(keep);
        std::vector<int32_t> fresh(all.begin() + std::ptrdiff_t(keep), all.end());
        if (status st = c.decode(fresh); !st) return fail("chat", st);
        in_cache.insert(in_cache.end(), fresh.begin(), fresh.end());
        std::string reply;
        for (int64_t i = 0; i < *n_predict; ++i) {
            const int32_t id = smp.sample(c.logits(), lm->mdl->hparams().n_vocab);
            if (tok.is_eog(id)) break;
            const std::string piece = tok.token_to_piece(id);
            reply += piece;
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            if (status st = c.decode({id}); !st) return fail("chat", st);
            in_cache.push_back(id);
        }
        std::fputc('\n', stdout);
        std::fflush(stdout);
        msgs.push_back({"assistant", reply});
    }
    return 0;
}

} // namespace lc::cli
