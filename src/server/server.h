// The HTTP front of `longctx serve` (cpp-httplib): routes, request bodies to gen_jobs, results to OpenAI JSON
// and server-sent events. Handler threads only parse, tokenize, submit and wait on their job's events; the
// scheduler thread owns the model's context.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "longctx/status.h"
#include "server/metrics.h"
#include "server/openai-api.h"
#include "server/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace lc::server {

struct server_params {
    std::string host           = "127.0.0.1";
    int         port           = 8080;
    size_t      max_body_bytes = size_t(8) << 20; // larger bodies get 413
    int         n_http_threads = 16;              // connections served at once
};

class http_server {
  public:
    http_server(server_params sp, api_limits lim, const tokenizer & tok, scheduler & sched, metrics & m);
    ~http_server();

    // Binds the listening socket: IO_ERROR when the address is in use or not this host's.
    status bind();
    // Serves until stop(). REQUIRES: bind() succeeded.
    status run();
    void   stop();

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace lc::server
