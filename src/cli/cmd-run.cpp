// `longctx run`.
#include <cstdio>

#include "cli/commands.h"

namespace lc::cli {

int cmd_run(const args_t & args) {
    std::fprintf(stderr, "longctx run: not built yet\n");
    return 1;
}

} // namespace lc::cli
