// `longctx bench`.
#include <cstdio>

#include "cli/commands.h"

namespace lc::cli {

int cmd_bench(const args_t & args) {
    std::fprintf(stderr, "longctx bench: not built yet\n");
    return 1;
}

} // namespace lc::cli
