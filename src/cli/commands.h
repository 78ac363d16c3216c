// Subcommands of the `longctx` executable. Each takes the arguments after its name and returns the
// process exit code (0 ok, 1 runtime error, 2 usage error).
#pragma once

#include <string>
#include <vector>

namespace lc::cli {

using args_t = std::vector<std::string>;

int cmd_run(const args_t & args);
int cmd_chat(const args_t & args);
int cmd_bench(const args_t & args);
int cmd_gguf(const args_t & args);
int cmd_calibrate(const args_t & args);
int cmd_eval(const args_t & args);
int cmd_serve(const args_t & args);

} // namespace lc::cli
