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
    add_sampling_flags(p);
    if (status st = p.parse(args); !st) return fail("chat", st);
    if (p.help_requested()) {
        p.print_help();
        return 0;
    }
    auto n_predict = p.get_int("--n-predict", 1, int64_t(1) << 31);
    if (!n_predict) return fail("chat", n_predict.get_status());
    auto sp_r = sampling_params_from(p);
    if (!sp_r) return fail("chat", sp_r.get_status());
    const sampling_params sp = *sp_r;

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
        if (!c.can_truncate(int64_t(keep))) keep = 0; // the KV policy evicted tokens: prefill the conversation again
        if (status st = c.truncate(int64_t(keep)); !st) return fail("chat", st);
        in_cache.resize(keep);
        std::vector<int32_t> fresh(all.begin() + std::ptrdiff_t(keep), all.end());
        // Each decode samples its next token where the model runs (on the GPU only the token id comes back).
        result<int32_t> next = c.decode_sample(fresh, smp);
        if (!next) return fail("chat", next.get_status());
        in_cache.insert(in_cache.end(), fresh.begin(), fresh.end());
        std::string reply;
        for (int64_t i = 0; i < *n_predict; ++i) {
            const int32_t id = *next;
            if (tok.is_eog(id)) break;
            const std::string piece = tok.token_to_piece(id);
            reply += piece;
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            next = c.decode_sample({id}, smp);
            if (!next) return fail("chat", next.get_status());
            in_cache.push_back(id);
        }
        std::fputc('\n', stdout);
        std::fflush(stdout);
        msgs.push_back({"assistant", reply});
    }
    return 0;
}

} // namespace lc::cli
