// KV policies: StreamingLLM, H2O and D2O over the paged cache (see kv-policy.h; METHODS.md sec. 1.2, 1.3, 5).
// One class implements all three; they differ in the budget of each layer, whether tokens are scored, and whether
// evicted tokens are merged.
#include "kv/kv-policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attn/attention.h"
#include "attn/decode/decode-method.h"
#include "core/log.h"
#include "kv/merge-sim.h"
#include "model/model.h"

namespace lc {

std::vector<double> d2o_layer_ratios(const std::vector<std::vector<double>> & sigma, double rho) {
    const size_t        L = sigma.size();
    std::vector<double> sl(L, 0.0), r(L, 0.0);
    for (size_t l = 0; l < L; ++l) {
        const std::vector<double> & s = sigma[l];
        if (s.empty()) continue;
        const auto [mn, mx] = std::minmax_element(s.begin(), s.end());
        double     acc      = 0.0;
        for (double v : s) acc += (v - *mn) / (*mx - *mn + 1e-6);
        sl[l] = acc / double(s.size());
    }
    // softmax(-sigma) over the layers
    double mx = -std::numeric_limits<double>::infinity();
    for (double v : sl) mx = std::max(mx, -v);
    double z = 0.0;
    for (size_t l = 0; l < L; ++l) z += std::exp(-sl[l] - mx);
    for (size_t l = 0; l < L; ++l)
        r[l] = std::clamp(double(L) * rho * std::exp(-sl[l] - mx) / z, 0.01, 1.0);
    return r;
}

void evict_keep_set(const float * score, int64_t n, int64_t n_sink, int64_t n_recent, int64_t n_heavy,
                    std::vector<int32_t> & keep) {
    n_sink   = std::clamp<int64_t>(n_sink, 0, n);
    n_recent = std::clamp<int64_t>(n_recent, 0, n - n_sink);
    n_heavy  = std::clamp<int64_t>(n_heavy, 0, n - n_sink - n_recent);
    std::vector<key_range> dense;
    if (n_sink > 0) dense.push_back({0, int32_t(n_sink)});
    if (n_recent > 0) {
        if (!dense.empty() && dense.back().end == n - n_recent)
            dense.back().end = int32_t(n);
        else
            dense.push_back({int32_t(n - n_recent), int32_t(n)});
    }
    std::vector<int32_t> heavy;
    if (n_heavy > 0) decode_topk(score, n, n_heavy, dense, heavy);
    keep.clear();
    keep.reserve(size_t(n_sink + n_recent + n_heavy));
    for (int32_t t = 0; t < n_sink; ++t) keep.push_back(t);
    keep.insert(keep.end(), heavy.begin(), heavy.end());
    for (int64_t t = n - n_recent; t < n; ++t) keep.push_back(int32_t(t));
}

int64_t d2o_merge_rows(kv_cache & kv, int il, int seq, int g, const std::vector<int32_t> & keep,
                       const std::vector<int32_t> & evicted, const float * u, const int32_t * arg, float tau,
                       d2o_merge rule) {
    if (rule == d2o_merge::OFF || keep.empty()) return 0;
    const int            D       = kv.head_dim();
    const bool           softmax = rule == d2o_merge::SOFTMAX;
    // Per kept row: the weighted sums of the merged K and V rows, and the sum of their weights.
    std::vector<float>   sk(keep.size() * size_t(D), 0.0f), sv(keep.size() * size_t(D), 0.0f);
    std::vector<double>  wsum(keep.size(), 0.0);
    std::vector<int32_t> cnt(keep.size(), 0);
    int64_t              merged = 0;
    for (size_t i = 0; i < evicted.size(); ++i) {
        if (!(u[i] >= tau) || arg[i] < 0) continue;
        const int32_t  c  = arg[i];
        const float    w  = softmax ? std::exp(u[i]) : u[i];
        const fp16_t * ke = kv.k_row(il, seq, evicted[i], g);
        const fp16_t * ve = kv.v_row(il, seq, evicted[i], g);
        float *        ak = sk.data() + size_t(c) * size_t(D);
        float *        av = sv.data() + size_t(c) * size_t(D);
        for (int d = 0; d < D; ++d) {
            ak[d] += w * fp16_to_fp32(ke[d]);
            av[d] += w * fp16_to_fp32(ve[d]);
        }
        wsum[size_t(c)] += softmax ? double(w) : 1.0;
        ++cnt[size_t(c)];
        ++merged;
    }
    // reference: x_c <- (x_c + sum_e u_e x_e) / (1 + |E_c|); softmax: (e x_c + sum_e exp(u_e) x_e) / (e + sum exp(u_e))
    const double self = softmax ? std::exp(1.0) : 1.0;
    for (size_t c = 0; c < keep.size(); ++c) {
        if (cnt[c] == 0) continue;
        fp16_t *    kc  = kv.k_row(il, seq, keep[c], g);
        fp16_t *    vc  = kv.v_row(il, seq, keep[c], g);
        const float inv = float(1.0 / (self + wsum[c]));
        for (int d = 0; d < D; ++d) {
            kc[d] = fp32_to_fp16((float(self) * fp16_to_fp32(kc[d]) + sk[c * size_t(D) + size_t(d)]) * inv);
            vc[d] = fp32_to_fp16((float(self) * fp16_to_fp32(vc[d]) + sv[c * size_t(D) + size_t(d)]) * inv);
        }
    }
    return merged;
}

namespace {

class evict_policy final : public kv_policy, public attn_stats_sink {
  public:
    evict_policy(const model & m, const attn_config & c, int n_seq)
        : method_(c.kv), p_(c.kv_opts), n_layer_(m.hparams().n_layer), n_head_(m.hparams().n_head),
          n_head_kv_(m.hparams().n_head_kv), head_dim_(m.hparams().head_dim), n_swa_(m.hparams().n_swa) {
        n_sink_ = p_.n_sink >= 0 ? p_.n_sink : (method_ == kv_method::H2O ? 0 : 4);
        managed_.assign(size_t(n_layer_), false);
        swa_.assign(size_t(n_layer_), false);
        for (int il = 0; il < n_layer_; ++il) {
            swa_[size_t(il)]     = m.layers()[size_t(il)].swa;
            managed_[size_t(il)] = !swa_[size_t(il)];
        }
        if (method_ == kv_method::D2O) {
            for (int w : p_.whole_layers) {
                const int il = w < 0 ? n_layer_ + w : w;
                if (il >= 0 && il < n_layer_) managed_[size_t(il)] = false;
            }
        }
        seqs_.resize(size_t(n_seq));
        for (seq_state & s : seqs_) s.layers.resize(size_t(n_layer_));
    }

    const char * name() const override { return kv_method_name(method_); }

    attn_stats_sink * stats() override { return method_ == kv_method::STREAMING ? nullptr : this; }

    void begin(int seq) override { cur_ = seq; }

    float * colsum(int il, int64_t n_kv, int64_t * stride) override {
        if (!managed_[size_t(il)]) return nullptr;
        layer_state & L = seqs_[size_t(cur_)].layers[size_t(il)];
        grow(L, n_kv);
        *stride = L.cap;
        return L.score.data();
    }

    status on_prefill_end(kv_cache & kv, int seq, int64_t n_pos, attention & attn, thread_pool & pool) override {
        set_budgets(kv, seq, n_pos);
        for (int il = 0; il < n_layer_; ++il) {
            if (managed_[size_t(il)]) evict(kv, seq, il, attn, pool, 1);
            if (is_swa(il)) trim_window(kv, seq, il, attn);
        }
        return status::ok();
    }

    status on_decode_step(kv_cache & kv, int seq, int64_t, attention & attn, thread_pool & pool) override {
        for (int il = 0; il < n_layer_; ++il) {
            if (managed_[size_t(il)]) evict(kv, seq, il, attn, pool, p_.evict_every);
            if (is_swa(il)) trim_window(kv, seq, il, attn);
        }
        return status::ok();
    }

    void truncate(int seq, int64_t n) override {
        seq_state & s = seqs_[size_t(seq)];
        for (layer_state & L : s.layers) {
            L.n = std::min(L.n, n);
            if (n == 0) L = layer_state{};
        }
        if (n == 0) s.compressed = false;
    }

    bool compressed(int seq) const override { return seqs_[size_t(seq)].compressed; }

    std::vector<kv_layer_report> report(int seq) const override {
        std::vector<kv_layer_report> r(static_cast<size_t>(n_layer_));
        for (int il = 0; il < n_layer_; ++il) {
            const layer_state & L = seqs_[size_t(seq)].layers[size_t(il)];
            r[size_t(il)]         = {managed_[size_t(il)], L.kept, L.evicted / n_head_kv_, L.merged / n_head_kv_};
        }
        return r;
    }

  private:
    struct layer_state {
        std::vector<float> score;          // [n_head][cap] accumulated attention per query head and slot
        int64_t            cap     = 0;    // row stride of score
        int64_t            n       = 0;    // slots covered by score
        int64_t            budget  = -1;   // slots kept (-1: no budget yet)
        int64_t            n_recent = 0;   // of the budget: recent window (past the sinks)
        int64_t            kept    = -1;   // slots after the last eviction
        int64_t            evicted = 0;    // KV-head rows evicted
        int64_t            merged  = 0;    // KV-head rows merged
        double             tau     = 0.0;  // D2O merge threshold
        bool               tau_set = false;
    };
    struct seq_state {
        std::vector<layer_state> layers;
        bool                     compressed = false;
    };

    void grow(layer_state & L, int64_t n_kv) {
        if (n_kv > L.cap) {
            const int64_t      cap = std::max<int64_t>(n_kv, L.cap * 3 / 2 + 64);
            std::vector<float> s(size_t(n_head_) * size_t(cap), 0.0f);
            for (int h = 0; h < n_head_; ++h)
                std::copy_n(L.score.begin() + std::ptrdiff_t(h * L.cap), L.n, s.begin() + std::ptrdiff_t(h * cap));
            L.score.swap(s);
            L.cap = cap;
        }
        if (n_kv > L.n) {
            for (int h = 0; h < n_head_; ++h)
                std::fill_n(L.score.begin() + std::ptrdiff_t(h * L.cap + L.n), n_kv - L.n, 0.0f);
            L.n = n_kv;
        }
    }

    // Budgets of every managed layer from the tokens the context holds and (D2O) the variance of the scores.
    void set_budgets(const kv_cache & kv, int seq, int64_t n_pos) {
        seq_state &       s     = seqs_[size_t(seq)];
        const decode_budget & b = p_.budget;
        const double rho = b.mode == decode_budget::kind::TOKENS ? b.value / double(std::max<int64_t>(n_pos, 1))
                                                                 : b.value;
        std::vector<double> ratio(size_t(n_layer_), std::min(rho, 1.0));
        if (method_ == kv_method::D2O && rho < 1.0) {
            // Whole layers come on top of the budget (the reference code), or count against it so that D2O holds as
            // many bytes as H2O at the same --kv-budget (--d2o-budget shared).
            std::vector<int> comp;
            int              n_whole = 0;
            for (int il = 0; il < n_layer_; ++il) {
                if (managed_[size_t(il)])
                    comp.push_back(il);
                else if (!is_swa(il))
                    ++n_whole;
            }
            const double rho_c =
                comp.empty() || !p_.d2o_shared
                    ? rho
                    : (double(comp.size() + size_t(n_whole)) * rho - n_whole) / double(comp.size());
            if (rho_c <= 0.01)
                LC_LOG_W("d2o: a budget of %.1f%% leaves %.2f%% for the compressed layers once %d layers are kept "
                         "whole; each keeps at least 1%%",
                         100 * rho, 100 * std::max(rho_c, 0.0), n_whole);
            std::vector<std::vector<double>> sigma(comp.size());
            for (size_t i = 0; i < comp.size(); ++i) {
                const layer_state & L = s.layers[size_t(comp[i])];
                const int64_t       n = std::min(L.n, kv.n_slots(comp[i], seq));
                for (int h = 0; h < n_head_; ++h) {
                    const float * c  = L.score.data() + size_t(h) * size_t(L.cap);
                    double        m1 = 0, m2 = 0;
                    for (int64_t j = 0; j < n; ++j) m1 += c[j];
                    m1 /= double(std::max<int64_t>(n, 1));
                    for (int64_t j = 0; j < n; ++j) m2 += (c[j] - m1) * (c[j] - m1);
                    sigma[i].push_back(m2 / double(std::max<int64_t>(n, 1)));
                }
            }
            const std::vector<double> r = d2o_layer_ratios(sigma, std::max(rho_c, 0.0));
            for (size_t i = 0; i < comp.size(); ++i) ratio[size_t(comp[i])] = r[i];
        }
        for (int il = 0; il < n_layer_; ++il) {
            if (!managed_[size_t(il)]) continue;
            layer_state & L = s.layers[size_t(il)];
            L.budget        = rho >= 1.0 ? INT64_MAX : std::max<int64_t>(1, std::llround(ratio[size_t(il)] * n_pos));
            const int64_t past_sink = std::max<int64_t>(L.budget == INT64_MAX ? 0 : L.budget - n_sink_, 0);
            L.n_recent = method_ == kv_method::STREAMING ? past_sink : std::llround(p_.recent_share * past_sink);
        }
    }

    bool is_swa(int il) const { return swa_[size_t(il)]; }

    void trim_window(kv_cache & kv, int seq, int il, attention & attn) {
        const int64_t dropped = kv_trim_window(kv, seq, il, n_swa_, 0, attn);
        if (dropped == 0) return;
        layer_state & L = seqs_[size_t(seq)].layers[size_t(il)];
        L.kept          = kv.n_slots(il, seq);
        L.evicted += dropped * n_head_kv_;
        seqs_[size_t(seq)].compressed = true;
    }

    // Evicts layer il of seq down to its budget once it holds at least `slack` slots over it.
    void evict(kv_cache & kv, int seq, int il, attention & attn, thread_pool & pool, int slack) {
        seq_state &   s = seqs_[size_t(seq)];
        layer_state & L = s.layers[size_t(il)];
        const int64_t n = kv.n_slots(il, seq);
        if (L.budget < 0 || L.budget == INT64_MAX || n - L.budget < std::max(slack, 1)) return;
        const int64_t B        = L.budget;
        const int64_t n_sink   = std::min<int64_t>(n_sink_, B);
        const int64_t n_recent = std::min<int64_t>(L.n_recent, B - n_sink);
        const int64_t n_heavy  = B - n_sink - n_recent;
        const int     G        = n_head_ / n_head_kv_;
        const bool    scored   = method_ != kv_method::STREAMING;
        if (scored) grow(L, n);

        // Keep sets per KV head: scores summed over the head's query group.
        std::vector<std::vector<int32_t>> keep(static_cast<size_t>(n_head_kv_));
        pool.run([&](int ith, int nth) {
            std::vector<float> sum; // stays empty without scores (StreamingLLM: no heavy hitters to rank)
            for (int g = ith; g < n_head_kv_; g += nth) {
                if (scored) {
                    sum.assign(size_t(n), 0.0f);
                    for (int h = g * G; h < (g + 1) * G; ++h) {
                        const float * c = L.score.data() + size_t(h) * size_t(L.cap);
                        for (int64_t j = 0; j < n; ++j) sum[size_t(j)] += c[j];
                    }
                }
                evict_keep_set(sum.data(), n, n_sink, n_recent, n_heavy, keep[size_t(g)]);
            }
        });
        if (method_ == kv_method::D2O && p_.merge != d2o_merge::OFF) merge(kv, seq, il, L, keep, n, pool);
        for (int g = 0; g < n_head_kv_; ++g) {
            const std::vector<int32_t> & k = keep[size_t(g)];
            kv.keep_rows(il, seq, g, k.data(), int64_t(k.size()));
            if (scored)
                for (int h = g * G; h < (g + 1) * G; ++h) {
                    float * c = L.score.data() + size_t(h) * size_t(L.cap);
                    for (size_t i = 0; i < k.size(); ++i) c[i] = c[k[i]];
                }
        }
        kv.finish_keep(il, seq, B);
        L.n = std::min(L.n, B);
        L.kept = B;
        L.evicted += (n - B) * n_head_kv_;
        s.compressed = true;
        attn.invalidate(il);
    }

    // D2O merging (METHODS.md sec. 5.3): every evicted row of KV head g goes into its most similar kept row when
    // the cosine similarity of the keys reaches the layer's EMA threshold. Eviction is per KV head, so the
    // decision is per (token, KV head); the threshold follows the mean similarity over all of them.
    void merge(kv_cache & kv, int seq, int il, layer_state & L, const std::vector<std::vector<int32_t>> & keep,
               int64_t n, thread_pool & pool) {
        const int                         D = head_dim_;
        std::vector<std::vector<int32_t>> ev(static_cast<size_t>(n_head_kv_));
        std::vector<std::vector<float>>   u(static_cast<size_t>(n_head_kv_));
        std::vector<std::vector<int32_t>> arg(static_cast<size_t>(n_head_kv_));
        double                            u_sum = 0.0;
        int64_t                           u_n   = 0;
        for (int g = 0; g < n_head_kv_; ++g) {
            const std::vector<int32_t> & k = keep[size_t(g)];
            std::vector<int32_t> &       e = ev[size_t(g)];
            size_t                       j = 0;
            for (int32_t t = 0; t < n; ++t) {
                if (j < k.size() && k[j] == t)
                    ++j;
                else
                    e.push_back(t);
            }
            if (e.empty() || k.empty()) continue;
            std::vector<const fp16_t *> rows;
            for (int32_t t : k) rows.push_back(kv.k_row(il, seq, t, g));
            std::vector<float> C(k.size() * size_t(D));
            gather_normalized(rows.data(), int64_t(rows.size()), D, C.data());
            rows.clear();
            for (int32_t t : e) rows.push_back(kv.k_row(il, seq, t, g));
            std::vector<float> E(e.size() * size_t(D));
            gather_normalized(rows.data(), int64_t(rows.size()), D, E.data());
            u[size_t(g)].resize(e.size());
            arg[size_t(g)].resize(e.size());
            max_dot_argmax(E.data(), int64_t(e.size()), C.data(), int64_t(k.size()), D, u[size_t(g)].data(),
                           arg[size_t(g)].data(), pool);
            for (float x : u[size_t(g)]) u_sum += x;
            u_n += int64_t(e.size());
        }
        if (u_n == 0) return;
        const double mean = u_sum / double(u_n);
        L.tau             = L.tau_set ? p_.alpha * L.tau + p_.beta * mean : mean;
        L.tau_set         = true;
        const float tau   = float(L.tau);

        for (int g = 0; g < n_head_kv_; ++g)
            if (!ev[size_t(g)].empty() && !keep[size_t(g)].empty())
                L.merged += d2o_merge_rows(kv, il, seq, g, keep[size_t(g)], ev[size_t(g)], u[size_t(g)].data(),
                                           arg[size_t(g)].data(), tau, p_.merge);
    }

    kv_method              method_;
    kv_params              p_;
    int                    n_layer_, n_head_, n_head_kv_, head_dim_;
    int64_t                n_swa_;
    int                    n_sink_ = 0;
    std::vector<bool>      managed_;
    std::vector<bool>      swa_;
    std::vector<seq_state> seqs_;
    int                    cur_ = 0;
};

} // namespace

int64_t kv_trim_window(kv_cache & kv, int seq, int il, int64_t n_swa, int64_t slack, attention & attn) {
    const int64_t n = kv.n_slots(il, seq);
    if (n_swa <= 0 || n - n_swa - slack < kv_page_tokens) return 0;
    const int64_t n_pages = (n - n_swa - slack) / kv_page_tokens;
    kv.drop_front_pages(il, seq, n_pages);
    attn.invalidate(il);
    return n_pages * kv_page_tokens;
}

kv_policy_full::kv_policy_full(const model & m, const kv_params & p, int n_seq)
    : n_swa_(p.swa_full ? 0 : m.hparams().n_swa), slack_(p.swa_slack) {
    for (const layer_weights & L : m.layers()) swa_.push_back(L.swa);
    front_.assign(size_t(n_seq), std::vector<int64_t>(swa_.size(), 0));
}

void kv_policy_full::trim(kv_cache & kv, int seq, attention & attn) {
    if (n_swa_ <= 0) return;
    for (size_t il = 0; il < swa_.size(); ++il)
        if (swa_[il]) front_[size_t(seq)][il] += kv_trim_window(kv, seq, int(il), n_swa_, slack_, attn);
}

status kv_policy_full::on_prefill_end(kv_cache & kv, int seq, int64_t, attention & attn, thread_pool &) {
    trim(kv, seq, attn);
    return status::ok();
}

status kv_policy_full::on_decode_step(kv_cache & kv, int seq, int64_t, attention & attn, thread_pool &) {
    trim(kv, seq, attn);
    return status::ok();
}

void kv_policy_full::truncate(int seq, int64_t n) {
    if (n == 0 && size_t(seq) < front_.size()) std::fill(front_[size_t(seq)].begin(), front_[size_t(seq)].end(), 0);
}

int64_t kv_policy_full::front(int seq, int il) const {
    return size_t(seq) < front_.size() ? front_[size_t(seq)][size_t(il)] : 0;
}

result<std::unique_ptr<kv_policy>> kv_policy_create(const model & m, const attn_config & c, int n_seq) {
    if (c.kv_opts.swa_slack < 0)
        return error(status_code::INVALID_ARGUMENT, "--swa-slack %lld: at least 0", (long long)c.kv_opts.swa_slack);
    if (c.kv == kv_method::FULL) return std::unique_ptr<kv_policy>(new kv_policy_full(m, c.kv_opts, n_seq));
    const model_hparams & hp = m.hparams();
    const kv_params &     p  = c.kv_opts;
    if (c.kv == kv_method::D2O)
        for (int w : p.whole_layers)
            if (w >= hp.n_layer || w < -hp.n_layer)
                return error(status_code::INVALID_ARGUMENT, "--d2o-whole: layer %d out of range; the model has %d", w,
                             hp.n_layer);
    if (p.recent_share < 0 || p.recent_share > 1)
        return error(status_code::INVALID_ARGUMENT, "--kv-recent %g: a share between 0 and 1", p.recent_share);
    if (p.evict_every < 1)
        return error(status_code::INVALID_ARGUMENT, "--kv-evict-every %d: at least 1", p.evict_every);
    return std::unique_ptr<kv_policy>(new evict_policy(m, c, n_seq));
}

} // namespace lc
