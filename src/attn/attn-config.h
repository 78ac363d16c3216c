// The attention configuration of a context: which method each phase uses and its budgets. This is what the
// method flags shared by every subcommand (--prefill, --prefill-budget, --sparse-min-len) turn into.
#pragma once

#include <cstdint>
#include <string>

#include "longctx/status.h"

namespace lc {

// Sparse prefill methods (METHODS.md sec. 2). MINFERENCE takes each head's pattern from the calibration
// sidecar (longctx calibrate minference), or VSLASH with the documented budgets where it has none.
enum class prefill_method { DENSE, A_SHAPE, VSLASH, BLOCK, MINFERENCE };

const char *           prefill_method_name(prefill_method m); // "dense", "a-shape", "vslash", "block", "minference"
result<prefill_method> prefill_method_parse(const std::string & s);

// Sparse prefill pays for its index only on long prompts: below this many tokens (the prompt plus what the
// context already holds) the prefill is dense. Measured crossover on a 2-core AVX-512 CPU, SmolLM2 and Gemma 3:
// see docs/minference.md.
constexpr int64_t sparse_min_len_cpu_default = 4096;

// How much of its pattern each head keeps.
//   SCALE    (flag "1x", "0.5x"): the head's own budgets (calibrated, or METHODS.md defaults) times `value`:
//            MInference's global `ratio`.
//   FRACTION (flag "20%", "0.2"): budgets as a fraction of the prompt: VS keeps value * N columns and value * N
//            diagonals, A-shape value * N sink and value * N local keys, block-sparse value of the key blocks.
//            At 100% every pattern is dense attention.
struct prefill_budget {
    enum class kind { SCALE, FRACTION };
    kind   mode  = kind::SCALE;
    double value = 1.0;
};
result<prefill_budget> prefill_budget_parse(const std::string & s);
std::string            prefill_budget_name(const prefill_budget & b); // "1x", "20%"

struct attn_config {
    prefill_method prefill        = prefill_method::DENSE;
    prefill_budget budget         = {};
    int64_t        sparse_min_len = sparse_min_len_cpu_default;
    // Calibration sidecar read by MINFERENCE: "auto" (MODEL.longctx.gguf beside the model file when present),
    // "none" (the documented defaults apply), or a path.
    std::string sidecar = "auto";
};

// One line for logs and result records: "prefill=vslash budget=1x min-len=4096".
std::string attn_config_describe(const attn_config & c);

} // namespace lc
