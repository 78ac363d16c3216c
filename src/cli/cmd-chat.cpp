// `longctx chat`.
#include <cstdio>

#include "cli/commands.h"

namespace lc::cli {

int cmd_chat(const args_t & args) {
    std::fprintf(stderr, "longctx chat: not built yet\n");
    return 1;
}

} // namespace lc::cli
