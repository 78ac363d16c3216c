// Shared parts of the evaluation harness (docs/eval.md, EVAL_TASKS.md sec. 0): answer clean-up and substring
// scoring, prompt assembly in model tokens, greedy generation on a context, seeded randomness, the identity of a
// prompt (sha256 of its token ids) and progress with an ETA.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/sha256.h" // token_ids_sha256()
#include "longctx/status.h"
#include "model/forward.h"
#include "runtime/context.h"
#include "tokenizer/tokenizer.h"

namespace lc::eval {

// ---- scoring (EVAL_TASKS.md sec. 0) ----

// RULER clean-up: strip surrounding whitespace, every character U+0000..U+001F becomes '\n', strip again.
std::string answer_clean(std::string_view s);
// Case-insensitive (ASCII) substring test.
bool contains_icase(std::string_view hay, std::string_view needle);
// all-match: fraction of refs that occur in pred; any-match: 1 if any does. Both case-insensitive.
double score_all_match(std::string_view pred, const std::vector<std::string> & refs);
double score_any_match(std::string_view pred, const std::vector<std::string> & refs);
// A task score: 100 * mean(s), rounded to 2 decimals; 0 for no samples.
double score_percent(const std::vector<double> & s);
// The first maximal run of ASCII digits in s, or "" (passkey exact match).
std::string first_digit_run(std::string_view s);

// ---- identity and randomness ----

// splitmix64 step: a well-mixed 64-bit value from x (used to derive per-cell seeds).
uint64_t seed_mix(uint64_t x);
uint64_t seed_combine(uint64_t a, uint64_t b);

// Small seeded RNG (xoshiro256**, state from splitmix64) with the draws the generators need; the same seed gives
// the same values on every platform (no std:: distributions).
class rng {
  public:
    explicit rng(uint64_t seed);
    uint64_t                next();
    uint64_t                below(uint64_t n);             // uniform in [0, n), REQUIRES n > 0
    int64_t                 range(int64_t lo, int64_t hi); // uniform in [lo, hi]
    double                  uniform();                     // [0, 1)
    template <class T> void shuffle(std::vector<T> & v) {
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(below(i))]);
    }

  private:
    uint64_t s_[4];
};

// ---- prompts ----

// How a task's text becomes tokens. The context part is given as token ids and is placed verbatim, so that its
// length in model tokens is exact; the text around it is tokenized on its own.
//   chat:  chat_template([user: before + CONTEXT + after], generation prompt) + answer_prefix
//   plain: before + CONTEXT + after + answer_prefix  (base models: answer_prefix starts the answer sentence)
// BOS is prepended when the file's add-BOS flag says so, unless the rendered template already starts with it.
struct prompt_template {
    std::string before;
    std::string after;
    std::string answer_prefix;
};

// use_chat: wrap in the tokenizer's chat template (REQUIRES: tok has one).
result<std::vector<int32_t>> prompt_build(const tokenizer & tok, bool use_chat, const prompt_template & t,
                                          const std::vector<int32_t> & context_ids);
// Text tokenized with no BOS/EOS and special-token texts kept as plain text (haystacks, needles).
std::vector<int32_t> encode_plain(const tokenizer & tok, std::string_view text);

// ---- running prompts ----

struct gen_result {
    std::vector<int32_t> ids;  // generated tokens, without the end-of-generation token
    std::string          text; // their detokenized text
    int64_t              n_prompt  = 0;
    double               prefill_s = 0, decode_s = 0;
    double               index_s = 0; // of prefill_s: sparse index estimation
    double               density = 1.0;
};

// Clears c, prefills the prompt and decodes greedily (argmax) until an end-of-generation token or n_max tokens.
result<gen_result> generate_greedy(context & c, const tokenizer & tok, const std::vector<int32_t> & prompt, int n_max);

// ---- next-token distributions ----

// -ln softmax(logits)[target], computed in double. REQUIRES: 0 <= target < n.
double token_nll(const float * logits, int n, int32_t target);
// KL(softmax(ref) || softmax(ours)) in nats, in double; >= 0.
double logits_kl(const float * ref, const float * ours, int n);

// Text tokens for the perplexity and fidelity evals: BOS (when the file's flag says so) + the text, no EOS.
std::vector<int32_t> encode_document(const tokenizer & tok, std::string_view text);

// ---- progress ----

// Logs "eval NAME: 3/12 cells (25%), last 4.1 s, ETA 37 s" on stderr. Cells skipped on resume count as done but
// not towards the rate.
class progress {
  public:
    progress(std::string name, int64_t total, int64_t done_before);
    void step(const std::string & what); // one more cell done

  private:
    using clock = std::chrono::steady_clock;
    std::string       name_;
    int64_t           total_, done_, done_before_;
    clock::time_point t0_, t_last_;
};

// Parses "0,25,50", "START:STOP:STEP" (inclusive, e.g. "0:100:10") or "sigmoid:K" into numbers. sigmoid:K are the
// needle depths that crowd both ends (EVAL_TASKS.md 1.1): for x in linspace(0, 100, K),
// 100 / (1 + e^{-0.1 (x - 50)}) rounded to 3 decimals, the first and last exactly 0 and 100.
result<std::vector<double>> parse_number_list(const std::string & s, const char * what);

} // namespace lc::eval
