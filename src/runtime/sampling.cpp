// Sampler: top-k by a bounded heap in one pass over the logits, then top-p and min-p on the small sorted
// survivors; with top-k off, top-p finds its cut through a histogram of logits, so nothing big is sorted.
#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/log.h"

namespace lc {

namespace {

constexpr float k_neg_inf = -std::numeric_limits<float>::infinity();

inline float clean(float v) {
    return v == v ? v : k_neg_inf;
} // NaN -> -inf

} // namespace

status sampling_params::validate() const {
    if (top_k < 0) {
        return error(status_code::INVALID_ARGUMENT, "sampling: --top-k %d is negative; use 0 to disable top-k", top_k);
    }
    if (!(top_p > 0.0f && top_p <= 1.0f)) {
        return error(status_code::INVALID_ARGUMENT, "sampling: --top-p %g is outside (0, 1]; use 1 to disable top-p",
                     double(top_p));
    }
    if (!(min_p >= 0.0f && min_p <= 1.0f)) {
        return error(status_code::INVALID_ARGUMENT, "sampling: --min-p %g is outside [0, 1]; use 0 to disable min-p",
                     double(min_p));
    }
    if (std::isnan(temp)) {
        return error(status_code::INVALID_ARGUMENT, "sampling: --temp is NaN; use 0 for greedy or a positive value");
    }
    return status::ok();
}

int32_t sampling_argmax(const float * logits, int32_t n) {
    LC_ASSERT(n > 0, "sampling: n_vocab %d", n);
    int32_t best   = 0;
    float   best_v = clean(logits[0]);
    for (int32_t i = 1; i < n; ++i) {
        if (logits[i] > best_v) { // strict: ties keep the lower id; NaN compares false
            best_v = logits[i];
            best   = i;
        }
    }
    return best;
}

sampler::sampler(const sampling_params & params) : params_(params) {
    const status st = params.validate();
    LC_ASSERT(st.is_ok(), "%s", st.message().c_str());
    reseed(params.seed);
}

void sampler::reseed(uint64_t seed) {
    if (seed == sampling_seed_random) {
        std::random_device rd;
        seed = (uint64_t(rd()) << 32) ^ uint64_t(rd());
        if (seed == sampling_seed_random) seed ^= 1;
    }
    params_.seed = seed;
    uint64_t x   = seed; // splitmix64 expands one word into the four of xoshiro's state
    for (uint64_t & s : rng_) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
        z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z          = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        s          = z ^ (z >> 31);
    }
}

uint64_t sampler::next_u64_() {
    const auto     rotl   = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
    const uint64_t result = rotl(rng_[1] * 5, 7) * 9;
    const uint64_t t      = rng_[1] << 17;
    rng_[2] ^= rng_[0];
    rng_[3] ^= rng_[1];
    rng_[1] ^= rng_[2];
    rng_[0] ^= rng_[3];
    rng_[2] ^= t;
    rng_[3] = rotl(rng_[3], 45);
    return result;
}

float sampler::truncate_(const float * logits, int32_t n_vocab) {
    LC_ASSERT(n_vocab > 0, "sampling: n_vocab %d", n_vocab);
    const auto better = [](const cand & a, const cand & b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    const bool  use_top_k = params_.top_k > 0 && params_.top_k < n_vocab;
    const bool  use_top_p = params_.top_p < 1.0f;
    const float min_p     = params_.min_p;
    cand_.clear();

    if (use_top_k) {
        // Bounded heap whose front is the worst kept candidate. A later logit equal to the front's never
        // replaces it: its id is larger than every kept id, so it loses the tie.
        const int32_t k = params_.top_k;
        cand_.reserve(size_t(k));
        for (int32_t i = 0; i < k; ++i) cand_.push_back({clean(logits[i]), i});
        std::make_heap(cand_.begin(), cand_.end(), better);
        float worst = cand_.front().logit;
        for (int32_t i = k; i < n_vocab; ++i) {
            const float v = logits[i];
            if (v > worst) {
                std::pop_heap(cand_.begin(), cand_.end(), better);
                cand_.back() = {v, i};
                std::push_heap(cand_.begin(), cand_.end(), better);
                worst = cand_.front().logit;
            }
        }
        std::sort(cand_.begin(), cand_.end(), better);
        const float m = cand_[0].logit;
        if (!std::isfinite(m)) { // all -inf/NaN, or a +inf logit: the first of the best
            cand_.resize(1);
            cand_.resize(1);
            return m;
        }
        size_t n_keep = cand_.size();
        if (use_top_p) {
            double z = 0.0;
            for (const cand & c : cand_) z += std::exp(double(c.logit) - m);
            const double target = double(params_.top_p) * z;
            double       cum    = 0.0;
            for (size_t i = 0; i < cand_.size(); ++i) {
                cum += std::exp(double(cand_[i].logit) - m);
                if (cum >= target) {
                    n_keep = i + 1;
                    break;
                }
            }
        }
        if (min_p > 0.0f) {
            const double thr = std::log(double(min_p));
            size_t       i   = 1; // the top token always survives
            while (i < n_keep && double(cand_[i].logit) - m >= thr) ++i;
            n_keep = i;
        }
        cand_.resize(n_keep);
        return m;
    }

    // No top-k: survivors come from the whole vocabulary.
    float m = k_neg_inf;
    for (int32_t i = 0; i < n_vocab; ++i) m = logits[i] > m ? logits[i] : m;
    if (!std::isfinite(m)) {
        cand_.push_back({m, sampling_argmax(logits, n_vocab)});
        return m;
    }
    if (!use_top_p) { // min-p alone: a threshold, kept in id order
        const double d_max = min_p > 0.0f ? -std::log(double(min_p)) : std::numeric_limits<double>::infinity();
        for (int32_t i = 0; i < n_vocab; ++i) {
            const float v = clean(logits[i]);
            if (double(m) - double(v) <= d_max) cand_.push_back({v, i});
        }
        return m;
    }

    // top-p keeps a prefix of the sorted order. One pass sorts the tokens into buckets by d = m - logit
    // (width 1/8 nat) and sums each bucket's mass; the bucket where the running mass reaches top_p holds the
    // cut, so every token of a higher bucket is kept unsorted and only that bucket is sorted. Example:
    // 262144 logits, top_p 0.95: one exp per logit, then a sort of one bucket of a few thousand at most.
    constexpr int    n_bucket       = 256;
    constexpr double inv_w          = 8.0;
    const auto       bucket_of      = [&](double d) { return d < n_bucket / inv_w ? int(d * inv_w) : n_bucket - 1; };
    double           mass[n_bucket] = {};
    double           z              = 0.0;
    for (int32_t i = 0; i < n_vocab; ++i) {
        const double d = double(m) - double(clean(logits[i])); // >= 0, +inf for -inf/NaN
        const double e = std::exp(-d);
        z += e;
        mass[bucket_of(d)] += e;
    }
    const double target = double(params_.top_p) * z;
    int          b_cut  = n_bucket - 1;
    double       cum    = 0.0; // mass of the buckets above b_cut
    for (int b = 0; b < n_bucket; ++b) {
        if (cum + mass[b] >= target) {
            b_cut = b;
            break;
        }
        cum += mass[b];
    }
    // min-p: keep d <= -ln(min_p). When it cuts inside the buckets above b_cut it cuts the whole of b_cut
    // too, and `cum` no longer matters; otherwise `cum` is exactly the mass kept above b_cut.
    const double        d_max = min_p > 0.0f ? -std::log(double(min_p)) : std::numeric_limits<double>::infinity();
    std::vector<cand> & edge  = edge_;
    edge.clear();
    for (int32_t i = 0; i < n_vocab; ++i) {
        const float  v = clean(logits[i]);
        const double d = double(m) - double(v);
        if (d > d_max) continue;
        const int b = bucket_of(d);
        if (b < b_cut) {
            cand_.push_back({v, i});
        } else if (b == b_cut) {
            edge.push_back({v, i});
        }
    }
    std::sort(edge.begin(), edge.end(), better);
    for (const cand & c : edge) {
        if (cum >= target && !cand_.empty()) break;
        cand_.push_back(c);
        cum += std::exp(double(c.logit) - m);
    }
    return m;
}

void sampler::distribution(const float * logits, int32_t n_vocab, std::vector<token_prob> & out) {
    out.clear();
    if (params_.greedy()) {
        out.push_back({sampling_argmax(logits, n_vocab), 1.0f});
        return;
    }
    const float m = truncate_(logits, n_vocab);
    if (!std::isfinite(m)) {
        out.push_back({cand_[0].id, 1.0f});
        return;
    }
    const double inv_t = 1.0 / double(params_.temp);
    double       sum   = 0.0;
    weight_.resize(cand_.size());
    for (size_t i = 0; i < cand_.size(); ++i) sum += weight_[i] = std::exp((double(cand_[i].logit) - m) * inv_t);
    out.reserve(cand_.size());
    for (size_t i = 0; i < cand_.size(); ++i) out.push_back({cand_[i].id, float(weight_[i] / sum)});
}

int32_t sampler::sample(const float * logits, int32_t n_vocab) {
    if (params_.greedy()) return sampling_argmax(logits, n_vocab);
    const float m = truncate_(logits, n_vocab);
    if (!std::isfinite(m) || cand_.size() == 1) {
        (void)next_u64_(); // one draw per token either way, so later draws do not depend on this shortcut
        return cand_[0].id;
    }
    const double inv_t = 1.0 / double(params_.temp);
    double       sum   = 0.0;
    weight_.resize(cand_.size());
    for (size_t i = 0; i < cand_.size(); ++i) sum += weight_[i] = std::exp((double(cand_[i].logit) - m) * inv_t);
    const double u            = next_uniform() * sum; // uniform in [0, sum)
    double       cum          = 0.0;
    size_t       last_nonzero = 0;
    for (size_t i = 0; i < cand_.size(); ++i) {
        if (weight_[i] <= 0.0) continue;
        cum += weight_[i];
        last_nonzero = i;
        if (u < cum) return cand_[i].id;
    }
    return cand_[last_nonzero].id; // u within rounding of sum
}

} // namespace lc
