// Long-text perplexity (EVAL_TASKS.md sec. 3) in three protocols, dense and the method under test on the same
// tokens: A "prefill" (one causal pass over the first L tokens of each document, all L-1 predictions or the last K
// scored), B "sliding" (window W, stride S, every token scored once), C "decode" (prefill a prefix of P tokens, then
// teacher-forced single-token decode to N tokens, scored per position bucket). Micro averages (pooled tokens).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/fidelity.h"
#include "eval/results.h"

namespace lc::eval {

enum class ppl_protocol { PREFILL, SLIDING, DECODE };
const char *         ppl_protocol_name(ppl_protocol p); // "prefill", "sliding", "decode"
result<ppl_protocol> ppl_protocol_parse(const std::string & s);

struct ppl_params {
    ppl_protocol         protocol = ppl_protocol::PREFILL;
    std::vector<int64_t> lengths;         // A: L per document
    int                  docs     = 1;    // A, C: documents per length (consecutive slices of the text)
    int64_t              last     = 0;    // A: score only the last K positions (0: all L - 1)
    int64_t              window   = 0;    // B: W
    int64_t              stride   = 0;    // B: S (<= W)
    int64_t              n_tokens = 0;    // B: tokens of the stream scored; C: N (prefix + decoded)
    int64_t              prefix   = 0;    // C: P
    int64_t              bucket   = 1024; // C: positions per bucket
};

// Protocol B's windows over n tokens: window j covers [begin, end) = [jS, min(jS + W, n)) and scores its positions
// from score_from on (window-relative; the first window from 1), so that every token but the first is scored once.
struct ppl_window {
    int64_t begin = 0, end = 0, score_from = 1;
};
std::vector<ppl_window> ppl_windows(int64_t n, int64_t window, int64_t stride);

// Clears c and runs ids through it in chunks of `chunk` tokens with all logits; adds -ln p(ids[i] | ids[<i]) for
// every i in [max(1, score_from), n) to *nll_sum and the count to *n_scored. *secs: time in decode().
status nll_prefill(context & c, const std::vector<int32_t> & ids, int64_t chunk, int64_t score_from, double * nll_sum,
                   int64_t * n_scored, double * secs);

// body: the text's tokens without BOS. Appends one record per document (A, C) or window (B).
status ppl_run(const ppl_params & p, const std::vector<int32_t> & body, eval_env & env, result_file & out);

// Pooled perplexity per group ("A L=4096", "B W=2048 S=256", "C P=1024 N=4096") and method label, from a file:
// rows of {group, label, n_scored, ppl}.
struct ppl_summary_row {
    std::string group, label;
    int64_t     n_scored = 0;
    double      ppl      = 0;
};
result<std::vector<ppl_summary_row>> ppl_summary(const json & doc);

} // namespace lc::eval
