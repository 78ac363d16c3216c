// Needle in a haystack (EVAL_TASKS.md sec. 1): the classic single needle (San Francisco sentence, key phrases
// scored), the numeric needle (7-digit magic number for a city) and the passkey smoke test, over a grid of
// lengths x depths x rounds; dense and the configured method on byte-identical prompts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/eval-common.h"
#include "eval/haystack.h"
#include "eval/results.h"

namespace lc::eval {

// MULTI: k needles naming secret pizza ingredients (EVAL_TASKS.md 1.2), scored by the fraction recovered.
enum class niah_kind { CLASSIC, NUMERIC, PASSKEY, MULTI };

const char *      niah_kind_name(niah_kind k); // "classic", "numeric", "passkey", "multi"
result<niah_kind> niah_kind_parse(const std::string & s);
// Version string of the needle, question and prompt wording of a kind ("niah-numeric-v1"); recorded with results.
const char * niah_template_version(niah_kind k);
// Default generation budget: classic 48, numeric 32, passkey 16, multi 64 tokens.
int niah_default_n_gen(niah_kind k);

struct niah_params {
    niah_kind            kind = niah_kind::NUMERIC;
    std::vector<int64_t> lengths;       // L in model tokens
    std::vector<double>  depths;        // percent
    int                  rounds    = 1; // per cell; each round has its own haystack start, city and number
    uint64_t             seed      = 42;
    int                  n_gen     = 0;    // 0: niah_default_n_gen
    int64_t              reserve   = 200;  // L - reserve = haystack + needle tokens (EVAL_TASKS.md 1.1)
    bool                 use_chat  = true; // wrap in the chat template (only when the model has one)
    int                  n_needles = 3;    // MULTI: k
};

struct niah_cell {
    int64_t                  length = 0;
    double                   depth  = 0;
    int                      round  = 0;
    uint64_t                 seed   = 0;
    std::string              key;            // "L=4000,d=50,r=0": the record key
    std::vector<int32_t>     prompt;         // full prompt token ids
    int64_t                  n_context  = 0; // haystack + needle tokens
    int64_t                  needle_pos = 0; // token index of the needle in the context
    std::string              needle;         // needle text
    std::string              answer;         // the expected value (number, passkey) or the key phrases joined by "; "
    std::vector<std::string> refs;           // what scoring looks for
};

// "L=4000,d=50,r=0"
std::string niah_cell_key(int64_t length, double depth, int round);

// Builds one cell. The haystack starts at unit 0 in round 0 and at a seeded unit in later rounds.
result<niah_cell> niah_cell_build(const niah_params & p, const haystack & h, const tokenizer & tok, bool use_chat,
                                  int64_t length, double depth, int round);

// Score of an output (0 or 1): classic: every key phrase occurs (case-insensitive); numeric: the number occurs;
// passkey: the first digit run of the cleaned output equals the key; multi: the fraction of ingredients named.
double niah_score(niah_kind k, const std::vector<std::string> & refs, std::string_view output);

// Runs the grid, appending one record per cell to the result file (cells already in it are skipped).
status niah_run(const niah_params & p, const haystack & h, eval_env & env, result_file & out);

// Heatmaps (x = length, y = depth, colour = mean score over rounds), one panel per method, from a result file.
result<std::string> niah_heatmap_svg(const json & doc);

} // namespace lc::eval
