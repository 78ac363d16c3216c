// The MInference offline pattern search (see minference-search.h). The search runs inside the dense prefill:
// an attention observer sees each layer's queries, the filled KV cache and the dense output, so nothing per
// layer has to be stored.
#include "calibrate/minference-search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "attn/attention.h"
#include "attn/attn-sparse-prefill.h"
#include "core/log.h"
#include "runtime/context.h"
#if LC_HAVE_CUDA
#include "backend/cuda/plan-timer.h"
#endif

namespace lc {

namespace {

// METHODS.md sec. 2.4 candidate list (budgets before re-timing).
std::vector<head_budget> candidate_list() {
    return {
        {head_pattern::A_SHAPE, 100, 800},  {head_pattern::VSLASH, 30, 800},    {head_pattern::VSLASH, 100, 750},
        {head_pattern::VSLASH, 100, 800},   {head_pattern::VSLASH, 500, 700},   {head_pattern::VSLASH, 3500, 100},
        {head_pattern::VSLASH, 1000, 4096}, {head_pattern::VSLASH, 1000, 6096}, {head_pattern::BLOCK, 100, 0},
    };
}

head_budget scaled(const head_budget & b, double f) {
    head_budget r = b;
    r.a           = std::max<int64_t>(1, int64_t(std::llround(double(b.a) * f)));
    r.b           = b.pattern == head_pattern::BLOCK ? 0 : std::max<int64_t>(1, int64_t(std::llround(double(b.b) * f)));
    return r;
}

class searcher : public attn_observer {
  public:
    searcher(const model & m, const minference_search_params & p, const search_progress_fn & progress, int n_search)
        : m_(m), p_(p), progress_(progress), n_search_(n_search) {
        const model_hparams & hp = m.hparams();
        res_.config              = minference_config_uniform(hp.n_layer, hp.n_head, head_pattern::VSLASH);
        for (const head_budget & b : candidate_list()) res_.candidates.push_back({b, b});
    }

    void on_attention(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                      int64_t window, const prefill_plan *, const float * o, thread_pool & pool) override {
        if (window != 0 || n_q < 2) return;
        pool_ = &pool;
        LC_ASSERT(pos0 == 0, "calibrate: the prompt must arrive in one call (whole-prompt mode)");
        if (!timed_) retime(il, q, n_q, n_head, kv, scale);
        search_layer(il, q, n_q, n_head, kv, scale, o);
        ++done_;
        if (progress_) progress_(done_, n_search_);
    }

    minference_search_result & result() { return res_; }
    const status &             timer_error() const { return timer_error_; }

  private:
    double time_plan(const head_budget & b, int il, const float * q, int64_t n_q, int n_head, const kv_view & kv,
                     float scale) {
        const minference_config one = minference_config_uniform(m_.hparams().n_layer, n_head, b);
        prefill_plan_build(one, prefill_budget{}, il, q, n_q, 0, n_head, kv, scale, plan_, pool());
        if (p_.plan_time) {
            lc::result<double> t = p_.plan_time(plan_, q, n_q, n_head, kv, scale);
            if (t.is_ok()) return *t;
            if (timer_error_.is_ok()) timer_error_ = t.get_status();
            return INFINITY;
        }
        out_.resize(size_t(n_q) * n_head * kv.head_dim);
        double best = INFINITY;
        for (int rep = 0; rep < 2; ++rep) {
            const auto t0 = std::chrono::steady_clock::now();
            attn_sparse_prefill(plan_, q, kv, scale, out_.data(), nullptr, pool());
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return best;
    }

    // Scales each candidate's budgets until its kernel time matches the target's (time is close to linear in the
    // budget below the prompt length, so target / measured is the next factor).
    void retime(int il, const float * q, int64_t n_q, int n_head, const kv_view & kv, float scale) {
        const head_budget target{head_pattern::A_SHAPE, 128, std::max<int64_t>(1, p_.target_keys - 128)};
        res_.target_time_s = time_plan(target, il, q, n_q, n_head, kv, scale);
        for (minference_candidate & c : res_.candidates) {
            // Start from the budget whose nominal keys per query match the target, then correct by measured time.
            const double nominal = c.initial.pattern == head_pattern::BLOCK ? 64.0 * double(c.initial.a)
                                                                            : double(c.initial.a + c.initial.b);
            double       f       = double(p_.target_keys) / nominal;
            for (int round = 0; round < p_.n_retime; ++round) {
                c.time_s = time_plan(scaled(c.initial, f), il, q, n_q, n_head, kv, scale);
                f        = std::clamp(f * res_.target_time_s / std::max(c.time_s, 1e-9), 1e-3, 1e4);
            }
            c.budget = scaled(c.initial, f);
            c.time_s = time_plan(c.budget, il, q, n_q, n_head, kv, scale);
            LC_LOG_I("calibrate: candidate %s(%lld, %lld) -> (%lld, %lld): %.3f ms (target %.3f ms)",
                     head_pattern_name(c.initial.pattern), (long long)c.initial.a, (long long)c.initial.b,
                     (long long)c.budget.a, (long long)c.budget.b, 1e3 * c.time_s, 1e3 * res_.target_time_s);
        }
        timed_ = true;
    }

    void search_layer(int il, const float * q, int64_t n_q, int n_head, const kv_view & kv, float scale,
                      const float * o_dense) {
        const int            D = kv.head_dim;
        std::vector<int64_t> best_err(size_t(n_head), INT64_MAX);
        std::vector<int>     best(size_t(n_head), -1);
        out_.resize(size_t(n_q) * n_head * D);
        for (size_t ci = 0; ci < res_.candidates.size(); ++ci) {
            const head_budget &     b   = res_.candidates[ci].budget;
            const minference_config one = minference_config_uniform(m_.hparams().n_layer, n_head, b);
            prefill_plan_build(one, prefill_budget{}, il, q, n_q, 0, n_head, kv, scale, plan_, pool());
            attn_sparse_prefill(plan_, q, kv, scale, out_.data(), nullptr, pool());
            for (int h = 0; h < n_head; ++h) {
                int64_t err = 0;
                for (int64_t i = 0; i < n_q; ++i) {
                    const float * a = out_.data() + (i * n_head + h) * D;
                    const float * r = o_dense + (i * n_head + h) * D;
                    for (int d = 0; d < D; ++d) err += std::fabs(a[d] - r[d]) > p_.tolerance;
                }
                // Ties go to the cheaper candidate (the list is in no cost order after re-timing: compare times).
                if (err < best_err[size_t(h)] ||
                    (err == best_err[size_t(h)] &&
                     res_.candidates[ci].time_s < res_.candidates[best[size_t(h)]].time_s)) {
                    best_err[size_t(h)] = err;
                    best[size_t(h)]     = int(ci);
                }
            }
        }
        const double n_el = double(n_q) * D;
        for (int h = 0; h < n_head; ++h) {
            minference_candidate & c = res_.candidates[size_t(best[size_t(h)])];
            head_budget            b = c.budget;
            b.score                  = float(1.0 - double(best_err[size_t(h)]) / n_el);
            res_.config.at(il, h)    = b;
            ++c.n_heads;
            score_sum_ += b.score;
            ++n_scored_;
        }
        prefill_plan_build(res_.config, prefill_budget{}, il, q, n_q, 0, n_head, kv, scale, plan_, pool());
        const prefill_plan_pairs pp = prefill_plan_count(plan_);
        pairs_causal_ += pp.causal;
        pairs_computed_ += pp.computed;
        res_.expected_density = double(pairs_computed_) / double(pairs_causal_);
        res_.mean_score       = score_sum_ / double(n_scored_);
    }

    thread_pool & pool() { return *pool_; }

    const model &            m_;
    minference_search_params p_;
    search_progress_fn       progress_;
    int                      n_search_ = 0;
    int                      done_     = 0;
    bool                     timed_    = false;
    status                   timer_error_; // the first error of p_.plan_time
    minference_search_result res_;
    prefill_plan             plan_;
    std::vector<float>       out_;
    thread_pool *            pool_         = nullptr; // the context's, during a callback
    int64_t                  pairs_causal_ = 0, pairs_computed_ = 0;
    double                   score_sum_ = 0;
    int64_t                  n_scored_  = 0;
};

} // namespace

result<plan_time_fn> minference_gpu_plan_time() {
#if LC_HAVE_CUDA
    LC_ASSIGN_OR_RETURN(std::unique_ptr<cuda::plan_timer> t, cuda::plan_timer::create());
    std::shared_ptr<cuda::plan_timer> timer(std::move(t));
    return plan_time_fn([timer](const prefill_plan & plan, const float * q, int64_t n_q, int n_head,
                                const kv_view & kv, float scale) { return timer->time(plan, q, n_q, n_head, kv, scale); });
#else
    return error(status_code::UNSUPPORTED,
                 "--timer cuda: this longctx was built without the CUDA backend; rebuild with -DLONGCTX_CUDA=ON");
#endif
}

result<minference_search_result> minference_search(const model & m, const std::vector<int32_t> & prompt,
                                                   const minference_search_params & p,
                                                   const search_progress_fn &       progress) {
    const model_hparams & hp = m.hparams();
    const int64_t         n  = int64_t(prompt.size());
    if (n < 2 * 64)
        return error(status_code::INVALID_ARGUMENT, "calibrate: the calibration prompt has %lld tokens; at least 128",
                     (long long)n);
    if (n > hp.n_ctx_train)
        return error(status_code::OUT_OF_RANGE, "calibrate: %lld calibration tokens exceed the model's context %lld",
                     (long long)n, (long long)hp.n_ctx_train);
    int n_search = 0;
    for (const layer_weights & L : m.layers()) n_search += L.swa ? 0 : 1;

    context_params cp;
    cp.n_ctx     = n;
    cp.n_ubatch  = n; // whole-prompt mode: each layer's queries and keys in one call
    cp.n_threads = p.n_threads;
    LC_ASSIGN_OR_RETURN(auto c, context::create(m, cp));
    searcher s(m, p, progress, n_search);
    c->attn().set_observer(&s);
    LC_RETURN_IF_ERROR(c->decode(prompt));
    c->attn().set_observer(nullptr);
    LC_RETURN_IF_ERROR(s.timer_error());
    minference_search_result r = s.result();
    r.n_tokens                 = n;
    r.config.source            = "search";
    return r;
}

} // namespace lc
