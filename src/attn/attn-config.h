// The attention configuration of a context: which method each phase uses and its budgets. This is what the
// method flags shared by every subcommand (--prefill, --prefill-budget, --sparse-min-len) turn into.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "longctx/status.h"

namespace lc {

// Sparse prefill methods (METHODS.md sec. 2). MINFERENCE takes each head's pattern from the calibration
// sidecar (longctx calibrate minference), or VSLASH with the documented budgets where it has none. ORACLE keeps
// each 64-query block's heaviest key columns by the exact attention (oracle_plan_head in attn/minference/index.h):
// an accuracy bound for the others at a given density, slower than dense.
enum class prefill_method { DENSE, A_SHAPE, VSLASH, BLOCK, MINFERENCE, ORACLE };

// "dense", "a-shape", "vslash", "block", "minference", "oracle"
const char *           prefill_method_name(prefill_method m);
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

// Sparse decode methods (METHODS.md sec. 1.4, 1.5, 3, 4): which keys each decoding query attends.
enum class decode_kind { DENSE, TOPK, QUEST, LOKI, MAGICPIG };

const char *        decode_kind_name(decode_kind k); // "dense", "topk", "quest", "loki", "magicpig"
result<decode_kind> decode_kind_parse(const std::string & s);

// How many keys a sparse decode method selects per query head (flag "25%", "0.25": that fraction of the keys
// the layer holds; "1024": that many tokens). The always-dense part (sinks, local window) comes on top.
struct decode_budget {
    enum class kind { FRACTION, TOKENS };
    kind   mode  = kind::FRACTION;
    double value = 0.25;
    // Keys to select out of n_kv (at least 1 when n_kv > 0, at most n_kv).
    int64_t keys(int64_t n_kv) const;
};
result<decode_budget> decode_budget_parse(const std::string & s);
std::string           decode_budget_name(const decode_budget & b); // "25%", "1024"

// Parameters of the decode methods; defaults from METHODS.md.
struct decode_params {
    // Tokens every sparse decode layer attends densely: the first n_sink and the last n_local (the newest
    // includes the decoding token itself). -1: the default, 4 + 64 for every method (METHODS.md's MagicPIG
    // setting; without it Quest and Loki lose the attention sink and the recent tokens on the real models, see
    // docs/decode.md). Quest also always attends its newest, incomplete page.
    static constexpr int default_sink = 4, default_local = 64;
    int                  n_sink  = -1;
    int                  n_local = -1;
    int                  sink() const { return n_sink >= 0 ? n_sink : default_sink; }
    int                  local() const { return n_local >= 0 ? n_local : default_local; }
    // Loki: rank d of the approximate scores; a value below 1 is a fraction of head_dim (0.25 -> d = D / 4).
    // loki_var > 0 instead picks per layer the smallest d reaching that explained variance.
    double loki_d   = 0.25;
    double loki_var = 0.0;
    // MagicPIG: SimHash bits per table and tables; keys colliding in at least lsh_min_hits tables are sampled.
    int lsh_k        = 10;
    int lsh_l        = 150;
    int lsh_min_hits = 2;
    // Quest: tokens per metadata page.
    int quest_page = 16;
    // Top-k, Quest and Loki select per query head (false, METHODS.md's default) or once per KV head for its group
    // of query heads (true: a key's score is the best over the group of each head's score relative to that head's
    // best key), so that the kernel reads each selected key once for the whole group.
    bool kv_select = false;
};

// KV-cache policies (METHODS.md sec. 1.2, 1.3, 5): what the cache keeps (src/kv/kv-policy.h).
enum class kv_method { FULL, STREAMING, H2O, D2O };
const char *      kv_method_name(kv_method k); // "full", "streaming", "h2o", "d2o"
result<kv_method> kv_method_parse(const std::string & s);

// D2O's merge rule (METHODS.md sec. 5.3): REFERENCE (the reference code's average weighted by similarity),
// SOFTMAX (the paper's softmax weights) or OFF (evicted tokens are dropped).
enum class d2o_merge { REFERENCE, SOFTMAX, OFF };

struct kv_params {
    // Tokens each compressed layer keeps, as a share of the tokens in the context (FRACTION) or a number (TOKENS);
    // decode_budget's parsing ("20%", "0.2", "2048").
    decode_budget budget = {decode_budget::kind::FRACTION, 0.2};
    // First tokens always kept (-1: the method's default: StreamingLLM and D2O 4, H2O 0).
    int n_sink = -1;
    // Share of the budget (past the sinks) that is the recent window; the rest are heavy hitters (H2O, D2O:
    // r_recent / (r_heavy + r_recent) = 0.5). StreamingLLM keeps only the window.
    double recent_share = 0.5;
    // Decode: the policy evicts once a layer holds evict_every tokens over its budget (1: one token every step,
    // as H2O and D2O describe; 64: a page at a time, the cache then holds up to 63 tokens over budget).
    int evict_every = 64;
    // D2O: merge rule, EMA of the merge threshold (tau = alpha * tau + beta * mean similarity), and the layers kept
    // whole (negative: from the end; default the first two and the last).
    d2o_merge        merge = d2o_merge::REFERENCE;
    double           alpha = 0.5, beta = 0.5;
    std::vector<int> whole_layers = {0, 1, -1};
    // D2O: the whole layers count against the budget (true: the compressed layers share what is left, so that the
    // cache holds --kv-budget of its bytes, as H2O does) or come on top of it (false: the reference code; the cache
    // then holds more, e.g. 28% at 20% on a 30-layer model).
    bool d2o_shared = true;
    // Sliding-window layers (Gemma 3's local layers) keep only their window under every policy; under full also
    // swa_slack tokens before it, so that a sequence can be cut back by that many tokens. swa_full: keep every
    // token there too under full (llama.cpp's --swa-full).
    bool    swa_full  = false;
    int64_t swa_slack = 256;
};

struct attn_config {
    prefill_method prefill        = prefill_method::DENSE;
    prefill_budget budget         = {};
    int64_t        sparse_min_len = sparse_min_len_cpu_default;
    decode_kind    decode         = decode_kind::DENSE;
    decode_budget  decode_keys    = {}; // keys each sparse decode query head selects
    decode_params  decode_opts    = {};
    // Calibration sidecar read by MINFERENCE: "auto" (MODEL.longctx.gguf beside the model file when present),
    // "none" (the documented defaults apply), or a path.
    std::string sidecar = "auto";
    kv_method   kv      = kv_method::FULL;
    kv_params   kv_opts = {};
};

// One line for logs and result records: "prefill=vslash budget=1x min-len=4096 decode=loki decode-budget=25%".
std::string attn_config_describe(const attn_config & c);

} // namespace lc
