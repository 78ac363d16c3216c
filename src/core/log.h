// Logging to stderr (one event per line: elapsed time, level letter, message) and LC_ASSERT for broken
// invariants. Results go to stdout; everything here goes to stderr.
#pragma once

#include <cstdarg>

namespace lc {

enum class log_level { DEBUG = 0, INFO = 1, WARN = 2, ERROR = 3, NONE = 4 };

void      log_set_level(log_level level);
log_level log_get_level();
void      log_msg(log_level level, const char * fmt, ...) __attribute__((format(printf, 2, 3)));
double    log_elapsed_s(); // seconds since process start (first call)

[[noreturn]] void assert_fail(const char * file, int line, const char * cond, const char * fmt, ...)
    __attribute__((format(printf, 4, 5)));

} // namespace lc

#define LC_LOG_D(...) ::lc::log_msg(::lc::log_level::DEBUG, __VA_ARGS__)
#define LC_LOG_I(...) ::lc::log_msg(::lc::log_level::INFO, __VA_ARGS__)
#define LC_LOG_W(...) ::lc::log_msg(::lc::log_level::WARN, __VA_ARGS__)
#define LC_LOG_E(...) ::lc::log_msg(::lc::log_level::ERROR, __VA_ARGS__)

#define LC_ASSERT(cond, ...)                                                                                           \
    do {                                                                                                               \
        if (__builtin_expect(!(cond), 0)) ::lc::assert_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                   \
    } while (0)
