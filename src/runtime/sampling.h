// Token sampling from a logit vector: greedy, or top-k -> top-p -> min-p -> temperature -> draw, with a
// seeded RNG per sampler so that a fixed seed reproduces the same tokens on every platform.
#pragma once

#include <cstdint>
#include <vector>

#include "longctx/status.h"

namespace lc {

inline constexpr uint64_t sampling_seed_random = ~uint64_t(0); // draw a seed from std::random_device

// Order of operations, each on the survivors of the previous step (ties ordered by lower token id first):
//   1. top-k   keep the top_k largest logits (top_k == 0: keep all)
//   2. top-p   softmax at temperature 1 over the survivors, sorted by probability; keep the shortest prefix
//              whose probability sum reaches top_p (always at least one token; top_p == 1: keep all)
//   3. min-p   keep tokens with p >= min_p * p_max, p_max the largest probability (min_p == 0: keep all)
//   4. temperature   p_i proportional to exp(logit_i / temp) over the survivors
//   5. draw    one token from that distribution with the sampler's RNG
// temp <= 0 means greedy: the argmax of the logits, ties to the lowest id (steps 1-5 are skipped).
// Worked example: probabilities {0.4, 0.3, 0.15, 0.1, 0.05}, top_k 4, top_p 0.72: renormalised over the
// top 4 they are {0.421, 0.316, 0.158, 0.105}; the prefix sum reaches 0.737 >= 0.72 after two tokens.
struct sampling_params {
    float    temp  = 0.8f;
    int32_t  top_k = 40;
    float    top_p = 0.95f;
    float    min_p = 0.05f;
    uint64_t seed  = sampling_seed_random;

    bool greedy() const { return temp <= 0.0f; }
    // INVALID_ARGUMENT unless top_k >= 0, top_p in (0, 1], min_p in [0, 1] and temp is not NaN.
    status validate() const;
};

struct token_prob {
    int32_t id;
    float   p;
};

// Thread-safety: a sampler belongs to one sequence; use one per thread.
class sampler {
  public:
    // REQUIRES: params.validate() is ok (checked with LC_ASSERT).
    explicit sampler(const sampling_params & params);

    // logits: [n_vocab] f32; NaN counts as -inf. Returns a token id in [0, n_vocab). REQUIRES: n_vocab > 0.
    // Cost: one pass over the logits plus work on the survivors; a full sort of the vocabulary never happens.
    int32_t sample(const float * logits, int32_t n_vocab);

    // The distribution step 5 draws from (steps 1-4), in the order the draw walks it: an order fixed by the
    // logits and params alone (by decreasing probability when top-k is on, otherwise mostly by id; sort it
    // if you need ranks). Greedy gives the argmax with p = 1.
    void distribution(const float * logits, int32_t n_vocab, std::vector<token_prob> & out);

    const sampling_params & params() const { return params_; }
    uint64_t                seed() const { return params_.seed; } // the seed in use (drawn one if random)
    void                    reseed(uint64_t seed);                // sampling_seed_random draws a new one
    // The uniform number in [0, 1) that the next non-greedy sample() would draw (one step of the RNG, which
    // sample() then no longer takes): a sampler elsewhere (the GPU's, backend/cuda/sampling.cuh) given this number
    // picks the token sample() would, so a seed gives the same tokens on every device. Greedy sample() draws none.
    double next_uniform() { return double(next_u64_() >> 11) * 0x1.0p-53; }

  private:
    struct cand {
        float   logit;
        int32_t id;
    };

    // Fills cand_ with the survivors of steps 1-3 and returns the largest logit.
    float    truncate_(const float * logits, int32_t n_vocab);
    uint64_t next_u64_(); // xoshiro256** (Blackman & Vigna), state seeded by splitmix64 from the seed

    sampling_params     params_;
    uint64_t            rng_[4];
    std::vector<cand>   cand_;
    std::vector<cand>   edge_;
    std::vector<double> weight_;
};

// Argmax with ties to the lowest id; NaN never wins. REQUIRES: n > 0.
int32_t sampling_argmax(const float * logits, int32_t n);

} // namespace lc
