// Calibration prompts: the long retrieval sample the offline MInference search runs on (METHODS.md sec. 2.4:
// InfiniteBench KV-retrieval style), generated from a seed so that the engine needs no data set, or any text
// file cut to length.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "longctx/status.h"
#include "tokenizer/tokenizer.h"

namespace lc {

struct calib_prompt {
    std::vector<int32_t> tokens;
    std::string          source; // "builtin:kv-retrieval seed=N" or the file path
};

// A JSON object of random UUID key/value pairs followed by a question for the value of one key (from the
// middle of the object), as many pairs as fit in n_tokens (BOS as the tokenizer adds it; at most n_tokens).
calib_prompt calib_kv_retrieval(const tokenizer & tok, int64_t n_tokens, uint64_t seed);

// The text of a file, tokenized and repeated until it has n_tokens tokens. Errors: unreadable or empty file.
result<calib_prompt> calib_from_file(const tokenizer & tok, const std::string & path, int64_t n_tokens);

} // namespace lc
