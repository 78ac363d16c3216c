// lc::status helpers.
#include "longctx/status.h"

#include <cstdio>

namespace lc {

const char * status_code_name(status_code c) {
    switch (c) {
    case status_code::OK:
        return "ok";
    case status_code::INVALID_ARGUMENT:
        return "invalid argument";
    case status_code::NOT_FOUND:
        return "not found";
    case status_code::IO_ERROR:
        return "i/o error";
    case status_code::INVALID_FILE:
        return "invalid file";
    case status_code::UNSUPPORTED:
        return "unsupported";
    case status_code::OUT_OF_RANGE:
        return "out of range";
    case status_code::RESOURCE_EXHAUSTED:
        return "resource exhausted";
    case status_code::INTERNAL:
        return "internal error";
    }
    return "unknown";
}

status verror(status_code code, const char * fmt, va_list ap) {
    char    buf[1024];
    va_list ap2;
    va_copy(ap2, ap);
    int n = std::vsnprintf(buf, sizeof(buf), fmt, ap2);
    va_end(ap2);
    if (n < 0) return status(code, fmt);
    if (size_t(n) < sizeof(buf)) return status(code, std::string(buf, size_t(n)));
    std::string s(size_t(n) + 1, '\0');
    std::vsnprintf(s.data(), s.size(), fmt, ap);
    s.resize(size_t(n));
    return status(code, std::move(s));
}

status error(status_code code, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    status st = verror(code, fmt, ap);
    va_end(ap);
    return st;
}

} // namespace lc
