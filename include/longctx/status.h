// Status and result types: every error a user can cause (files, flags, requests, memory) travels as an
// lc::status with a one-line message; broken invariants abort through LC_ASSERT instead.
#pragma once

#include <cstdarg>
#include <optional>
#include <string>
#include <utility>

namespace lc {

enum class status_code {
    OK,
    INVALID_ARGUMENT,   // bad flag, bad request field
    NOT_FOUND,          // missing file, key or tensor
    IO_ERROR,           // read/write/mmap failure
    INVALID_FILE,       // corrupt or malformed file contents
    UNSUPPORTED,        // valid but not supported by this build
    OUT_OF_RANGE,       // a value over its limit (context length, budget)
    RESOURCE_EXHAUSTED, // memory
    INTERNAL,
};

const char * status_code_name(status_code c);

class [[nodiscard]] status {
  public:
    status() = default;
    status(status_code code, std::string message) : code_(code), message_(std::move(message)) {}

    static status ok() { return status(); }

    bool                is_ok() const { return code_ == status_code::OK; }
    explicit            operator bool() const { return is_ok(); }
    status_code         code() const { return code_; }
    const std::string & message() const { return message_; }

  private:
    status_code code_ = status_code::OK;
    std::string message_;
};

// printf-style error constructor: lc::error(status_code::INVALID_FILE, "gguf: %s: bad magic", path)
status error(status_code code, const char * fmt, ...) __attribute__((format(printf, 2, 3)));
status verror(status_code code, const char * fmt, va_list ap);

template <typename T> class [[nodiscard]] result {
  public:
    result(T value) : value_(std::move(value)) {}
    result(status st) : status_(std::move(st)) {}

    bool           is_ok() const { return status_.is_ok(); }
    explicit       operator bool() const { return is_ok(); }
    const status & get_status() const { return status_; }
    T &            value() & { return *value_; }
    const T &      value() const & { return *value_; }
    T &&           value() && { return std::move(*value_); }
    T *            operator->() { return &*value_; }
    const T *      operator->() const { return &*value_; }
    T &            operator*() { return *value_; }
    const T &      operator*() const { return *value_; }

  private:
    std::optional<T> value_;
    status           status_;
};

} // namespace lc

// Propagate a failed status from an expression returning lc::status.
#define LC_RETURN_IF_ERROR(expr)                                                                                       \
    do {                                                                                                               \
        ::lc::status lc_st_ = (expr);                                                                                  \
        if (!lc_st_.is_ok()) return lc_st_;                                                                            \
    } while (0)

#define LC_CONCAT_INNER_(a, b) a##b
#define LC_CONCAT_(a, b) LC_CONCAT_INNER_(a, b)
// Assign the value of an lc::result<T> expression to `lhs`, or propagate its status.
#define LC_ASSIGN_OR_RETURN(lhs, expr) LC_ASSIGN_OR_RETURN_IMPL_(LC_CONCAT_(lc_res_, __LINE__), lhs, expr)
#define LC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)                                                                      \
    auto tmp = (expr);                                                                                                 \
    if (!tmp.is_ok()) return tmp.get_status();                                                                         \
    lhs = std::move(tmp).value()
