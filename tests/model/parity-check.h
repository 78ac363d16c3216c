// One llama.cpp parity check on a real model, shared by the model tests: decode a fixture prompt, compare the
// last-position logits with llama.cpp's (flash attention off, and on when that file exists) and run the 64
// teacher-forced greedy steps. Fixture layout: NAME.tokens, NAME.logits.f32, NAME.fa.logits.f32, NAME.greedy64;
// a fixture with only the flash-attention run (NAME.fa.logits.f32, NAME.fa.greedy64) is checked against that.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "common/util.h"
#include "model/model.h"
#include "runtime/context.h"
#include "runtime/sampling.h"

namespace lc::test {

struct parity_limits {
    double max_abs_logit = 2.0;  // max |Δlogit| against llama.cpp (fa off)
    double max_kl        = 0.0;  // KL(llama.cpp || us)
    float  near_tie      = 1.0f; // a different argmax is accepted when llama.cpp's token is this close in our logits
    int    min_agree     = 60;   // teacher-forced steps (of 64) where our argmax is llama.cpp's token
};

struct parity_result {
    size_t    n_tokens = 0;
    logit_cmp us, fa, us_fa; // us vs llama.cpp; llama.cpp fa on vs off; us vs llama.cpp fa on
    int       n_agree = 0;
    double    secs    = 0;
    double    kv_mib  = 0; // KV cache held after the prompt and the 63 forced tokens
};

inline void parity_print_header() {
    std::printf("%-12s %6s %9s %9s %5s %9s %9s %9s %9s %7s %6s %7s\n", "prompt", "tokens", "max|dlog|", "KL", "top1",
                "fa:max|d|", "fa:KL", "usfa:max", "usfa:KL", "forced", "secs", "KV MiB");
}

// Runs fixture `base` (a path without suffix) on m with a context of n_ctx tokens and checks it against lim.
// Failures are reported through EXPECT_*/ADD_FAILURE naming `name`.
inline parity_result parity_check(const model & m, const std::string & base, const std::string & name, int64_t n_ctx,
                                  const parity_limits & lim) {
    parity_result r;
    const int     n_vocab = m.hparams().n_vocab;
    const auto    t_start = std::chrono::steady_clock::now();
    const auto    tokens  = read_ids(base + ".tokens");
    auto          ref     = read_f32(base + ".logits.f32");
    auto          ref_fa  = read_f32(base + ".fa.logits.f32");
    auto          greedy  = read_ids(base + ".greedy64");
    // A fixture with only llama.cpp's flash-attention run: that run is the reference, and there is no spread.
    if (ref.empty() && !ref_fa.empty()) {
        std::printf("%s: only llama.cpp's flash-attention run; it is the reference\n", name.c_str());
        ref    = std::move(ref_fa);
        ref_fa = {};
        greedy = read_ids(base + ".fa.greedy64");
    }
    r.n_tokens = tokens.size();
    if (tokens.empty() || int(ref.size()) != n_vocab || greedy.size() != 64u) {
        ADD_FAILURE() << name << ": fixture incomplete (" << tokens.size() << " tokens, " << ref.size()
                      << " logits for a vocabulary of " << n_vocab << ", " << greedy.size() << " greedy ids)";
        return r;
    }

    context_params cp;
    cp.n_ctx = n_ctx;
    auto ctx = context::create(m, cp);
    if (!ctx.is_ok()) {
        ADD_FAILURE() << name << ": " << ctx.get_status().message();
        return r;
    }
    context & c = **ctx;
    if (status st = c.decode(tokens); !st.is_ok()) {
        ADD_FAILURE() << name << ": " << st.message();
        return r;
    }
    r.us = compare_logits(ref.data(), c.logits(), n_vocab);
    if (int(ref_fa.size()) == n_vocab) {
        r.fa    = compare_logits(ref.data(), ref_fa.data(), n_vocab);
        r.us_fa = compare_logits(ref_fa.data(), c.logits(), n_vocab);
    }

    // teacher-forced: logits after each of llama.cpp's greedy tokens
    std::vector<float> step(c.logits(), c.logits() + n_vocab);
    for (int i = 0; i < 64; ++i) {
        const int32_t ours = sampling_argmax(step.data(), n_vocab);
        const int32_t want = greedy[size_t(i)];
        if (ours == want)
            ++r.n_agree;
        else
            EXPECT_GE(step[size_t(want)], step[size_t(ours)] - lim.near_tie)
                << name << " step " << i << ": we pick " << ours << " (logit " << step[size_t(ours)]
                << "), llama.cpp picked " << want << " (our logit " << step[size_t(want)] << ")";
        if (i + 1 < 64) {
            if (status st = c.decode({want}); !st.is_ok()) {
                ADD_FAILURE() << name << " step " << i << ": " << st.message();
                return r;
            }
            step.assign(c.logits(), c.logits() + n_vocab);
        }
    }
    r.secs   = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    r.kv_mib = double(c.kv_bytes_held()) / (1024.0 * 1024.0);
    std::printf("%-12s %6zu %9.4f %9.2e %5s %9.4f %9.2e %9.4f %9.2e %4d/64 %6.1f %7.1f\n", name.c_str(), tokens.size(),
                r.us.max_abs, r.us.kl, r.us.top_ref == r.us.top_ours ? "equal" : "tie", r.fa.max_abs, r.fa.kl,
                r.us_fa.max_abs, r.us_fa.kl, r.n_agree, r.secs, r.kv_mib);
    std::fflush(stdout);

    if (r.us.top_ref != r.us.top_ours)
        EXPECT_GE(ref[size_t(r.us.top_ours)], ref[size_t(r.us.top_ref)] - lim.near_tie)
            << name << ": top-1 " << r.us.top_ours << " vs llama.cpp " << r.us.top_ref;
    EXPECT_LT(r.us.max_abs, lim.max_abs_logit) << name;
    EXPECT_LT(r.us.kl, lim.max_kl) << name;
    EXPECT_GE(r.n_agree, lim.min_agree) << name << ": teacher-forced greedy agrees on only " << r.n_agree << " of 64";
    return r;
}

} // namespace lc::test
