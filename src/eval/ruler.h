// RULER-style synthetic tasks (EVAL_TASKS.md sec. 2) that need no external data set: the eight NIAH variants,
// variable tracking (vt), common-words (cwe) and frequent-words (fwe) extraction. Seeded generators, prompts fitted
// to a length L in model tokens (prompt + generation budget <= L), all-match scoring, per-task and mean scores.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/eval-common.h"
#include "eval/results.h"

namespace lc::eval {

// The 11 synthetic tasks in RULER's order (qa_1 and qa_2 need SQuAD / HotpotQA and are not here).
const std::vector<std::string> & ruler_task_names();
inline constexpr const char *    ruler_template_version = "ruler-v1";

// Word sources of the generators.
struct ruler_words {
    std::vector<std::string> words; // distinct lowercase dictionary words, sorted
    std::vector<std::string> essay; // the essay haystack as words (whitespace runs collapsed); may be empty
    std::string              words_id, essay_id;
};
// words: /usr/share/dict/american-english (Debian wamerican), entries of 3-10 letters a-z only.
// essay_dir: *.txt in sorted order; "" leaves essay empty (essay tasks then use the noise haystack instead and say so
// in the sample).
result<ruler_words> ruler_words_load(const std::string & dict_path, const std::string & essay_dir);

struct ruler_sample {
    std::string              task;
    std::vector<int32_t>     prompt;
    std::vector<std::string> refs;
    int                      n_gen = 0;
    int64_t                  size  = 0; // the task's size knob N at which the sample was made
    std::string              haystack;  // "noise", "essay", "needle", or "-" for tasks without one
};

// Generator of one task at one length: finds the size knob once (binary search on a probe instance), then makes
// samples; sample i is drawn from seed_combine(seed, i) and shrunk by the task's increment until it fits.
class ruler_task {
  public:
    // INVALID_ARGUMENT for an unknown task name.
    static result<ruler_task> create(const std::string & name, const ruler_words & w, const tokenizer & tok,
                                     bool use_chat, int64_t length, uint64_t seed);
    result<ruler_sample>      sample(int i) const;
    int64_t                   size() const { return size_; }
    int                       n_gen() const { return n_gen_; }

    // Text of an instance of size n with the given seed: the task's context, question and references (exposed for
    // tests).
    struct instance {
        prompt_template          t;
        std::string              context;
        std::vector<std::string> refs;
    };
    instance make(int64_t n, uint64_t seed) const;

  private:
    int64_t             tokens_at(int64_t n, uint64_t seed) const; // prompt tokens + n_gen
    std::string         name_;
    const ruler_words * w_        = nullptr;
    const tokenizer *   tok_      = nullptr;
    bool                use_chat_ = false;
    int64_t             length_ = 0, size_ = 0, inc_ = 1;
    uint64_t            seed_  = 0;
    int                 n_gen_ = 0;
};

// Pure pieces of the generators (tests).
std::string              ruler_uuid(rng & r);                             // version-4 UUID text
std::vector<std::string> ruler_split_sentences(const std::string & text); // after . ! ? followed by whitespace
// FWE counts: floor(T * k^-alpha / zeta(alpha)) for ranks k = 1..n_vocab (alpha = 2: zeta = pi^2 / 6).
std::vector<int64_t> ruler_zipf_counts(int64_t total, int64_t n_vocab, double alpha);

struct ruler_params {
    std::vector<std::string> tasks;
    std::vector<int64_t>     lengths;
    int                      samples = 5;
    uint64_t                 seed    = 42;
};
status ruler_run(const ruler_params & p, const ruler_words & w, eval_env & env, result_file & out);

// Per (length, method): each task's score (100 * mean) and their mean, from a result file.
struct ruler_summary_row {
    int64_t                                     length = 0;
    std::string                                 label;
    std::vector<std::pair<std::string, double>> task_scores;
    double                                      mean      = 0;
    int                                         n_samples = 0;
};
result<std::vector<ruler_summary_row>> ruler_summary(const json & doc);

} // namespace lc::eval
