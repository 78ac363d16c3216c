// The calibration sidecar MODEL.longctx.gguf: offline per-model artifacts written by `longctx calibrate` and
// read by the engine (ARCHITECTURE.md sec. 3). Today: the MInference per-(layer, head) patterns and budgets with
// the identity of the calibration data. Every section is optional; writers keep the sections they do not own.
#pragma once

#include <optional>
#include <string>

#include "attn/minference/head-config.h"
#include "longctx/status.h"

namespace lc {

struct sidecar_minference {
    minference_config config;
    std::string       calib_source; // file path or "builtin:kv-retrieval seed=N"
    std::string       calib_sha256; // of the calibration prompt's token ids
    int64_t           calib_n_tokens   = 0;
    float             expected_density = 0.0f; // at the calibration length
};

struct sidecar {
    std::string                       model_name; // general.name of the model it was made for
    int                               n_layer = 0;
    int                               n_head  = 0;
    std::optional<sidecar_minference> minference;
};

// "dir/Model.Q4_1.gguf" -> "dir/Model.Q4_1.longctx.gguf".
std::string sidecar_path_for(const std::string & model_path);

// Reads a sidecar; checks that its shapes match n_layer x n_head (INVALID_ARGUMENT with both shapes otherwise).
result<sidecar> sidecar_read(const std::string & path, int n_layer, int n_head);
// Writes the whole sidecar (atomically: a temporary file renamed over the old one).
status sidecar_write(const std::string & path, const sidecar & s);

} // namespace lc
