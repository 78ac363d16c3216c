// The calibration sidecar MODEL.longctx.gguf: offline per-model artifacts written by `longctx calibrate` and
// read by the engine (ARCHITECTURE.md sec. 3): the MInference per-(layer, head) patterns and budgets, and Loki's
// per-(layer, KV head) key PCA bases, each with the identity of its calibration data. Every section is optional;
// writers keep the sections they do not own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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

// Loki's key PCA (METHODS.md sec. 3.1), fitted by `longctx calibrate loki`.
struct sidecar_loki {
    int n_head_kv = 0;
    int head_dim  = 0;
    // Layers with a basis (1) or without (0: sliding-window layers, which never decode sparsely) [n_layer].
    std::vector<int32_t> fitted;
    // [n_layer][n_head_kv][head_dim][head_dim] f32: component j of (layer, KV head) is column j of its
    // head_dim x head_dim row-major block, orthonormal, sorted by explained variance; zeros where not fitted.
    std::vector<float> basis;
    // [n_layer][n_head_kv][head_dim] f32: cumulative explained variance, entry r = share of the first r + 1
    // components (the last is 1); zeros where not fitted.
    std::vector<float> curve;
    // The basis was fitted on keys with RoPE undone (pre-RoPE) rather than on the keys the cache holds.
    bool        pre_rope = false;
    std::string calib_source;     // "builtin:kjv ..." or the calibration file path
    std::string calib_sha256;     // of the calibration token ids, all sequences in order
    int64_t     calib_n_keys = 0; // keys per (layer, KV head) the fit saw

    const float * basis_at(int il, int g) const {
        return basis.data() + (size_t(il) * n_head_kv + g) * size_t(head_dim) * head_dim;
    }
    const float * curve_at(int il, int g) const {
        return curve.data() + (size_t(il) * n_head_kv + g) * size_t(head_dim);
    }
};

// INVALID_ARGUMENT naming both shapes ("... recalibrate") when a Loki section was made for another model shape.
status sidecar_loki_check(const sidecar_loki & l, const std::string & path, int n_layer, int n_head_kv, int head_dim);

struct sidecar {
    std::string                       model_name; // general.name of the model it was made for
    int                               n_layer = 0;
    int                               n_head  = 0;
    std::optional<sidecar_minference> minference;
    std::optional<sidecar_loki>       loki;
};

// "dir/Model.Q4_1.gguf" -> "dir/Model.Q4_1.longctx.gguf".
std::string sidecar_path_for(const std::string & model_path);

// Reads a sidecar; checks that its shapes match n_layer x n_head (INVALID_ARGUMENT with both shapes otherwise) and
// that every section's arrays have the sizes its own header keys give (the Loki section's KV heads and head
// dimension are checked against a model by sidecar_loki_check()).
result<sidecar> sidecar_read(const std::string & path, int n_layer, int n_head);
// Writes the whole sidecar (atomically: a temporary file renamed over the old one).
status sidecar_write(const std::string & path, const sidecar & s);

} // namespace lc
