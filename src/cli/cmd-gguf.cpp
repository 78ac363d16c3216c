// `longctx gguf`.
#include <cstdio>

#include "cli/commands.h"

namespace lc::cli {

int cmd_gguf(const args_t & args) {
    std::fprintf(stderr, "longctx gguf: not built yet\n");
    return 1;
}

} // namespace lc::cli
