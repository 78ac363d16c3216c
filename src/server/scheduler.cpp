// Request scheduler (see scheduler.h). One iteration of the loop: drop cancelled jobs, admit queued jobs into
// free slots while the KV budget allows, prefill one chunk of one prompt, then one decode step over every
// generating slot, so that a long prompt never stalls the sequences already generating.
#include "server/scheduler.h"

#include <algorithm>

#include "core/log.h"
#include "server/openai-api.h"

namespace lc::server {

using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

} // namespace

// ---- gen_job ----------------------------------------------------------------------------------------------

void gen_job::push(gen_event e) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        events_.push_back(std::move(e));
    }
    cv_.notify_one();
}

bool gen_job::pop(gen_event & e, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
    e = std::move(events_.front());
    events_.pop_front();
    return true;
}

// ---- the engine over one multi-sequence context ---------------------------------------------------------

namespace {

bool same_methods(const attn_config & a, const attn_config & b) {
    return a.prefill == b.prefill && a.budget.mode == b.budget.mode && a.budget.value == b.budget.value &&
           a.decode == b.decode && a.decode_keys.mode == b.decode_keys.mode &&
           a.decode_keys.value == b.decode_keys.value && a.kv == b.kv &&
           a.kv_opts.budget.mode == b.kv_opts.budget.mode && a.kv_opts.budget.value == b.kv_opts.budget.value;
}

// One sequence per slot of one lc::context: decode_step is one batched forward pass, the context's KV pool
// (--kv-memory) is the budget.
class context_engine final : public seq_engine {
  public:
    context_engine(std::unique_ptr<context> c, const attn_config & a)
        : ctx_(std::move(c)), attn_(size_t(ctx_->n_seq()), a) {}

    int     n_seq() const override { return ctx_->n_seq(); }
    int64_t n_ctx() const override { return ctx_->n_ctx(); }
    int32_t n_vocab() const override { return ctx_->get_model().hparams().n_vocab; }

    status decode_seq(int seq, const std::vector<int32_t> & tokens, bool prompt_end) override {
        return ctx_->decode_seq(seq, tokens, false, {}, prompt_end);
    }
    status decode_step(const std::vector<int> & seqs, const std::vector<int32_t> & tokens) override {
        return ctx_->decode_step(seqs, tokens);
    }
    const float * logits_of(int seq) const override { return ctx_->logits_of(seq); }
    int64_t       n_past(int seq) const override { return ctx_->n_past(seq); }
    void          clear(int seq) override { ctx_->clear(seq); }

    status set_methods(int seq, const attn_config & c) override {
        // Building a method's state may cost (a sidecar read): only when it changes.
        if (same_methods(attn_[size_t(seq)], c)) return status::ok();
        LC_RETURN_IF_ERROR(ctx_->set_methods(seq, c));
        attn_[size_t(seq)] = c;
        return status::ok();
    }

    size_t kv_bytes_held() const override { return ctx_->kv_bytes_held(); }
    size_t kv_bytes_capacity() const override { return ctx_->kv_bytes_capacity(); }
    size_t kv_bytes_for(int64_t n_tokens) const override { return ctx_->kv_bytes_for(n_tokens); }

  private:
    std::unique_ptr<context> ctx_;
    std::vector<attn_config> attn_; // each sequence's methods
};

} // namespace

result<std::unique_ptr<seq_engine>> seq_engine_create(const model & m, const context_params & p) {
    LC_ASSIGN_OR_RETURN(std::unique_ptr<context> c, context::create(m, p));
    return std::unique_ptr<seq_engine>(std::make_unique<context_engine>(std::move(c), p.attn));
}

// ---- scheduler ---------------------------------------------------------------------------------------------

struct scheduler::slot {
    int                      seq = 0;
    std::shared_ptr<gen_job> job; // null: free
    std::unique_ptr<sampler> smp;
    size_t                   reserved    = 0; // KV bytes reserved for the job
    int64_t                  n_prefilled = 0; // prompt tokens decoded
    bool                     generating  = false;
    int32_t                  next_token  = -1; // sampled, not yet decoded
    int64_t                  n_gen       = 0;
    std::string              text; // generated text not yet sent
    clock_type::time_point   t_admit;
};

scheduler::scheduler(std::unique_ptr<seq_engine> engine, token_text tt, scheduler_params p, metrics & m)
    : engine_(std::move(engine)), tt_(std::move(tt)), params_(p), metrics_(m), n_seq_(engine_->n_seq()),
      kv_capacity_(engine_->kv_bytes_capacity()) {
    for (int i = 0; i < n_seq_; ++i) {
        slots_.push_back(std::make_unique<slot>());
        slots_.back()->seq = i;
    }
    publish_gauges();
}

scheduler::~scheduler() {
    stop();
}

void scheduler::start() {
    LC_ASSERT(!thread_.joinable(), "scheduler started twice");
    thread_ = std::thread([this] { loop(); });
}

void scheduler::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

status scheduler::submit(std::shared_ptr<gen_job> job) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return error(status_code::RESOURCE_EXHAUSTED, "the server is shutting down");
        if (int64_t(queue_.size()) >= params_.n_queue_max) {
            metrics_.rejected_add();
            return error(status_code::RESOURCE_EXHAUSTED,
                         "the server is busy: %zu requests are waiting (the queue holds %lld); retry later",
                         queue_.size(), (long long)params_.n_queue_max);
        }
        queue_.push_back(std::move(job));
    }
    cv_.notify_all();
    return status::ok();
}

size_t scheduler::reserve_of(const gen_job & j) const {
    // A full cache keeps every token: the job may grow to prompt + max_tokens. A compressing policy holds at
    // most the prompt after its prefill (then about its budget): the prompt must fit now.
    const int64_t n = int64_t(j.prompt.size()) + (j.attn.kv == kv_method::FULL ? j.max_tokens : 0);
    return engine_->kv_bytes_for(n);
}

void scheduler::admit() {
    std::vector<std::shared_ptr<gen_job>> refused, cancelled;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        // Jobs that can never fit, or whose client left while they waited, leave the queue at once.
        for (auto it = queue_.begin(); it != queue_.end();) {
            if ((*it)->cancelled()) {
                cancelled.push_back(*it);
                it = queue_.erase(it);
            } else if (reserve_of(**it) > kv_capacity_) {
                refused.push_back(*it);
                it = queue_.erase(it);
            } else {
                ++it;
            }
        }
        // First come, first served: a job that does not fit yet blocks those behind it (no starvation).
        for (auto & s : slots_) {
            if (s->job || queue_.empty()) continue;
            const size_t need = reserve_of(*queue_.front());
            if (kv_reserved_ + need > kv_capacity_) break;
            s->job = std::move(queue_.front());
            queue_.pop_front();
            s->reserved = need;
            kv_reserved_ += need;
        }
    }
    for (size_t i = 0; i < cancelled.size(); ++i) metrics_.cancelled_add();
    for (auto & j : refused) {
        gen_event e;
        e.type  = gen_event::kind::ERROR;
        e.error = error(status_code::INVALID_ARGUMENT,
                        "the request needs %zu bytes of KV cache (%zu prompt tokens + max_tokens %lld) but the "
                        "server's KV memory is %zu bytes (--kv-memory); lower max_tokens, shorten the prompt or "
                        "use a compressing KV policy (\"kv\": \"streaming\")",
                        reserve_of(*j), j->prompt.size(), (long long)j->max_tokens, kv_capacity_);
        j->push(std::move(e));
    }
    for (auto & sp : slots_) {
        slot & s = *sp;
        if (!s.job || s.smp) continue;
        // Newly admitted: set up the sequence.
        s.n_prefilled = 0;
        s.generating  = false;
        s.next_token  = -1;
        s.n_gen       = 0;
        s.text.clear();
        s.t_admit = clock_type::now();
        s.smp     = std::make_unique<sampler>(s.job->sampling);
        engine_->clear(s.seq);
        if (status st = engine_->set_methods(s.seq, s.job->attn); !st) {
            fail(s, st.code() == status_code::RESOURCE_EXHAUSTED
                        ? st
                        : error(status_code::UNSUPPORTED, "the request's methods cannot be used: %s",
                                st.message().c_str()));
            continue;
        }
        gen_event e;
        e.type = gen_event::kind::ADMITTED;
        s.job->push(std::move(e));
        LC_LOG_D("serve: slot %d: %zu prompt tokens, max_tokens %lld", s.seq, s.job->prompt.size(),
                 (long long)s.job->max_tokens);
    }
}

void scheduler::prefill_one() {
    const size_t n = slots_.size();
    for (size_t k = 0; k < n; ++k) {
        slot & s = *slots_[(next_prefill_ + k) % n];
        if (!s.job || s.generating) continue;
        next_prefill_                       = (next_prefill_ + k + 1) % n;
        const auto &               prompt   = s.job->prompt;
        const int64_t              n_prompt = int64_t(prompt.size());
        const int64_t              n_take   = std::min(params_.n_chunk, n_prompt - s.n_prefilled);
        const bool                 last     = s.n_prefilled + n_take == n_prompt;
        const std::vector<int32_t> chunk(prompt.begin() + s.n_prefilled, prompt.begin() + s.n_prefilled + n_take);
        const auto                 t0 = clock_type::now();
        status                     st = engine_->decode_seq(s.seq, chunk, last);
        metrics_.prompt_tokens_add(st ? n_take : 0, seconds_since(t0));
        if (!st) {
            fail(s, st);
            return;
        }
        s.n_prefilled += n_take;
        if (s.job->progress && n_prompt > params_.n_chunk) { // long prompts only: more than one chunk
            gen_event e;
            e.type       = gen_event::kind::PROGRESS;
            e.done       = s.n_prefilled;
            e.total      = n_prompt;
            e.elapsed_ms = 1000.0 * seconds_since(s.t_admit);
            s.job->push(std::move(e));
        }
        if (last) {
            s.generating = true;
            take_token(s);
        }
        return;
    }
}

void scheduler::decode_all() {
    std::vector<int>     seqs;
    std::vector<int32_t> toks;
    for (auto & sp : slots_) {
        if (!sp->job || !sp->generating) continue;
        seqs.push_back(sp->seq);
        toks.push_back(sp->next_token);
    }
    if (seqs.empty()) return;
    const auto t0 = clock_type::now();
    status     st = engine_->decode_step(seqs, toks);
    if (!st) {
        // No room in the KV budget. Only compressing policies grow past their reservation (a full cache reserved
        // prompt + max_tokens), so the generating slot with a compressing policy and the most tokens gives up
        // (any slot with the most tokens when none compresses); the others try again next iteration.
        slot * worst      = nullptr;
        auto   compresses = [](const slot & s) { return s.job->attn.kv != kv_method::FULL; };
        auto   worse_than = [&](const slot & a, const slot & b) {
            if (compresses(a) != compresses(b)) return compresses(a);
            return engine_->n_past(a.seq) > engine_->n_past(b.seq);
        };
        for (auto & sp : slots_)
            if (sp->job && sp->generating && (!worst || worse_than(*sp, *worst))) worst = sp.get();
        LC_LOG_W("serve: decode step over %zu sequences failed: %s", seqs.size(), st.message().c_str());
        fail(*worst, st);
        return;
    }
    metrics_.decode_step_add(int64_t(seqs.size()), seconds_since(t0));
    for (auto & sp : slots_)
        if (sp->job && sp->generating) take_token(*sp);
}

bool scheduler::take_token(slot & s) {
    gen_job &     j  = *s.job;
    const int32_t id = s.smp->sample(engine_->logits_of(s.seq), engine_->n_vocab());
    if (tt_.is_eog(id)) {
        finish(s, "stop");
        return false;
    }
    ++s.n_gen;
    metrics_.generated_add(1);
    s.text += tt_.piece(id);
    const text_cut cut = text_cut_find(s.text, j.stop);
    if (cut.stop_at != std::string::npos) {
        s.text.resize(cut.stop_at);
        finish(s, "stop");
        return false;
    }
    if (s.n_gen >= j.max_tokens) {
        finish(s, "length");
        return false;
    }
    if (cut.safe_end > 0) {
        gen_event e;
        e.type = gen_event::kind::TEXT;
        e.text = s.text.substr(0, cut.safe_end);
        s.text.erase(0, cut.safe_end);
        j.push(std::move(e));
    }
    s.next_token = id;
    return true;
}

void scheduler::finish(slot & s, const std::string & reason) {
    if (!s.text.empty()) {
        gen_event e;
        e.type = gen_event::kind::TEXT;
        e.text = std::move(s.text);
        s.job->push(std::move(e));
    }
    gen_event e;
    e.type          = gen_event::kind::DONE;
    e.finish_reason = reason;
    e.n_prompt      = int64_t(s.job->prompt.size());
    e.n_gen         = s.n_gen;
    LC_LOG_I("serve: slot %d done: %lld prompt + %lld generated tokens in %.2f s, finish %s", s.seq,
             (long long)e.n_prompt, (long long)e.n_gen, seconds_since(s.t_admit), reason.c_str());
    release(s)->push(std::move(e));
}

void scheduler::fail(slot & s, const status & st) {
    gen_event e;
    e.type  = gen_event::kind::ERROR;
    e.error = st;
    LC_LOG_W("serve: slot %d failed: %s", s.seq, st.message().c_str());
    release(s)->push(std::move(e));
}

std::shared_ptr<gen_job> scheduler::release(slot & s) {
    // The slot's memory is free before its job's last event goes out.
    engine_->clear(s.seq);
    kv_reserved_ -= s.reserved;
    s.reserved = 0;
    s.smp.reset();
    s.text.clear();
    return std::move(s.job);
}

void scheduler::publish_gauges() {
    metrics_gauges g;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        g.n_queued = int64_t(queue_.size());
    }
    for (auto & s : slots_) g.n_active += s->job ? 1 : 0;
    g.n_slots           = n_seq_;
    g.kv_bytes_used     = int64_t(engine_->kv_bytes_held());
    g.kv_bytes_capacity = int64_t(kv_capacity_);
    g.kv_bytes_reserved = int64_t(kv_reserved_);
    metrics_.gauges_set(g);
}

void scheduler::loop() {
    while (true) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            auto                         busy = [&] {
                for (auto & s : slots_)
                    if (s->job) return true;
                return false;
            };
            cv_.wait(lock, [&] { return stop_ || !queue_.empty() || busy(); });
            if (stop_) break;
        }
        for (auto & sp : slots_) {
            if (sp->job && sp->job->cancelled()) {
                LC_LOG_I("serve: slot %d: client gone, request cancelled after %lld tokens", sp->seq,
                         (long long)sp->n_gen);
                metrics_.cancelled_add();
                release(*sp);
            }
        }
        admit();
        prefill_one();
        decode_all();
        publish_gauges();
        // Queued jobs that cannot be admitted while nothing runs would spin here; they fit once slots free up,
        // and with every slot free everything that can ever fit is admitted, so the wait above then sleeps.
    }
    // Shutdown: everything still waiting or running ends with an error.
    std::deque<std::shared_ptr<gen_job>> left;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        left.swap(queue_);
    }
    const status st = error(status_code::RESOURCE_EXHAUSTED, "the server is shutting down");
    for (auto & sp : slots_)
        if (sp->job) fail(*sp, st);
    for (auto & j : left) {
        gen_event e;
        e.type  = gen_event::kind::ERROR;
        e.error = st;
        j->push(std::move(e));
    }
}

} // namespace lc::server
