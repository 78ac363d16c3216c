// Pieces shared by the subcommands: the common model/context flags, loading a model with its tokenizer, and
// reading prompt text.
#pragma once

#include <memory>
#include <string>

#include "attn/attn-config.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "model/model.h"
#include "runtime/context.h"
#include "runtime/sampling.h"
#include "tokenizer/tokenizer.h"

namespace lc::cli {

// -m, -t, -v
void add_model_flags(arg_parser & p);
// -c, -ub and the attention method flags
void add_context_flags(arg_parser & p);
// --prefill, --prefill-budget, --sparse-min-len, --sidecar (shared by every command that runs a model)
void add_method_flags(arg_parser & p);
// --temp, --top-k, --top-p, --min-p, -s
void add_sampling_flags(arg_parser & p);

struct loaded_model {
    std::string                path;
    std::unique_ptr<model>     mdl;
    std::unique_ptr<tokenizer> tok;
};

// Parses args into p; on an error prints it (returns the exit code), on --help prints the help (returns 0),
// rejects positional arguments. *done: the caller returns the result at once.
int parse_or_help(arg_parser & p, const args_t & args, const char * cmd, bool * done);

// Resolves -m (a path or a known model name; empty: the default model, fetched into the cache on first use),
// loads it and its tokenizer.
result<loaded_model> load_model(const arg_parser & p);
// decode_list: --decode may be a comma-separated list (bench); the first method is parsed, the caller walks the rest.
result<attn_config>     attn_config_from(const arg_parser & p, bool decode_list = false);
result<context_params>  context_params_from(const arg_parser & p);
result<sampling_params> sampling_params_from(const arg_parser & p);

result<std::string> read_text_file(const std::string & path);

// Prints "longctx CMD: message" on stderr and returns the exit code for that status (2 for usage errors).
int fail(const char * cmd, const status & st);

std::string format_bytes(double n);

// Logs the attention of the prefill just run: method, effective density (fraction of causal (q, k) pairs
// computed, in the layers a sparse method applies to), index-building and attention time.
void log_prefill_attention(const context & c, const attn_config & cfg);
// One line on the decode steps so far: keys attended, selection time, bytes read per token.
// Logs the KV bytes held against a full cache and the tokens the KV policy evicted and merged (nothing for full).
void log_kv_policy(const context & c);
void log_decode_attention(const context & c, const attn_config & cfg);

} // namespace lc::cli
