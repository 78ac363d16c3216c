// The request scheduler of `longctx serve` over a scripted engine (no model): sampling, stop sequences,
// max_tokens and end of generation, batched decode steps across slots, chunked prefill interleaved with decode,
// progress events, the bounded queue, admission under the KV budget (wait, refuse what can never fit, never over
// the budget), cancellation freeing the slot, shutdown.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>

#include "server/scheduler.h"

using namespace lc;
using namespace lc::server;

namespace {

constexpr int32_t k_vocab = 8;
constexpr int32_t k_eog   = 7;
constexpr size_t  k_bpt   = 100; // KV bytes per token
constexpr int64_t k_never = int64_t(1) << 40;

// Greedy output is scripted: after h tokens of history the argmax is token 1 + h % 5 ('b'..'f'), or the end
// token once h reaches eog_after. Token t prints as the letter 'a' + t.
class fake_engine final : public seq_engine {
  public:
    fake_engine(int n_seq, int64_t n_ctx, size_t capacity, int64_t eog_after)
        : hist_(size_t(n_seq)), n_ctx_(n_ctx), capacity_(capacity), eog_after_(eog_after), logits_(size_t(n_seq)) {}

    int     n_seq() const override { return int(hist_.size()); }
    int64_t n_ctx() const override { return n_ctx_; }
    int32_t n_vocab() const override { return k_vocab; }

    status decode_seq(int seq, const std::vector<int32_t> & tokens, bool) override {
        std::lock_guard<std::mutex> lock(m_);
        if (held_tokens() + tokens.size() > capacity_ / k_bpt) return error(status_code::RESOURCE_EXHAUSTED, "full");
        auto & h = hist_[size_t(seq)];
        h.insert(h.end(), tokens.begin(), tokens.end());
        calls_.push_back("p" + std::to_string(seq) + ":" + std::to_string(tokens.size()));
        track();
        return status::ok();
    }
    status decode_step(const std::vector<int> & seqs, const std::vector<int32_t> & tokens) override {
        std::lock_guard<std::mutex> lock(m_);
        std::vector<int>            sorted = seqs;
        std::sort(sorted.begin(), sorted.end());
        EXPECT_TRUE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()) << "sequences repeat";
        if (held_tokens() + seqs.size() > capacity_ / k_bpt) return error(status_code::RESOURCE_EXHAUSTED, "full");
        for (size_t i = 0; i < seqs.size(); ++i) hist_[size_t(seqs[i])].push_back(tokens[i]);
        calls_.push_back("d" + std::to_string(seqs.size()));
        max_batch_ = std::max(max_batch_, seqs.size());
        track();
        return status::ok();
    }
    const float * logits_of(int seq) const override {
        std::vector<float> & l = logits_[size_t(seq)];
        l.assign(k_vocab, 0.0f);
        const int64_t h                                = int64_t(hist_[size_t(seq)].size());
        l[size_t(h >= eog_after_ ? k_eog : 1 + h % 5)] = 10.0f;
        return l.data();
    }
    int64_t n_past(int seq) const override { return int64_t(hist_[size_t(seq)].size()); }
    void    clear(int seq) override {
        std::lock_guard<std::mutex> lock(m_);
        hist_[size_t(seq)].clear();
    }
    status set_methods(int seq, const attn_config & c) override {
        if (!hist_[size_t(seq)].empty()) return error(status_code::INTERNAL, "set_methods on a busy sequence");
        if (c.decode == decode_kind::LOKI) return error(status_code::NOT_FOUND, "no loki calibration");
        return status::ok();
    }
    size_t kv_bytes_held() const override { return held_tokens() * k_bpt; }
    size_t kv_bytes_capacity() const override { return capacity_; }
    size_t kv_bytes_for(int64_t n) const override { return size_t(n) * k_bpt; }

    std::vector<std::string> calls() {
        std::lock_guard<std::mutex> lock(m_);
        return calls_;
    }
    size_t max_batch() const { return max_batch_; }
    size_t max_held() const { return max_held_; }
    size_t held_now() {
        std::lock_guard<std::mutex> lock(m_);
        return held_tokens();
    }

  private:
    size_t held_tokens() const {
        size_t n = 0;
        for (const auto & h : hist_) n += h.size();
        return n;
    }
    void track() { max_held_ = std::max(max_held_, held_tokens() * k_bpt); }

    std::mutex                              m_;
    std::vector<std::vector<int32_t>>       hist_;
    int64_t                                 n_ctx_;
    size_t                                  capacity_;
    int64_t                                 eog_after_;
    mutable std::vector<std::vector<float>> logits_;
    std::vector<std::string>                calls_;
    size_t                                  max_batch_ = 0;
    size_t                                  max_held_  = 0;
};

token_text letters() {
    return {[](int32_t id) { return id == k_eog ? std::string() : std::string(1, char('a' + id)); },
            [](int32_t id) { return id == k_eog; }};
}

std::shared_ptr<gen_job> make_job(size_t n_prompt, int64_t max_tokens, std::vector<std::string> stop = {}) {
    auto j           = std::make_shared<gen_job>();
    j->prompt        = std::vector<int32_t>(n_prompt, 0);
    j->max_tokens    = max_tokens;
    j->sampling.temp = 0.0f; // greedy: the scripted tokens
    j->stop          = std::move(stop);
    return j;
}

struct outcome {
    std::vector<gen_event::kind> kinds;
    std::string                  text;
    gen_event                    last;
};

outcome drain(gen_job & j) {
    outcome   o;
    gen_event e;
    while (true) {
        if (!j.pop(e, std::chrono::milliseconds(5000))) {
            ADD_FAILURE() << "no event for 5 s";
            return o;
        }
        o.kinds.push_back(e.type);
        if (e.type == gen_event::kind::TEXT) o.text += e.text;
        if (e.type == gen_event::kind::DONE || e.type == gen_event::kind::ERROR) {
            o.last = e;
            return o;
        }
    }
}

struct rig {
    fake_engine *              eng = nullptr;
    metrics                    met;
    std::unique_ptr<scheduler> sched;
    rig(int n_seq, size_t capacity, int64_t eog_after = k_never, scheduler_params p = {}, bool start = true) {
        auto e = std::make_unique<fake_engine>(n_seq, 4096, capacity, eog_after);
        eng    = e.get();
        sched  = std::make_unique<scheduler>(std::move(e), letters(), p, met);
        if (start) sched->start();
    }
};

} // namespace

// History after a prompt of 3: argmax 1 + 3 % 5 = 4 ('e'), then 'f', 'b', 'c', ...
TEST(scheduler, max_tokens_gives_length) {
    rig  r(1, 1 << 20);
    auto j = make_job(3, 4);
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    outcome o = drain(*j);
    EXPECT_EQ(o.kinds.front(), gen_event::kind::ADMITTED);
    EXPECT_EQ(o.text, "efbc");
    EXPECT_EQ(o.last.type, gen_event::kind::DONE);
    EXPECT_EQ(o.last.finish_reason, "length");
    EXPECT_EQ(o.last.n_prompt, 3);
    EXPECT_EQ(o.last.n_gen, 4);
}

TEST(scheduler, stop_sequence_cuts_and_stops) {
    rig  r(1, 1 << 20);
    auto j = make_job(3, 50, {"bc"});
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    outcome o = drain(*j);
    EXPECT_EQ(o.text, "ef"); // "efbc..." cut before "bc"
    EXPECT_EQ(o.last.finish_reason, "stop");
}

TEST(scheduler, end_of_generation_stops) {
    rig  r(1, 1 << 20, /*eog_after=*/6);
    auto j = make_job(3, 50);
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    outcome o = drain(*j);
    EXPECT_EQ(o.text, "efb"); // histories 3, 4, 5 sample letters; 6 samples the end token
    EXPECT_EQ(o.last.finish_reason, "stop");
    EXPECT_EQ(o.last.n_gen, 3);
}

TEST(scheduler, decode_steps_are_batched_across_slots) {
    rig                                   r(3, 1 << 20, 1000, {}, /*start=*/false);
    std::vector<std::shared_ptr<gen_job>> jobs;
    for (int i = 0; i < 3; ++i) jobs.push_back(make_job(2, 20));
    for (auto & j : jobs) ASSERT_TRUE(r.sched->submit(j).is_ok()); // all queued before the scheduler runs
    r.sched->start();
    for (auto & j : jobs) EXPECT_EQ(drain(*j).last.n_gen, 20);
    EXPECT_EQ(r.eng->max_batch(), 3u);
    EXPECT_EQ(r.eng->held_now(), 0u); // every slot cleared
}

TEST(scheduler, chunked_prefill_interleaves_with_decode_and_reports_progress) {
    scheduler_params p;
    p.n_chunk = 4;
    rig  r(2, size_t(1) << 30, k_never, p);
    auto a = make_job(2, 1000000); // generates until cancelled
    ASSERT_TRUE(r.sched->submit(a).is_ok());
    gen_event e;
    while (a->pop(e, std::chrono::milliseconds(5000)) && e.type != gen_event::kind::TEXT) {
    }
    auto b      = make_job(10, 2);
    b->progress = true;
    ASSERT_TRUE(r.sched->submit(b).is_ok());
    outcome ob = drain(*b);
    a->cancel();
    int n_progress = 0;
    for (auto k : ob.kinds) n_progress += k == gen_event::kind::PROGRESS;
    EXPECT_EQ(n_progress, 3); // 4 + 4 + 2
    // Between b's prefill chunks the generating slot a keeps decoding.
    const auto calls = r.eng->calls();
    int        first = -1, last = -1;
    for (int i = 0; i < int(calls.size()); ++i)
        if (calls[size_t(i)] == "p1:4" || calls[size_t(i)] == "p1:2") (first < 0 ? first : last) = i, last = i;
    ASSERT_GE(first, 0);
    bool decoded_between = false;
    for (int i = first; i < last; ++i) decoded_between |= calls[size_t(i)][0] == 'd';
    EXPECT_TRUE(decoded_between);
}

TEST(scheduler, progress_events_count_chunks) {
    scheduler_params p;
    p.n_chunk = 2;
    rig  r(1, 1 << 20, k_never, p);
    auto j      = make_job(5, 1);
    j->progress = true;
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    std::vector<int64_t> seen;
    gen_event            e;
    while (j->pop(e, std::chrono::milliseconds(5000))) {
        if (e.type == gen_event::kind::PROGRESS) {
            seen.push_back(e.done);
            EXPECT_EQ(e.total, 5);
        }
        if (e.type == gen_event::kind::DONE) break;
    }
    EXPECT_EQ(seen, (std::vector<int64_t>{2, 4, 5}));
}

TEST(scheduler, queue_is_bounded) {
    scheduler_params p;
    p.n_queue_max = 2;
    // Capacity for one job at a time (10 + 90 tokens): the rest wait in the queue.
    rig                                   r(1, 100 * k_bpt, k_never, p);
    std::vector<std::shared_ptr<gen_job>> ok;
    int                                   n_refused = 0;
    for (int i = 0; i < 6; ++i) {
        auto   j  = make_job(10, 90);
        status st = r.sched->submit(j);
        if (st.is_ok())
            ok.push_back(j);
        else {
            EXPECT_EQ(st.code(), status_code::RESOURCE_EXHAUSTED);
            ++n_refused;
        }
    }
    EXPECT_GE(n_refused, 1);
    for (auto & j : ok) EXPECT_EQ(drain(*j).last.finish_reason, "length");
}

TEST(scheduler, kv_budget_waits_refuses_and_is_never_exceeded) {
    // 40 tokens of KV: jobs of 5 + 15 tokens; two fit at once, the third waits; 5 + 40 never fits.
    rig                                   r(4, 40 * k_bpt);
    std::vector<std::shared_ptr<gen_job>> jobs;
    for (int i = 0; i < 3; ++i) jobs.push_back(make_job(5, 15));
    auto huge = make_job(5, 40);
    for (auto & j : jobs) ASSERT_TRUE(r.sched->submit(j).is_ok());
    ASSERT_TRUE(r.sched->submit(huge).is_ok());
    for (auto & j : jobs) EXPECT_EQ(drain(*j).last.n_gen, 15);
    outcome oh = drain(*huge);
    EXPECT_EQ(oh.last.type, gen_event::kind::ERROR);
    EXPECT_EQ(oh.last.error.code(), status_code::INVALID_ARGUMENT);
    EXPECT_NE(oh.last.error.message().find("--kv-memory"), std::string::npos);
    EXPECT_LE(r.eng->max_held(), 40 * k_bpt);
    EXPECT_LE(r.eng->max_batch(), 2u);
}

TEST(scheduler, compressing_policy_needs_only_the_prompt_to_fit) {
    rig  r(1, 40 * k_bpt);
    auto j      = make_job(30, 20); // 50 tokens under a full cache: refused
    auto jc     = make_job(30, 5);  // a compressing policy: admitted (the prompt fits)
    jc->attn.kv = kv_method::STREAMING;
    j->attn.kv  = kv_method::FULL;
    auto j2     = make_job(30, 20);
    j2->attn.kv = kv_method::STREAMING; // grows past the budget: fails cleanly when the engine is full
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    ASSERT_TRUE(r.sched->submit(jc).is_ok());
    ASSERT_TRUE(r.sched->submit(j2).is_ok());
    EXPECT_EQ(drain(*j).last.type, gen_event::kind::ERROR);
    EXPECT_EQ(drain(*jc).last.n_gen, 5);
    outcome o2 = drain(*j2);
    EXPECT_EQ(o2.last.type, gen_event::kind::ERROR);
    EXPECT_EQ(o2.last.error.code(), status_code::RESOURCE_EXHAUSTED);
    // The server keeps serving.
    auto after = make_job(3, 2);
    ASSERT_TRUE(r.sched->submit(after).is_ok());
    EXPECT_EQ(drain(*after).last.finish_reason, "length");
}

TEST(scheduler, kv_overflow_fails_the_compressing_job_not_the_full_one) {
    // 40 tokens: F reserves 20 + 14 (full cache), C only its prompt of 2 (compressing) but keeps growing. When the
    // budget runs out F holds the most tokens, yet C is the one past its reservation and must give up.
    rig  r(2, 40 * k_bpt, k_never, {}, /*start=*/false);
    auto f     = make_job(20, 14);
    auto c     = make_job(2, 100);
    c->attn.kv = kv_method::H2O;
    ASSERT_TRUE(r.sched->submit(f).is_ok());
    ASSERT_TRUE(r.sched->submit(c).is_ok());
    r.sched->start();
    outcome of = drain(*f);
    outcome oc = drain(*c);
    EXPECT_EQ(of.last.type, gen_event::kind::DONE);
    EXPECT_EQ(of.last.n_gen, 14);
    EXPECT_EQ(oc.last.type, gen_event::kind::ERROR);
    EXPECT_EQ(oc.last.error.code(), status_code::RESOURCE_EXHAUSTED);
}

TEST(scheduler, bad_methods_fail_the_job_not_the_server) {
    rig  r(1, 1 << 20);
    auto j         = make_job(3, 2);
    j->attn.decode = decode_kind::LOKI;
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    outcome o = drain(*j);
    EXPECT_EQ(o.last.type, gen_event::kind::ERROR);
    EXPECT_EQ(o.last.error.code(), status_code::UNSUPPORTED);
    auto ok = make_job(3, 2);
    ASSERT_TRUE(r.sched->submit(ok).is_ok());
    EXPECT_EQ(drain(*ok).last.finish_reason, "length");
}

TEST(scheduler, cancel_frees_the_slot) {
    rig  r(1, size_t(1) << 30);
    auto j = make_job(3, 1000000);
    ASSERT_TRUE(r.sched->submit(j).is_ok());
    gen_event e;
    ASSERT_TRUE(j->pop(e, std::chrono::milliseconds(5000)));
    EXPECT_EQ(e.type, gen_event::kind::ADMITTED);
    ASSERT_TRUE(j->pop(e, std::chrono::milliseconds(5000)));
    EXPECT_EQ(e.type, gen_event::kind::TEXT);
    j->cancel();
    auto next = make_job(3, 2);
    ASSERT_TRUE(r.sched->submit(next).is_ok());
    EXPECT_EQ(drain(*next).last.finish_reason, "length"); // only possible once the one slot is free
    EXPECT_EQ(r.eng->held_now(), 0u);
    // A job cancelled while it waits in the queue never runs: the one slot is busy until `blocker` is cancelled.
    auto blocker = make_job(3, 1000000);
    auto queued  = make_job(3, 2);
    ASSERT_TRUE(r.sched->submit(blocker).is_ok());
    ASSERT_TRUE(r.sched->submit(queued).is_ok());
    queued->cancel();
    blocker->cancel();
    auto last = make_job(3, 2);
    ASSERT_TRUE(r.sched->submit(last).is_ok());
    EXPECT_EQ(drain(*last).last.finish_reason, "length");
    EXPECT_FALSE(queued->pop(e, std::chrono::milliseconds(0)) && e.type == gen_event::kind::ADMITTED);
}

TEST(scheduler, stop_ends_waiting_and_running_jobs) {
    rig  r(1, size_t(1) << 30);
    auto running = make_job(3, 1000000);
    auto waiting = make_job(3, 5);
    ASSERT_TRUE(r.sched->submit(running).is_ok());
    ASSERT_TRUE(r.sched->submit(waiting).is_ok());
    gen_event e;
    ASSERT_TRUE(running->pop(e, std::chrono::milliseconds(5000)));
    EXPECT_EQ(e.type, gen_event::kind::ADMITTED);
    r.sched->stop();
    EXPECT_EQ(drain(*running).last.type, gen_event::kind::ERROR);
    EXPECT_EQ(drain(*waiting).last.type, gen_event::kind::ERROR);
    EXPECT_EQ(r.sched->submit(make_job(1, 1)).code(), status_code::RESOURCE_EXHAUSTED);
}
