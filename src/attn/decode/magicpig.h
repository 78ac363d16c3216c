// MagicPIG sparse decode (arXiv 2410.16179; METHODS.md sec. 4): per sparse layer and KV head, SimHash tables over
// the prompt's "middle" keys; each query head samples the keys colliding with it in at least min_hits of the L
// tables and weights them by 1/u_i (u_i: the key's probability of being sampled), attending sink, local window
// and generated tokens exactly. The plan's log-weights carry -ln(u_i + 1e-4); the sparse kernel does the rest.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/decode/decode-method.h"
#include "attn/decode/simhash.h"

namespace lc {

struct model_hparams;

struct magicpig_params {
    int      K        = 10;  // bits per table (2^K buckets), 1..16
    int      L        = 150; // tables
    int      min_hits = 2;   // a key is sampled when it collides in at least this many tables, 1..L
    int      n_sink   = 4;   // first tokens attended densely
    int      n_local  = 64;  // last tokens of the prompt attended densely (generated tokens always are)
    uint64_t seed     = 0x6d61676963706967ull; // of the hyperplanes; one matrix per model
    // Tables are rebuilt (over the whole cache) once more than this many tokens were appended since they were
    // built, e.g. a new long prompt in a chat; until then appended tokens are attended densely. A prompt prefilled
    // after the build (prepare()) that leaves more appended tokens than the tables hold (or than n_local, when
    // they hold fewer) has them rebuilt at the next plan() sooner: a prompt fed in several calls would otherwise
    // keep the tables of its first call (e.g. 444 of 4k keys hashed, the rest dense).
    int64_t rebuild_after = 4096;
};

// INVALID_ARGUMENT naming the flag for K outside 1..16, L < 1, min_hits outside 1..L, negative sink/local.
status magicpig_params_check(const magicpig_params & p);

// u = P(X >= min_hits) for X ~ Binomial(L, P): the probability that a key whose per-table collision
// probability is P is sampled. Sums whichever tail is the smaller one, each term in log space, so the result
// keeps its relative accuracy for tiny u (no 1 - (1 - tiny) cancellation) and never leaves [0, 1].
class lsh_inclusion {
  public:
    lsh_inclusion(int L, int min_hits);
    double operator()(double P) const;

  private:
    int                 L_ = 0, m_ = 0;
    std::vector<double> ln_choose_; // [L + 1] ln C(L, j)
};

// Per-table collision probability of SimHash with K bits for vectors at cosine c: (1 - acos(c) / pi)^K.
double simhash_collision_prob(double cos_theta, int K);

// The log-weight of a sampled key as a function of its cosine c to the query: -ln(u(P) + 1e-4) with
// P = (1 - acos(c) / pi)^K, u = lsh_inclusion(L, min_hits). Exact evaluation costs an acos, ~5 more
// transcendental functions and a series; the table interpolates linearly on 4096 cells over c in [-1, 1]
// (error ~2e-6 at K = 10, L = 150, m = 2) and evaluates exactly in the cells where a check at construction (5
// points per cell) finds the interpolation off by more than 1e-4: the cells next to c = +-1, where acos has a
// square-root edge, and e.g. at K = 1, L = 300, m = 1 the cells near c = -1 where u rises from 0 to ~1.
class lsh_log_weight {
  public:
    lsh_log_weight(int K, int L, int min_hits);
    double exact(double theta) const;
    // From the cosine (clamped to [-1, 1]).
    float operator()(double cos_theta) const;

  private:
    static constexpr int n_cell = 4096;
    int                  K_     = 0;
    lsh_inclusion        incl_;
    std::vector<float>   tab_;   // [n_cell + 1] values at c = -1 + 2 i / n_cell
    std::vector<uint8_t> exact_; // [n_cell] 1: evaluate exactly in this cell
};

// The keys of one head's tables that collide with query codes qc [L] in at least min_hits tables: appends their
// indices i (relative to tb.begin) to `out` in no particular order. cnt [tb.n] is scratch that must be all zero
// on entry and is all zero on return; `touched` is scratch. Returns the bucket entries walked.
int64_t lsh_tables_sample(const lsh_tables & tb, const uint16_t * qc, int min_hits, uint16_t * cnt,
                          std::vector<uint32_t> & touched, std::vector<uint32_t> & out);

// Selection bytes of plan() (select_bytes): W (D*K*L f32) once per pool thread, each thread hashing its own
// query heads in one pass; per query head the query (D f32), two bucket offsets per table, each walked bucket
// entry (4-byte index plus the 2-byte collision counter), and per sampled key its fp16 key row and its norm.
// At K = 10, L = 150 and 32k keys that is ~4 MB a step for Gemma 3 270M (W alone 1.5 MB per thread at D = 256)
// and ~2 MB for SmolLM2. Building the tables (once per prompt, reading every middle key) is not counted; see
// build_seconds(). Tables take 4 L + 4 bytes per middle key and KV head (plus 4 L 2^K bytes of offsets).
// Thread-safety: one thread at a time (decode_method).
class magicpig_decode final : public decode_method {
  public:
    magicpig_decode(int n_layer, int n_head_kv, int head_dim, const magicpig_params & p);

    const char * name() const override { return "magicpig"; }
    // Dense layers: every 16th starting at 0 (METHODS.md sec. 4.1).
    bool sparse_layer(int il) const override { return il % 16 != 0; }
    void plan(int il, const float * q, int n_head, const kv_view & kv, float scale, decode_plan & plan,
              thread_pool & pool, int64_t * select_bytes) override;
    void truncate(int64_t n) override;
    void invalidate(int il) override;
    // Right after a prefill of layer il: builds its tables when it has none (or the cache was cut below them);
    // when it has some, marks them for a rebuild at the next plan() if the prompt left more appended tokens than
    // params().rebuild_after says (see there). The rebuild waits for plan() so that a prompt fed in many calls is
    // hashed once, at its end.
    void prepare(int il, const kv_view & kv, thread_pool & pool) override;

    const magicpig_params & params() const { return p_; }
    const simhash_matrix &  matrix() const { return W_; }
    // The tables of layer il, KV head h; nullptr when not built (yet, or dropped by truncate()).
    const lsh_tables * tables(int il, int h) const;
    // Cache length when layer il's tables were built; -1 when not built.
    int64_t built_n_kv(int il) const;
    // Wall time spent building tables so far, and the bytes the tables of all layers hold now.
    double build_seconds() const { return build_seconds_; }
    size_t table_bytes() const;

  private:
    struct layer_state {
        int64_t                 n_kv_built = -1;
        bool                    pending    = false; // rebuild at the next plan() (see prepare())
        std::vector<lsh_tables> heads;              // [n_head_kv]
    };
    struct scratch {
        std::vector<uint16_t> cnt;
        std::vector<uint32_t> touched, hits;
        std::vector<uint64_t> bits; // [n / 64] hit bitmap, zero between uses
        std::vector<uint16_t> codes;
    };
    void build(layer_state & st, const kv_view & kv, thread_pool & pool);
    // No tables yet, the cache was cut below them, too many tokens came after them, or a prompt did (pending).
    bool stale(const layer_state & st, const kv_view & kv) const {
        return st.n_kv_built < 0 || kv.n_kv < st.n_kv_built || kv.n_kv - st.n_kv_built > p_.rebuild_after ||
               st.pending;
    }

    magicpig_params          p_;
    int                      n_head_kv_ = 0, head_dim_ = 0;
    simhash_matrix           W_;
    lsh_log_weight           logw_;
    std::vector<layer_state> layers_;
    std::vector<scratch>     scratch_; // per pool thread
    double                   build_seconds_ = 0.0;
};

// The method for --decode magicpig with c.decode_opts (lsh_k, lsh_l, lsh_min_hits, n_sink, n_local; -1: 4 / 64).
// Errors: INVALID_ARGUMENT from magicpig_params_check().
result<std::unique_ptr<decode_method>> magicpig_decode_create(const model_hparams & hp, const attn_config & c);
result<std::unique_ptr<decode_method>> magicpig_decode_create(const model & m, const attn_config & c);

} // namespace lc
