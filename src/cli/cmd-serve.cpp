// `longctx serve`: an OpenAI-compatible HTTP server (docs/serve.md): loads the model, builds a context with one
// sequence per slot (-np) in a KV memory budget (--kv-memory), runs the scheduler thread and serves HTTP until
// SIGINT or SIGTERM.
#include <pthread.h>

#include <csignal>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/log.h"
#include "server/server.h"

namespace lc::cli {

int cmd_serve(const args_t & args) {
    arg_parser p("serve", "longctx serve [-m MODEL] [--host H] [--port P] [-c CTX] [-np SLOTS] [options]");
    add_model_flags(p);
    add_context_flags(p);
    add_sampling_flags(p);
    p.add({"", "--host", "ADDR", "address to listen on (0.0.0.0: every interface)", "127.0.0.1"});
    p.add({"", "--port", "N", "TCP port", "8080"});
    p.add({"-np", "--parallel", "N", "slots: requests generating at once (decode steps are batched across them)", "4"});
    p.add({"", "--kv-memory", "BYTES",
           "KV cache memory for all slots, e.g. 512M or 2G (0: -c tokens for every slot); requests wait for room, "
           "and one that can never fit is refused",
           "0"});
    p.add({"-n", "--n-predict", "N", "max_tokens of a request that gives none (capped by what fits in -c)", "256"});
    p.add({"", "--queue", "N", "requests waiting for a slot at most; more get 503", "64"});
    p.add({"", "--max-body", "BYTES", "largest request body; larger ones get 413", "8M"});
    p.add({"", "--alias", "NAME", "model id listed by /v1/models (default: the model file's name)", ""});
    bool done = false;
    if (int rc = parse_or_help(p, args, "serve", &done); done) return rc;

    auto sp = sampling_params_from(p);
    if (!sp) return fail("serve", sp.get_status());
    auto cp = context_params_from(p);
    if (!cp) return fail("serve", cp.get_status());
    auto port = p.get_int("--port", 0, 65535);
    if (!port) return fail("serve", port.get_status());
    auto n_par = p.get_int("--parallel", 1, 256);
    if (!n_par) return fail("serve", n_par.get_status());
    auto n_predict = p.get_int("--n-predict", 1, int64_t(1) << 31);
    if (!n_predict) return fail("serve", n_predict.get_status());
    auto n_queue = p.get_int("--queue", 1, 1 << 20);
    if (!n_queue) return fail("serve", n_queue.get_status());
    auto kv_mem = p.get_bytes("--kv-memory");
    if (!kv_mem) return fail("serve", kv_mem.get_status());
    auto max_body = p.get_bytes("--max-body");
    if (!max_body) return fail("serve", max_body.get_status());
    if (*max_body == 0)
        return fail("serve", error(status_code::INVALID_ARGUMENT, "--max-body 0: give a size, e.g. 8M"));

    // SIGINT/SIGTERM end the server: blocked in every thread (so before any is made: the contexts' thread pools
    // inherit the mask), then taken by one waiting thread that stops the scheduler and the HTTP server.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

    auto lm = load_model(p);
    if (!lm) return fail("serve", lm.get_status());
    cp->n_seq     = int(*n_par);
    cp->kv_memory = *kv_mem;
    auto engine   = server::seq_engine_create(*lm->mdl, *cp);
    if (!engine) return fail("serve", engine.get_status());
    const int64_t n_ctx = (*engine)->n_ctx();
    if ((*engine)->kv_bytes_capacity() < (*engine)->kv_bytes_for(1))
        return fail("serve", error(status_code::INVALID_ARGUMENT,
                                   "--kv-memory %s holds less than one KV page in every layer (%zu bytes); raise it",
                                   p.get("--kv-memory").c_str(), (*engine)->kv_bytes_for(1)));

    server::api_limits          lim;
    const std::filesystem::path mp(lm->path);
    lim.model_id           = p.has("--alias") ? p.get("--alias") : mp.stem().string();
    lim.model_aliases      = {mp.filename().string(), p.get("--model"), lm->path};
    lim.n_ctx              = n_ctx;
    lim.max_tokens_default = *n_predict;
    lim.attn               = cp->attn;
    lim.sampling           = *sp;

    const tokenizer &        tok = *lm->tok;
    server::token_text       tt{[&tok](int32_t id) { return tok.token_to_piece(id); },
                          [&tok](int32_t id) { return tok.is_eog(id); }};
    server::metrics          met;
    server::scheduler_params spp;
    spp.n_queue_max          = *n_queue;
    spp.n_chunk              = cp->n_ubatch;
    const size_t      kv_cap = (*engine)->kv_bytes_capacity();
    server::scheduler sched(std::move(*engine), tt, spp, met);

    server::server_params srvp;
    srvp.host           = p.get("--host");
    srvp.port           = int(*port);
    srvp.max_body_bytes = *max_body;
    // Handler threads: every slot and queued request may hold one while it waits, plus a few for /health etc.
    srvp.n_http_threads = int(std::min<int64_t>(*n_par + *n_queue + 4, 1024));
    server::http_server srv(srvp, lim, tok, sched, met);

    if (status st = srv.bind(); !st) return fail("serve", st);

    std::thread waiter([&] {
        int sig = 0;
        sigwait(&sigs, &sig);
        LC_LOG_I("serve: signal %d, shutting down", sig);
        sched.stop();
        srv.stop();
    });
    LC_LOG_I("serve: model %s (id '%s'), -c %lld, %lld slots, KV memory %s, %s", lm->path.c_str(), lim.model_id.c_str(),
             (long long)n_ctx, (long long)*n_par, format_bytes(double(kv_cap)).c_str(),
             attn_config_describe(cp->attn).c_str());
    sched.start();
    const status st = srv.run();
    if (!st) {
        sched.stop();
        pthread_kill(waiter.native_handle(), SIGTERM); // wakes the waiting thread
    }
    waiter.join();
    return st ? 0 : fail("serve", st);
}

} // namespace lc::cli
