// Loki sparse decode (METHODS.md sec. 3; arXiv 2406.02542): per (layer, KV head) an offline PCA basis P of the
// keys (longctx calibrate loki); approximate scores of every key from the first d rotated dims, q' . K' with
// q' = q P[:, :d] and K' = K P[:, :d]; the top k keys per query head are then attended exactly.
//
// Storage: the KV cache keeps the original keys; Loki keeps beside it, per (layer, KV head), only the first d
// rotated dims of every key (d / D of K's size, fp16), in tiles of 8 tokens, [T / 8][d_pad][8] (d_pad = d rounded
// up to 8, the padding dims zero), so the score pass streams one contiguous array with 8 scores per FMA chain.
// Because P is orthonormal, q . k = (q P) . (k P): exact attention over the selected keys reads the original keys
// in the cache, so the plan is the selected indices with no log-weights.
// Pre-RoPE bases (calibrate loki --pre-rope) are refused: scoring un-rotated queries against un-rotated low-rank
// keys leaves out the relative rotation between query and key, and on SmolLM2 that selection finds only 47% of
// the exact top-25% keys even at d = D (post-RoPE: 100%); scoring exactly would need each key's low-rank part
// rotated back to D dims, reading as much as dense. The pre-RoPE fit is kept for analysis (its lower rank).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/decode/decode-method.h"
#include "calibrate/sidecar.h"
#include "core/fp16.h"

namespace lc {

// The Loki method of the model, with the bases of the sidecar c.sidecar ("auto": MODEL.longctx.gguf beside the
// model file). Errors: no sidecar or no Loki section in it (run `longctx calibrate loki -m MODEL`), a section made
// for another shape or fitted on pre-RoPE keys, a layer without sliding window that has no basis, a bad loki_d /
// loki_var.
result<std::unique_ptr<decode_method>> loki_decode_create(const model & m, const attn_config & c);

// From a Loki section directly (tests, tools): sparse_layer(il) is true where the section has a basis.
result<std::unique_ptr<decode_method>> loki_decode_create(const sidecar_loki & l, int n_layer, const attn_config & c);

// The rank d of each layer that the parameters pick (METHODS.md sec. 3.2): loki_var > 0: the smallest d whose
// explained variance (curve averaged over KV heads) reaches loki_var; else loki_d (< 1: that fraction of
// head_dim, rounded, at least 1; >= 1: that many dims). Layers without a basis get 0.
result<std::vector<int>> loki_ranks(const sidecar_loki & l, int n_layer, const decode_params & p);

// Approximate scores of one KV head's low-rank keys (the score pass): for each of n_q queries qd [n_q][d_pad]
// (zero past d) and each token t in [t0, t1), out[h * out_stride + t] = sum_j qd[h][j] * K'[t][j], where tiles
// is the tiled store [..][d_pad][8] fp16 described above. REQUIRES: t0 % 8 == 0, d_pad % 8 == 0.
void loki_scores(const fp16_t * tiles, int d_pad, int64_t t0, int64_t t1, const float * qd, int n_q, float * out,
                 int64_t out_stride);
// Scalar reference of loki_scores (double accumulation).
void loki_scores_ref(const fp16_t * tiles, int d_pad, int64_t t0, int64_t t1, const float * qd, int n_q, float * out,
                     int64_t out_stride);

} // namespace lc
