// MInference per-head configuration: one sparse pattern and its budgets per (layer, query head), as found by
// the offline search (calibrate/minference-search.h), imported from a MInference JSON config, or the documented
// defaults (METHODS.md sec. 2.4: VS(1000, 6096) for every head without a calibrated entry).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "longctx/status.h"

namespace lc {

enum class head_pattern : int32_t { DENSE = 0, A_SHAPE = 1, VSLASH = 2, BLOCK = 3 };

const char *         head_pattern_name(head_pattern p); // "dense", "a-shape", "vslash", "block"
result<head_pattern> head_pattern_parse(const std::string & s);

// Budgets in tokens (blocks for BLOCK): A_SHAPE a = n_init (sink keys), b = n_local (local band);
// VSLASH a = v (vertical columns), b = s (slash diagonals); BLOCK a = k_b (64-key blocks per query block).
struct head_budget {
    head_pattern pattern = head_pattern::VSLASH;
    int64_t      a       = 1000;
    int64_t      b       = 6096;
    float        score   = 0.0f; // the search's score for this choice (fraction of output elements within 5e-3)
};

// METHODS.md defaults per pattern: A-shape (128, 3968), VS (1000, 6096), block-sparse k_b = 100.
head_budget head_budget_default(head_pattern p);

struct minference_config {
    int                      n_layer = 0;
    int                      n_head  = 0;
    std::vector<head_budget> heads;  // [n_layer][n_head]
    std::string              source; // "defaults", "sidecar PATH", "json PATH"

    head_budget &       at(int il, int h) { return heads[size_t(il) * n_head + h]; }
    const head_budget & at(int il, int h) const { return heads[size_t(il) * n_head + h]; }
};

// Every head the same pattern with its default budgets, or the same budgets.
minference_config minference_config_uniform(int n_layer, int n_head, head_pattern p);
minference_config minference_config_uniform(int n_layer, int n_head, const head_budget & b);

// Reads a MInference-style per-head JSON config: a list with one object per layer mapping the head index (as a
// string) to [pattern, v, s, score], pattern one of "vertical_and_slash", "a_shape" (v = n_init, s = n_local)
// or "block_sparse" (v = k_b). Heads and layers it does not list keep the VS(1000, 6096) default.
// Errors: NOT_FOUND, INVALID_ARGUMENT (malformed JSON, unknown pattern, a layer or head out of range).
result<minference_config> minference_config_import_json(const std::string & path, int n_layer, int n_head);

} // namespace lc
