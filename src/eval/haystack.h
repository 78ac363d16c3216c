// Haystacks of the needle tests (EVAL_TASKS.md sec. 1): a corpus directory (the Paul Graham essays, sorted filename
// order) or the built-in filler of repeated trivial sentences, tokenized once and cut in model tokens; needles are
// spliced in at sentence starts.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "longctx/status.h"
#include "tokenizer/tokenizer.h"

namespace lc::eval {

// The filler line of the passkey test and of the fallback haystack (five trivially true sentences).
extern const char * const filler_line;

class haystack {
  public:
    // Every regular *.txt file of dir, in sorted filename order, each one unit. NOT_FOUND when there is none.
    static result<haystack> from_dir(const std::string & dir, const tokenizer & tok);
    // The filler line (plus a newline) as the single unit.
    static haystack filler(const tokenizer & tok);
    // Units given directly (tests).
    static haystack from_units(std::vector<std::vector<int32_t>> units, std::string id);

    // The first n tokens of the units concatenated from unit `first` on (wrapping around and repeating the
    // concatenation as often as needed). REQUIRES: the haystack holds at least one token.
    std::vector<int32_t> tokens(int64_t n, size_t first = 0) const;

    size_t  n_units() const { return units_.size(); }
    int64_t n_tokens() const; // one pass over all units
    // "dir:NAME:sha256=<hex of the concatenated files>" or "filler-v1".
    const std::string & id() const { return id_; }

  private:
    std::vector<std::vector<int32_t>> units_;
    std::string                       id_;
};

// True when the token's text, trailing whitespace removed, ends with '.' (a full stop: what follows starts a
// sentence).
bool token_is_full_stop(const tokenizer & tok, int32_t id);

// Splices needle into hay at depth percent (EVAL_TASKS.md 1.1 step 4): depth >= 100 appends; otherwise
// p = floor(n * depth / 100) is walked back until the token before p is a full stop (or p = 0). Returns p.
int64_t needle_insert(std::vector<int32_t> & hay, const std::vector<int32_t> & needle, double depth,
                      const std::function<bool(int32_t)> & is_full_stop);

// The classic cut (EVAL_TASKS.md 1.1 steps 2-4): the first `length` tokens of the stream, budget B = length - reserve,
// cut so that haystack + needle = B when they would exceed it, needle inserted at depth. Returns the context
// tokens and the insertion index via *pos.
std::vector<int32_t> haystack_with_needle(const haystack & h, size_t first_unit, int64_t length, int64_t reserve,
                                          const std::vector<int32_t> & needle, double depth,
                                          const std::function<bool(int32_t)> & is_full_stop, int64_t * pos);

// Several needles (EVAL_TASKS.md 1.2): the haystack is cut so that it plus all needles = length - reserve, then
// needle i is inserted at depths[i] of the growing token list, one after another (each moved back to a sentence
// start). *pos receives each needle's insertion index at the time it was inserted.
std::vector<int32_t> haystack_with_needles(const haystack & h, size_t first_unit, int64_t length, int64_t reserve,
                                           const std::vector<std::vector<int32_t>> & needles,
                                           const std::vector<double> &               depths,
                                           const std::function<bool(int32_t)> &      is_full_stop,
                                           std::vector<int64_t> *                    pos);

} // namespace lc::eval
