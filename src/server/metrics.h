// Server metrics for GET /metrics in the Prometheus text format (version 0.0.4): request counts by endpoint and
// HTTP status, tokens, prefill and decode time (throughput = tokens / seconds), KV bytes, queue and slots.
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace lc::server {

// Values the scheduler owns and reports as a whole (gauges).
struct metrics_gauges {
    int64_t n_queued          = 0; // requests waiting for a slot
    int64_t n_active          = 0; // requests in a slot (prefilling or generating)
    int64_t n_slots           = 0;
    int64_t kv_bytes_used     = 0;
    int64_t kv_bytes_capacity = 0;
    int64_t kv_bytes_reserved = 0; // what admitted requests may still grow to
};

class metrics {
  public:
    void request_done(const std::string & endpoint, int http_status);
    void prompt_tokens_add(int64_t n, double seconds); // prefill work
    void decode_step_add(int64_t n, double seconds);   // one decode step of n sequences and its time
    void generated_add(int64_t n);                     // tokens sampled for the clients
    void cancelled_add() { n_cancelled_.fetch_add(1, std::memory_order_relaxed); }
    void rejected_add() { n_rejected_.fetch_add(1, std::memory_order_relaxed); }
    void gauges_set(const metrics_gauges & g);

    // The /metrics body.
    std::string render() const;

  private:
    mutable std::mutex                             mutex_;
    std::map<std::pair<std::string, int>, int64_t> requests_; // (endpoint, status) -> count
    int64_t                                        n_prompt_  = 0;
    int64_t                                        n_decoded_ = 0;
    int64_t                                        n_steps_   = 0;
    int64_t                                        n_gen_     = 0;
    double                                         t_prefill_ = 0.0;
    double                                         t_decode_  = 0.0;
    metrics_gauges                                 gauges_;
    std::atomic<int64_t>                           n_cancelled_{0};
    std::atomic<int64_t>                           n_rejected_{0};
};

} // namespace lc::server
