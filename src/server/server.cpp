// HTTP routes of `longctx serve` over cpp-httplib (see server.h). Every response to a bad request is an
// OpenAI error object; the error handler fills one for the errors httplib itself answers (404, 413, ...).
#include "server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "core/log.h"

namespace lc::server {

using json = nlohmann::json;

namespace {

std::string json_text(const json & j) {
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response & res, const api_error & e) {
    res.status = e.http_status;
    res.set_content(json_text(api_error_json(e)), "application/json");
}

std::string random_id(const char * prefix) {
    static std::atomic<uint64_t> counter{0};
    thread_local std::mt19937_64 rng{std::random_device{}()};
    char                         buf[64];
    std::snprintf(buf, sizeof(buf), "%s-%016llx%04llx", prefix, (unsigned long long)rng(),
                  (unsigned long long)(counter.fetch_add(1) & 0xffff));
    return buf;
}

const char * reason_of(int status) {
    switch (status) {
    case 400:
        return "bad request";
    case 404:
        return "not found";
    case 405:
        return "method not allowed";
    case 413:
        return "request body too large";
    case 414:
        return "request URI too long";
    default:
        return "error";
    }
}

// Stream state shared by the content provider and its releaser.
struct stream_state {
    std::shared_ptr<gen_job>              job;
    api_kind                              kind;
    std::string                           id, model;
    int64_t                               created       = 0;
    bool                                  include_usage = false;
    bool                                  role_sent     = false;
    bool                                  finished      = false;
    std::chrono::steady_clock::time_point last_write    = std::chrono::steady_clock::now();
};

} // namespace

struct http_server::impl {
    server_params     sp;
    api_limits        lim;
    const tokenizer & tok;
    scheduler &       sched;
    metrics &         met;
    httplib::Server   srv;
    int64_t           started = std::time(nullptr);

    impl(server_params sp_, api_limits lim_, const tokenizer & t, scheduler & s, metrics & m)
        : sp(std::move(sp_)), lim(std::move(lim_)), tok(t), sched(s), met(m) {}

    void routes();
    void generate(api_kind kind, const httplib::Request & req, httplib::Response & res);
};

void http_server::impl::routes() {
    srv.set_payload_max_length(sp.max_body_bytes);
    // SO_REUSEADDR only: httplib's default SO_REUSEPORT would let a second server share a port in use silently.
    srv.set_socket_options([](socket_t sock) {
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    const size_t n_threads = size_t(std::max(2, sp.n_http_threads));
    srv.new_task_queue     = [n_threads] { return new httplib::ThreadPool(n_threads); };

    srv.set_error_handler([this](const httplib::Request & req, httplib::Response & res) {
        if (!res.body.empty()) return; // a handler's own error object
        api_error e;
        e.http_status = res.status;
        e.code        = res.status == 413 ? "body_too_large" : res.status == 404 ? "not_found" : "";
        if (res.status == 413)
            e.message = "the request body is over the server's limit of " + std::to_string(sp.max_body_bytes) +
                        " bytes (--max-body)";
        else if (res.status == 404)
            e.message = "no route " + req.method + " " + req.path +
                        "; this server has /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics";
        else
            e.message = reason_of(res.status);
        send_error(res, e);
    });
    srv.set_exception_handler([](const httplib::Request &, httplib::Response & res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
            if (ep) std::rethrow_exception(ep);
        } catch (const std::exception & ex) {
            what = ex.what();
        } catch (...) {
        }
        api_error e;
        e.http_status = 500;
        e.type        = "server_error";
        e.message     = "internal error: " + what;
        send_error(res, e);
    });
    srv.set_logger([this](const httplib::Request & req, const httplib::Response & res) {
        // Paths outside the API count as "other": a client must not grow the metrics with made-up paths.
        static const char * const known[]  = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                              "/metrics"};
        bool                      is_known = false;
        for (const char * k : known) is_known |= req.path == k;
        met.request_done(is_known ? req.path : "other", res.status);
        LC_LOG_I("serve: %s %s %d (%zu bytes in)", req.method.c_str(), req.path.c_str(), res.status, req.body.size());
    });

    srv.Get("/health", [this](const httplib::Request &, httplib::Response & res) {
        res.set_content(json_text(json{{"status", "ok"}}), "application/json");
    });
    srv.Get("/metrics", [this](const httplib::Request &, httplib::Response & res) {
        res.set_content(met.render(), "text/plain; version=0.0.4");
    });
    srv.Get("/v1/models", [this](const httplib::Request &, httplib::Response & res) {
        json m = {{"id", lim.model_id},
                  {"object", "model"},
                  {"created", started},
                  {"owned_by", "longctx"},
                  {"meta", {{"n_ctx", lim.n_ctx}, {"n_slots", sched.n_seq()}}}};
        res.set_content(json_text(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
    });
    srv.Post("/v1/completions", [this](const httplib::Request & req, httplib::Response & res) {
        generate(api_kind::COMPLETION, req, res);
    });
    srv.Post("/v1/chat/completions",
             [this](const httplib::Request & req, httplib::Response & res) { generate(api_kind::CHAT, req, res); });

    // Known paths with the wrong method: 405 with the allowed one.
    struct route {
        const char * path;
        const char * allowed;
    };
    for (const route r : {route{"/health", "GET"}, route{"/metrics", "GET"}, route{"/v1/models", "GET"},
                          route{"/v1/completions", "POST"}, route{"/v1/chat/completions", "POST"}}) {
        const std::string allowed = r.allowed;
        auto              h       = [allowed](const httplib::Request & req, httplib::Response & res) {
            api_error e;
            e.http_status = 405;
            e.code        = "method_not_allowed";
            e.message     = req.method + " " + req.path + ": use " + allowed;
            send_error(res, e);
            res.set_header("Allow", allowed);
        };
        if (allowed != "GET") srv.Get(r.path, h);
        if (allowed != "POST") srv.Post(r.path, h);
        srv.Put(r.path, h);
        srv.Delete(r.path, h);
        srv.Patch(r.path, h);
    }
}

void http_server::impl::generate(api_kind kind, const httplib::Request & req, httplib::Response & res) {
    gen_request r;
    if (auto e = request_parse(kind, req.body, lim, r)) return send_error(res, *e);

    std::vector<int32_t> prompt;
    std::string          prompt_text;
    if (kind == api_kind::CHAT) {
        auto text = tok.apply_chat_template(r.messages, true);
        if (!text) return send_error(res, api_error_from_status(text.get_status(), "messages"));
        prompt = tok.encode(*text, false, true);
    } else if (r.prompt_is_tokens) {
        for (size_t i = 0; i < r.prompt_tokens.size(); ++i) {
            const int32_t id = r.prompt_tokens[i];
            if (id < 0 || id >= tok.n_vocab()) {
                api_error e;
                e.param   = "prompt[" + std::to_string(i) + "]";
                e.code    = "invalid_value";
                e.message = "token id " + std::to_string(id) + " is not in the vocabulary [0, " +
                            std::to_string(tok.n_vocab()) + ")";
                return send_error(res, e);
            }
        }
        prompt      = r.prompt_tokens;
        prompt_text = tok.decode(prompt, true);
    } else {
        prompt      = tok.encode(r.prompt, true, true);
        prompt_text = r.prompt;
    }
    if (auto e = request_resolve_max_tokens(r, int64_t(prompt.size()), lim)) return send_error(res, *e);

    auto job        = std::make_shared<gen_job>();
    job->prompt     = std::move(prompt);
    job->max_tokens = r.max_tokens;
    job->sampling   = r.sampling;
    job->stop       = r.stop;
    job->attn       = r.attn;
    job->progress   = r.stream;
    if (status st = sched.submit(job); !st) return send_error(res, api_error_from_status(st));

    const std::string id      = random_id(kind == api_kind::CHAT ? "chatcmpl" : "cmpl");
    const int64_t     created = std::time(nullptr);
    const auto        poll    = std::chrono::milliseconds(200);

    if (!r.stream) {
        std::string text = r.echo ? prompt_text : std::string();
        gen_event   e;
        while (true) {
            if (!job->pop(e, poll)) continue;
            if (e.type == gen_event::kind::TEXT) text += e.text;
            if (e.type == gen_event::kind::ERROR) return send_error(res, api_error_from_status(e.error));
            if (e.type == gen_event::kind::DONE) break;
        }
        const usage_counts u{e.n_prompt, e.n_gen};
        res.set_content(json_text(response_json(kind, id, created, lim.model_id, text, e.finish_reason, u)),
                        "application/json");
        return;
    }

    // Streaming: errors before the job has a slot still get their own status code; after it, an error event.
    auto st           = std::make_shared<stream_state>();
    st->job           = job;
    st->kind          = kind;
    st->id            = id;
    st->model         = lim.model_id;
    st->created       = created;
    st->include_usage = r.include_usage;
    {
        gen_event e;
        while (!job->pop(e, poll)) {
        }
        if (e.type == gen_event::kind::ERROR) return send_error(res, api_error_from_status(e.error));
        LC_ASSERT(e.type == gen_event::kind::ADMITTED, "first event of a job is %d", int(e.type));
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [st, poll](size_t, httplib::DataSink & sink) -> bool {
            if (st->finished) {
                sink.done();
                return true;
            }
            auto write = [&](const std::string & s) {
                st->last_write = std::chrono::steady_clock::now();
                return sink.write(s.data(), s.size());
            };
            gen_event e;
            if (!st->job->pop(e, poll)) {
                // An SSE comment every 2 s while nothing happens: clients ignore it, and a gone client shows
                // up as a failed write, which cancels the job.
                if (std::chrono::steady_clock::now() - st->last_write > std::chrono::seconds(2))
                    return write(": keep-alive\n\n");
                return true;
            }
            switch (e.type) {
            case gen_event::kind::ADMITTED:
                return true;
            case gen_event::kind::PROGRESS:
                return write(sse_event(
                    chunk_progress_json(st->kind, st->id, st->created, st->model, e.done, e.total, e.elapsed_ms)));
            case gen_event::kind::TEXT: {
                const bool first = !st->role_sent;
                st->role_sent    = true;
                return write(sse_event(chunk_json(st->kind, st->id, st->created, st->model, e.text, "", first)));
            }
            case gen_event::kind::DONE: {
                const bool first = !st->role_sent;
                st->role_sent    = true;
                std::string out =
                    sse_event(chunk_json(st->kind, st->id, st->created, st->model, "", e.finish_reason, first));
                if (st->include_usage)
                    out += sse_event(
                        chunk_usage_json(st->kind, st->id, st->created, st->model, usage_counts{e.n_prompt, e.n_gen}));
                out += sse_done;
                st->finished = true;
                if (!write(out)) return false;
                sink.done();
                return true;
            }
            case gen_event::kind::ERROR: {
                st->finished = true;
                if (!write(sse_event(api_error_json(api_error_from_status(e.error))) + std::string(sse_done)))
                    return false;
                sink.done();
                return true;
            }
            }
            return true;
        },
        [st](bool) {
            if (!st->finished) st->job->cancel(); // the client went away mid-stream
        });
}

http_server::http_server(server_params sp, api_limits lim, const tokenizer & tok, scheduler & sched, metrics & m)
    : impl_(std::make_unique<impl>(std::move(sp), std::move(lim), tok, sched, m)) {
    impl_->routes();
}

http_server::~http_server() = default;

status http_server::bind() {
    std::signal(SIGPIPE, SIG_IGN); // a client closing its socket must not end the process
    if (!impl_->srv.bind_to_port(impl_->sp.host, impl_->sp.port))
        return error(status_code::IO_ERROR, "cannot listen on %s:%d (in use, or not an address of this host)",
                     impl_->sp.host.c_str(), impl_->sp.port);
    return status::ok();
}

status http_server::run() {
    LC_LOG_I("serve: listening on http://%s:%d", impl_->sp.host.c_str(), impl_->sp.port);
    if (!impl_->srv.listen_after_bind()) return error(status_code::IO_ERROR, "the listening socket failed");
    return status::ok();
}

void http_server::stop() {
    impl_->srv.stop();
}

} // namespace lc::server
