// stderr logger with elapsed time and level letter: "00:12.41 I prefill: 40960/131072 tokens (31%)".
#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace lc {

namespace {
std::atomic<int> g_level{int(log_level::INFO)};
const auto       g_t0 = std::chrono::steady_clock::now();
std::mutex       g_mutex;
} // namespace

void log_set_level(log_level level) {
    g_level.store(int(level));
}
log_level log_get_level() {
    return log_level(g_level.load());
}

double log_elapsed_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_t0).count();
}

void log_msg(log_level level, const char * fmt, ...) {
    if (int(level) < g_level.load()) return;
    static const char           letters[] = {'D', 'I', 'W', 'E'};
    const double                t         = log_elapsed_s();
    const int                   min       = int(t / 60);
    const double                sec       = t - 60.0 * min;
    std::lock_guard<std::mutex> lock(g_mutex);
    std::fprintf(stderr, "%02d:%05.2f %c ", min, sec, letters[int(level)]);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
}

void assert_fail(const char * file, int line, const char * cond, const char * fmt, ...) {
    std::fprintf(stderr, "%s:%d: assertion failed: %s: ", file, line, cond);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
    std::fflush(stderr);
    std::abort();
}

} // namespace lc
