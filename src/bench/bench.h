// `longctx bench` engine: llama-bench-style speed tests (pp<N> prefill, tg<N> decode, optionally after a
// prefilled depth d) with warm-up, repetitions and mean ± sd tokens/s. Tokenisation and sampling are outside
// the timed region: tests feed seeded random token ids straight to the forward pass.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "attn/attn-config.h"
#include "longctx/status.h"
#include "model/model.h"
#include "runtime/context.h"

namespace lc {

struct bench_params {
    std::vector<int64_t> n_prompt  = {512}; // pp tests
    std::vector<int64_t> n_gen     = {128}; // tg tests
    std::vector<int64_t> depth     = {0};   // prefilled tokens before each test
    int                  reps      = 5;
    int                  n_threads = 0;
    int64_t              n_ubatch  = 512;
    uint64_t             seed      = 1234;
    // Attention configurations, each run over every test (dense first when a sparse method is asked for, so the
    // two stand side by side).
    std::vector<attn_config> methods = {attn_config{}};
    // Token ids the prompts are cut from (repeated as needed); empty: seeded random ids.
    std::vector<int32_t> text;
    // Sequences decoded together in the decode tests (batched decode steps, aggregate tokens/s); 0: as many as
    // kv_memory holds. Prefill tests run one sequence.
    std::vector<int> parallel = {1};
    // KV-cache memory of a batched test's context in bytes (0: room for every sequence of the test).
    size_t kv_memory = 0;
    // Run the model on the GPU (context_params::cuda; one sequence, dense attention).
    bool cuda = false;
};

struct bench_row {
    std::string         method = "dense"; // attn_config_describe() of the run
    std::string         test;             // "pp512", "tg128 @ d4096"
    int64_t             n_prompt = 0, n_gen = 0, depth = 0;
    int                 n_seq    = 1;     // sequences decoded together (0 before a "max" test has run)
    bool                seq_max  = false; // n_seq is as many as the KV memory held
    std::vector<double> samples_s; // seconds per repetition
    double              mean_tps = 0.0, sd_tps = 0.0;
    size_t              kv_bytes = 0; // KV bytes held at the end of the test
    // Medians over the repetitions of the timed part: attention time (index building included), index time, and
    // the fraction of causal (q, k) pairs computed in the layers a sparse method applies to.
    // attn_swa_s: of attn_s, the sliding-window layers (dense under every method).
    double attn_s = 0.0, attn_swa_s = 0.0, index_s = 0.0, density = 1.0;
    // Decode tests, medians: fraction of the visible keys attended in the layers a sparse decode method applies
    // to, selection time (part of attn_s), and bytes read per generated token by selection and attention.
    double decode_keys = 1.0, select_s = 0.0, bytes_per_token = 0.0;
};

struct bench_env {
    std::string build_commit, cpu, model_name, model_path, weight_type, kv_type = "f16";
    uint64_t    model_bytes   = 0;
    int64_t     n_params      = 0;
    int         n_threads     = 0;
    int64_t     n_ubatch      = 0;
    std::string prompt_source = "random ids"; // or the text file the prompts were cut from
    std::string device        = "cpu";        // "cpu" or "cuda" (the whole model on the GPU)
};

// Runs every test. A batched decode test (n_seq != 1) prefills each sequence with `depth` tokens (consecutive
// slices of the text), then runs blocks of n_gen decode steps over all of them, one warm-up and `reps` timed,
// each continuing the last. A "max" test admits sequences while each leaves room for its blocks' tokens (as many
// tokens per sequence as the decode blocks add, in every layer, without counting on eviction) and stops at the
// first that does not fit.
// on_row is called as each finishes (for streaming output).
result<std::vector<bench_row>> bench_run(const model & m, const bench_params & p, bench_env & env,
                                         const std::function<void(const bench_row &)> & on_row = {});

std::string bench_cpu_name();
std::string bench_format_md_header(const bench_env & env);
std::string bench_format_md_row(const bench_env & env, const bench_row & r);
std::string bench_format_json(const bench_env & env, const std::vector<bench_row> & rows);

} // namespace lc
