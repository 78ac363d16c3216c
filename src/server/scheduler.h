// The request scheduler of `longctx serve`: a bounded queue, slots (sequences of one engine), admission under a
// KV memory budget, chunked prefill interleaved with batched decode steps, per-slot sampling, stop sequences,
// max_tokens, end of generation and cancellation. One scheduler thread owns the engine; HTTP threads submit
// jobs and read each job's events through the job's own thread-safe channel.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "attn/attn-config.h"
#include "longctx/status.h"
#include "runtime/context.h"
#include "runtime/sampling.h"
#include "server/metrics.h"

namespace lc::server {

// The sequences a scheduler drives: the multi-sequence context API (sequence = slot). decode_seq and
// decode_step return RESOURCE_EXHAUSTED when the KV budget has no room and OUT_OF_RANGE over n_ctx.
// Thread-safety: one thread at a time (the scheduler's).
class seq_engine {
  public:
    virtual ~seq_engine() = default;

    virtual int     n_seq() const   = 0;
    virtual int64_t n_ctx() const   = 0;
    virtual int32_t n_vocab() const = 0;
    // Prefills or appends tokens to one sequence; prompt_end = false: more of the same prompt follows.
    virtual status decode_seq(int seq, const std::vector<int32_t> & tokens, bool prompt_end) = 0;
    // One token for each of several distinct sequences.
    virtual status        decode_step(const std::vector<int> & seqs, const std::vector<int32_t> & tokens) = 0;
    virtual const float * logits_of(int seq) const = 0; // [n_vocab]
    virtual int64_t       n_past(int seq) const    = 0;
    virtual void          clear(int seq)           = 0;
    // Per-sequence attention methods and KV policy; only while the sequence is empty.
    virtual status set_methods(int seq, const attn_config & c) = 0;
    virtual size_t kv_bytes_held() const                       = 0;
    virtual size_t kv_bytes_capacity() const                   = 0;
    virtual size_t kv_bytes_for(int64_t n_tokens) const        = 0;
};

// The engine over one lc::context holding p.n_seq sequences in p.kv_memory bytes of KV cache (see context.h).
result<std::unique_ptr<seq_engine>> seq_engine_create(const model & m, const context_params & p);

// What a job reports, in order: ADMITTED (it has a slot), PROGRESS* (prompt chunks), TEXT* (pieces of output),
// then one DONE or ERROR (which may also come first: a job that can never fit, or shutdown).
struct gen_event {
    enum class kind { ADMITTED, PROGRESS, TEXT, DONE, ERROR };
    kind        type = kind::TEXT;
    std::string text;                    // TEXT
    int64_t     done = 0, total = 0;     // PROGRESS: prompt tokens processed / in the prompt
    double      elapsed_ms = 0;          // PROGRESS: since the job was admitted
    std::string finish_reason;           // DONE: "stop" or "length"
    int64_t     n_prompt = 0, n_gen = 0; // DONE: usage
    status      error;                   // ERROR
};

// One generation request. The submitter fills the inputs, submits, then pops events until DONE or ERROR.
// cancel() (client gone) makes the scheduler drop the job and free its slot at its next iteration.
class gen_job {
  public:
    std::vector<int32_t>     prompt;
    int64_t                  max_tokens = 16;
    sampling_params          sampling;
    std::vector<std::string> stop;
    attn_config              attn;
    bool                     progress = false; // report PROGRESS events

    // Scheduler side.
    void push(gen_event e);
    // Submitter side: waits up to `timeout` for an event; false on timeout.
    bool pop(gen_event & e, std::chrono::milliseconds timeout);
    void cancel() { cancelled_.store(true, std::memory_order_release); }
    bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  private:
    std::mutex              mutex_;
    std::condition_variable cv_;
    std::deque<gen_event>   events_;
    std::atomic<bool>       cancelled_{false};
};

struct token_text {
    std::function<std::string(int32_t)> piece;  // output bytes of a token
    std::function<bool(int32_t)>        is_eog; // end of generation
};

struct scheduler_params {
    int64_t n_queue_max = 64;  // submit() refuses beyond this many waiting jobs
    int64_t n_chunk     = 512; // prompt tokens per prefill step
};

// Thread-safety: submit(), stats() and stop() may be called from any thread.
class scheduler {
  public:
    scheduler(std::unique_ptr<seq_engine> engine, token_text tt, scheduler_params p, metrics & m);
    ~scheduler();

    void start();
    void stop(); // cancels what is queued and running, joins the thread

    // Checks what can be known at once (the job can never fit the KV budget: INVALID_ARGUMENT; the queue is
    // full: RESOURCE_EXHAUSTED) and queues the job.
    status submit(std::shared_ptr<gen_job> job);

    int    n_seq() const { return n_seq_; }
    size_t kv_bytes_capacity() const { return kv_capacity_; }

  private:
    struct slot;
    void   loop();
    size_t reserve_of(const gen_job & j) const; // KV bytes an admitted job may grow to
    void   admit();
    void   prefill_one();
    void   decode_all();
    // Samples the slot's next token from its logits, emits text; returns false when the slot finished.
    bool                     take_token(slot & s);
    void                     finish(slot & s, const std::string & reason);
    void                     fail(slot & s, const status & st);
    std::shared_ptr<gen_job> release(slot & s); // frees the slot, returns its job
    void                     publish_gauges();

    std::unique_ptr<seq_engine> engine_;
    token_text                  tt_;
    scheduler_params            params_;
    metrics &                   metrics_;
    const int                   n_seq_;
    const size_t                kv_capacity_;
    std::vector<size_t>         kv_for_cache_; // kv_bytes_for is asked on the scheduler thread only

    std::mutex                           mutex_; // guards queue_, stop_
    std::condition_variable              cv_;
    std::deque<std::shared_ptr<gen_job>> queue_;
    bool                                 stop_ = false;
    std::thread                          thread_;

    std::vector<std::unique_ptr<slot>> slots_;
    size_t                             next_prefill_ = 0; // round-robin over prefilling slots
    size_t                             kv_reserved_  = 0;
};

} // namespace lc::server
