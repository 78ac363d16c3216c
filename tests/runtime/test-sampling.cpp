// Sampler: greedy and tie rules, the truncation order top-k -> top-p -> min-p -> temperature on a hand-worked
// five-token example (exact probabilities and empirical frequencies), a brute-force check on a large
// vocabulary, reproducibility by seed, parameter validation and speed at n_vocab 262144.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <vector>

#include "runtime/sampling.h"

namespace {

// Five tokens with probabilities (at temperature 1) placed out of order so that ids and ranks differ:
//   id:  0     1     2     3     4
//   p:   0.10  0.40  0.05  0.30  0.15
// Rank order: 1 (0.40), 3 (0.30), 4 (0.15), 0 (0.10), 2 (0.05).
const double k_p[5] = {0.10, 0.40, 0.05, 0.30, 0.15};

std::vector<float> five_logits() {
    std::vector<float> l(5);
    for (int i = 0; i < 5; ++i) l[i] = float(std::log(k_p[i]) + 1.5); // a shift changes nothing
    return l;
}

lc::sampling_params plain(float temp) {
    lc::sampling_params sp;
    sp.temp  = temp;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    sp.seed  = 42;
    return sp;
}

// Expected distribution over the hand-chosen survivor ids at temperature t: p_i^(1/t), normalised.
std::map<int, double> expect_over(const std::vector<int> & ids, double t) {
    std::map<int, double> e;
    double                sum = 0;
    for (int id : ids) sum += e[id] = std::pow(k_p[id], 1.0 / t);
    for (auto & kv : e) kv.second /= sum;
    return e;
}

void check_case(const lc::sampling_params & sp, const std::map<int, double> & expect, const char * what) {
    const std::vector<float> logits = five_logits();
    lc::sampler              s(sp);

    std::vector<lc::token_prob> dist;
    s.distribution(logits.data(), 5, dist);
    ASSERT_EQ(dist.size(), expect.size()) << what;
    for (const auto & tp : dist) {
        ASSERT_TRUE(expect.count(tp.id)) << what << ": token " << tp.id << " should have been cut";
        EXPECT_NEAR(tp.p, expect.at(tp.id), 1e-6) << what << ": token " << tp.id;
    }

    const int n_draws   = 20000;
    int       counts[5] = {0, 0, 0, 0, 0};
    for (int i = 0; i < n_draws; ++i) {
        const int32_t id = s.sample(logits.data(), 5);
        ASSERT_GE(id, 0);
        ASSERT_LT(id, 5);
        counts[id]++;
    }
    for (int id = 0; id < 5; ++id) {
        const double p = expect.count(id) ? expect.at(id) : 0.0;
        if (p == 0.0) {
            EXPECT_EQ(counts[id], 0) << what << ": token " << id << " was cut but drawn";
            continue;
        }
        // 5 standard deviations of a binomial frequency: a false failure is a 1-in-1.7-million event.
        const double sd = std::sqrt(p * (1 - p) / n_draws);
        EXPECT_NEAR(double(counts[id]) / n_draws, p, 5 * sd + 1e-9) << what << ": token " << id;
    }
}

// Straightforward reference: full sort, then the four steps exactly as the header states them.
std::map<int, double> brute_force(const std::vector<float> & l, const lc::sampling_params & sp) {
    std::vector<int> ids(l.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int(i);
    std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return l[a] > l[b]; });
    if (sp.top_k > 0 && size_t(sp.top_k) < ids.size()) ids.resize(size_t(sp.top_k));
    const double m = l[ids[0]];
    if (sp.top_p < 1.0f) {
        double z = 0;
        for (int id : ids) z += std::exp(l[id] - m);
        double cum = 0;
        for (size_t i = 0; i < ids.size(); ++i) {
            cum += std::exp(l[ids[i]] - m);
            if (cum >= sp.top_p * z) {
                ids.resize(i + 1);
                break;
            }
        }
    }
    if (sp.min_p > 0.0f) {
        std::vector<int> keep;
        for (int id : ids) {
            if (std::exp(l[id] - m) >= sp.min_p) keep.push_back(id);
        }
        ids = keep;
    }
    std::map<int, double> e;
    double                sum = 0;
    for (int id : ids) sum += e[id] = std::exp((l[id] - m) / sp.temp);
    for (auto & kv : e) kv.second /= sum;
    return e;
}

} // namespace

TEST(sampling, greedy_is_argmax_ties_to_lowest_id) {
    const std::vector<float> l = {1.0f, 5.0f, 5.0f, 2.0f, NAN};
    EXPECT_EQ(lc::sampling_argmax(l.data(), 5), 1);
    lc::sampling_params sp;
    sp.temp = 0.0f;
    lc::sampler s(sp);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(l.data(), 5), 1);
    const std::vector<float> nan_first = {NAN, -3.0f, -1.0f};
    EXPECT_EQ(lc::sampling_argmax(nan_first.data(), 3), 2);
    sp.temp = -1.0f; // any temp <= 0 is greedy
    lc::sampler s2(sp);
    EXPECT_EQ(s2.sample(five_logits().data(), 5), 1);
}

TEST(sampling, top_k_1_equals_greedy) {
    std::mt19937                    rng(7);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    lc::sampling_params             sp;
    sp.top_k = 1;
    sp.temp  = 1.5f;
    sp.seed  = 3;
    lc::sampler s(sp);
    for (int rep = 0; rep < 50; ++rep) {
        std::vector<float> l(1000);
        for (auto & v : l) v = nd(rng);
        if (rep % 5 == 0) l[17] = l[900] = 100.0f; // a tie: the lower id wins
        EXPECT_EQ(s.sample(l.data(), int32_t(l.size())), lc::sampling_argmax(l.data(), int32_t(l.size())));
    }
}

TEST(sampling, top_k_ties_keep_lower_ids) {
    const std::vector<float> l  = {5.0f, 1.0f, 5.0f, 5.0f};
    lc::sampling_params      sp = plain(1.0f);
    sp.top_k                    = 2;
    lc::sampler                 s(sp);
    std::vector<lc::token_prob> d;
    s.distribution(l.data(), 4, d);
    ASSERT_EQ(d.size(), 2u);
    EXPECT_EQ(d[0].id, 0);
    EXPECT_EQ(d[1].id, 2);
    EXPECT_NEAR(d[0].p, 0.5, 1e-7);
}

TEST(sampling, full_softmax) {
    check_case(plain(1.0f), expect_over({0, 1, 2, 3, 4}, 1.0), "no truncation");
}

TEST(sampling, top_k) {
    auto sp  = plain(1.0f);
    sp.top_k = 3; // 0.40, 0.30, 0.15 -> 8/17, 6/17, 3/17
    check_case(sp, expect_over({1, 3, 4}, 1.0), "top_k 3");
}

TEST(sampling, top_p) {
    auto sp  = plain(1.0f);
    sp.top_p = 0.6f; // cumulative 0.40, 0.70 >= 0.6 -> ids 1, 3 -> 4/7, 3/7
    check_case(sp, expect_over({1, 3}, 1.0), "top_p 0.6");
    sp.top_p = 0.8f; // 0.40, 0.70, 0.85 >= 0.8 -> ids 1, 3, 4
    check_case(sp, expect_over({1, 3, 4}, 1.0), "top_p 0.8");
}

TEST(sampling, min_p) {
    auto sp  = plain(1.0f);
    sp.min_p = 0.2f; // keep p >= 0.2 * 0.4 = 0.08: 0.40, 0.30, 0.15, 0.10 -> 8/19, 6/19, 3/19, 2/19
    check_case(sp, expect_over({0, 1, 3, 4}, 1.0), "min_p 0.2");
}

TEST(sampling, temperature) {
    // T = 0.5 squares the probabilities: 0.16, 0.09, 0.0225, 0.01, 0.0025 over 0.285.
    check_case(plain(0.5f), expect_over({0, 1, 2, 3, 4}, 0.5), "temp 0.5");
    check_case(plain(2.0f), expect_over({0, 1, 2, 3, 4}, 2.0), "temp 2");
}

TEST(sampling, top_p_sees_top_k_renormalised) {
    // top_k 4 keeps 0.40, 0.30, 0.15, 0.10 (sum 0.95): renormalised 0.421, 0.316, ...; the prefix sum is
    // 0.737 >= 0.72 after two tokens. (Without renormalisation it would be 0.70 < 0.72 and keep three.)
    // Then T = 2: weights sqrt(0.4), sqrt(0.3) -> 0.5359, 0.4641.
    auto sp  = plain(2.0f);
    sp.top_k = 4;
    sp.top_p = 0.72f;
    check_case(sp, expect_over({1, 3}, 2.0), "top_k 4 + top_p 0.72 + temp 2");
}

TEST(sampling, min_p_before_temperature) {
    // min_p 0.3 at T = 1 keeps p >= 0.12: 0.40, 0.30, 0.15. Applied after T = 0.25 it would compare
    // (0.15/0.4)^4 = 0.0198 < 0.3 and cut token 4. Expected p^4 normalised: 0.7484, 0.2368, 0.0148.
    auto sp  = plain(0.25f);
    sp.min_p = 0.3f;
    check_case(sp, expect_over({1, 3, 4}, 0.25), "min_p 0.3 + temp 0.25");
}

TEST(sampling, defaults_on_five_tokens) {
    // Default top_k 40, min_p 0.05 and temp 0.8 with top_p 0.9 (the default 0.95 would sit exactly on a
    // prefix sum here): top_k keeps all 5; top_p: 0.40, 0.70, 0.85, 0.95 >= 0.9 -> four tokens; min_p keeps
    // p >= 0.02, all four; then p^(1/0.8) normalised.
    lc::sampling_params sp;
    sp.top_p = 0.9f;
    sp.seed  = 9;
    check_case(sp, expect_over({0, 1, 3, 4}, 0.8), "top_k 40 + top_p 0.9 + min_p 0.05 + temp 0.8");
}

TEST(sampling, large_vocab_matches_brute_force) {
    std::mt19937                    rng(11);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    std::vector<float>              l(50000);
    for (auto & v : l) v = nd(rng);
    struct cfg {
        int32_t k;
        float   p, mp, t;
    };
    for (const cfg & c : {cfg{0, 0.9f, 0.0f, 1.0f}, cfg{0, 0.999f, 0.0f, 0.7f}, cfg{0, 0.5f, 0.01f, 1.3f},
                          cfg{0, 1.0f, 0.001f, 1.0f}, cfg{1000, 0.95f, 0.0f, 0.8f}, cfg{40, 0.95f, 0.05f, 0.8f},
                          cfg{0, 1.0f, 0.0f, 1.0f}, cfg{0, 0.2f, 0.0f, 1.0f}, cfg{0, 0.9999f, 0.5f, 1.0f}}) {
        lc::sampling_params sp;
        sp.top_k = c.k;
        sp.top_p = c.p;
        sp.min_p = c.mp;
        sp.temp  = c.t;
        sp.seed  = 1;
        lc::sampler                 s(sp);
        std::vector<lc::token_prob> d;
        s.distribution(l.data(), int32_t(l.size()), d);
        const auto e = brute_force(l, sp);
        ASSERT_EQ(d.size(), e.size()) << "top_k " << c.k << " top_p " << c.p << " min_p " << c.mp;
        for (const auto & tp : d) {
            ASSERT_TRUE(e.count(tp.id)) << "token " << tp.id;
            EXPECT_NEAR(tp.p, e.at(tp.id), 1e-6 + 1e-4 * e.at(tp.id)) << "token " << tp.id;
        }
    }
}

TEST(sampling, same_seed_same_tokens) {
    std::mt19937                    rng(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<std::vector<float>> steps(300, std::vector<float>(500));
    for (auto & st : steps) {
        for (auto & v : st) v = nd(rng);
    }
    auto run = [&](uint64_t seed) {
        lc::sampling_params sp;
        sp.seed = seed;
        sp.temp = 1.0f;
        lc::sampler          s(sp);
        std::vector<int32_t> out;
        for (const auto & st : steps) out.push_back(s.sample(st.data(), int32_t(st.size())));
        return out;
    };
    EXPECT_EQ(run(123), run(123));
    EXPECT_NE(run(123), run(124));

    lc::sampling_params sp; // random seed: drawn, recorded, and reproducible
    sp.temp = 1.0f;
    lc::sampler s(sp);
    EXPECT_NE(s.seed(), lc::sampling_seed_random);
    std::vector<int32_t> first;
    for (const auto & st : steps) first.push_back(s.sample(st.data(), int32_t(st.size())));
    EXPECT_EQ(first, run(s.seed()));

    s.reseed(123);
    std::vector<int32_t> again;
    for (const auto & st : steps) again.push_back(s.sample(st.data(), int32_t(st.size())));
    EXPECT_EQ(again, run(123));
}

TEST(sampling, validate) {
    lc::sampling_params sp;
    EXPECT_TRUE(sp.validate().is_ok());
    auto bad = [](auto edit) {
        lc::sampling_params p;
        edit(p);
        lc::status st = p.validate();
        EXPECT_FALSE(st.is_ok());
        EXPECT_EQ(st.code(), lc::status_code::INVALID_ARGUMENT);
        return st.message();
    };
    EXPECT_NE(bad([](auto & p) { p.top_k = -1; }).find("top-k"), std::string::npos);
    EXPECT_NE(bad([](auto & p) { p.top_p = 0.0f; }).find("top-p"), std::string::npos);
    EXPECT_NE(bad([](auto & p) { p.top_p = 1.5f; }).find("top-p"), std::string::npos);
    EXPECT_NE(bad([](auto & p) { p.top_p = NAN; }).find("top-p"), std::string::npos);
    EXPECT_NE(bad([](auto & p) { p.min_p = -0.1f; }).find("min-p"), std::string::npos);
    EXPECT_NE(bad([](auto & p) { p.min_p = 1.1f; }).find("min-p"), std::string::npos);
    EXPECT_NE(bad([](auto & p) { p.temp = NAN; }).find("temp"), std::string::npos);
    sp.top_p = 1.0f;
    sp.top_k = 0;
    sp.min_p = 0.0f;
    sp.temp  = 0.0f;
    EXPECT_TRUE(sp.validate().is_ok());
}

TEST(sampling, non_finite_logits) {
    const std::vector<float> l = {-INFINITY, NAN, -INFINITY};
    for (int32_t k : {0, 2}) {
        auto sp  = plain(1.0f);
        sp.top_k = k;
        sp.top_p = 0.9f;
        lc::sampler s(sp);
        EXPECT_EQ(s.sample(l.data(), 3), 0);
    }
    const std::vector<float> with_inf = {0.0f, INFINITY, 3.0f, INFINITY};
    for (int32_t k : {0, 2}) {
        auto sp  = plain(1.0f);
        sp.top_k = k;
        sp.top_p = 0.9f;
        lc::sampler s(sp);
        EXPECT_EQ(s.sample(with_inf.data(), 4), 1);
    }
    const std::vector<float> with_nan = {0.0f, NAN, 0.0f};
    lc::sampler              s(plain(1.0f));
    for (int i = 0; i < 200; ++i) EXPECT_NE(s.sample(with_nan.data(), 3), 1);
}

TEST(sampling, speed_262144) {
    const int32_t                   n = 262144;
    std::mt19937                    rng(1);
    std::normal_distribution<float> nd(0.0f, 2.5f);
    std::vector<float>              l(n);
    for (auto & v : l) v = nd(rng);
    struct cfg {
        const char * name;
        int32_t      k;
        float        p, mp;
    };
    for (const cfg & c :
         {cfg{"defaults (k40 p0.95 minp0.05)", 40, 0.95f, 0.05f}, cfg{"top_k off, top_p 0.95", 0, 0.95f, 0.0f},
          cfg{"top_k off, min_p 0.05", 0, 1.0f, 0.05f}, cfg{"no truncation", 0, 1.0f, 0.0f}}) {
        lc::sampling_params sp;
        sp.top_k = c.k;
        sp.top_p = c.p;
        sp.min_p = c.mp;
        sp.seed  = 2;
        lc::sampler s(sp);
        (void)s.sample(l.data(), n);
        const int  reps = 50;
        const auto t0   = std::chrono::steady_clock::now();
        int64_t    acc  = 0;
        for (int r = 0; r < reps; ++r) acc += s.sample(l.data(), n);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
        std::printf("sample n_vocab %d, %-32s %.3f ms\n", n, c.name, ms);
        EXPECT_GE(acc, 0);
        if (c.k > 0) {
            EXPECT_LT(ms, 20.0) << "top-k path should be one cheap pass"; // loose bound: shared machines
        }
    }
}
