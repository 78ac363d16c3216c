// Prometheus text rendering of the server metrics (see metrics.h).
#include "server/metrics.h"

#include <cstdio>

namespace lc::server {

void metrics::request_done(const std::string & endpoint, int http_status) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++requests_[{endpoint, http_status}];
}

void metrics::prompt_tokens_add(int64_t n, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    n_prompt_ += n;
    t_prefill_ += seconds;
}

void metrics::generated_add(int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    n_gen_ += n;
}

void metrics::decode_step_add(int64_t n, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    n_decoded_ += n;
    n_steps_ += 1;
    t_decode_ += seconds;
}

void metrics::gauges_set(const metrics_gauges & g) {
    std::lock_guard<std::mutex> lock(mutex_);
    gauges_ = g;
}

namespace {

void metric_head(std::string & s, const char * name, const char * type, const char * help) {
    s += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void metric_value(std::string & s, const char * name, double v, const std::string & labels = "") {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.17g", v);
    s += name + (labels.empty() ? std::string() : "{" + labels + "}") + " " + buf + "\n";
}

void metric(std::string & s, const char * name, const char * type, const char * help, double v) {
    metric_head(s, name, type, help);
    metric_value(s, name, v);
}

} // namespace

std::string metrics::render() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string                 s;
    metric_head(s, "longctx_requests_total", "counter", "HTTP requests answered, by endpoint and status code");
    for (const auto & [key, n] : requests_)
        metric_value(s, "longctx_requests_total", double(n),
                     "endpoint=\"" + key.first + "\",code=\"" + std::to_string(key.second) + "\"");
    metric(s, "longctx_requests_cancelled_total", "counter", "generations cancelled by a client disconnect",
           double(n_cancelled_.load()));
    metric(s, "longctx_requests_rejected_total", "counter", "generations refused because the queue was full",
           double(n_rejected_.load()));
    metric(s, "longctx_prompt_tokens_total", "counter", "prompt tokens prefilled", double(n_prompt_));
    metric(s, "longctx_prefill_seconds_total", "counter", "time spent in prefill", t_prefill_);
    metric(s, "longctx_prefill_tokens_per_second", "gauge", "prompt tokens per second of prefill, since start",
           t_prefill_ > 0 ? double(n_prompt_) / t_prefill_ : 0.0);
    metric(s, "longctx_generated_tokens_total", "counter", "tokens generated for the clients", double(n_gen_));
    metric(s, "longctx_decode_tokens_total", "counter", "tokens through decode steps (all sequences)",
           double(n_decoded_));
    metric(s, "longctx_decode_steps_total", "counter",
           "batched decode steps (generated tokens / steps is the mean batch size)", double(n_steps_));
    metric(s, "longctx_decode_seconds_total", "counter", "time spent in decode steps", t_decode_);
    metric(s, "longctx_decode_tokens_per_second", "gauge",
           "generated tokens per second of decode steps (all sequences of a batched step count), since start",
           t_decode_ > 0 ? double(n_decoded_) / t_decode_ : 0.0);
    metric(s, "longctx_kv_bytes_in_use", "gauge", "KV cache bytes held by all sequences",
           double(gauges_.kv_bytes_used));
    metric(s, "longctx_kv_bytes_reserved", "gauge", "KV cache bytes reserved for admitted requests",
           double(gauges_.kv_bytes_reserved));
    metric(s, "longctx_kv_bytes_capacity", "gauge", "KV cache memory budget (--kv-memory)",
           double(gauges_.kv_bytes_capacity));
    metric(s, "longctx_requests_queued", "gauge", "requests waiting for a slot", double(gauges_.n_queued));
    metric(s, "longctx_requests_processing", "gauge", "requests in a slot", double(gauges_.n_active));
    metric(s, "longctx_slots", "gauge", "slots (sequences held at once, -np)", double(gauges_.n_slots));
    return s;
}

} // namespace lc::server
