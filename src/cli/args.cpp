// Flag table parsing for the CLI (see args.h).
#include "cli/args.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace lc::cli {

namespace {
std::string env_name(const std::string & long_name) {
    std::string s = "LONGCTX_ARG_";
    for (char c : long_name.substr(2)) s += c == '-' ? '_' : char(std::toupper((unsigned char)c));
    return s;
}
} // namespace

const flag * arg_parser::find(const std::string & name) const {
    for (const auto & f : flags_)
        if (name == f.long_name || (!f.short_name.empty() && name == f.short_name)) return &f;
    return nullptr;
}

status arg_parser::parse(const std::vector<std::string> & args) {
    for (size_t i = 0; i < args.size(); ++i) {
        std::string a = args[i];
        if (a == "-h" || a == "--help") {
            help_ = true;
            continue;
        }
        if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && (std::isdigit((unsigned char)a[1]) || a[1] == '.'))) {
            std::string value;
            bool        inline_value = false;
            if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
                value        = a.substr(eq + 1);
                a            = a.substr(0, eq);
                inline_value = true;
            }
            const flag * f = find(a);
            if (!f)
                return error(status_code::INVALID_ARGUMENT, "longctx %s: unknown flag '%s' (see longctx %s --help)",
                             command_.c_str(), a.c_str(), command_.c_str());
            if (f->value_name.empty()) {
                if (inline_value)
                    return error(status_code::INVALID_ARGUMENT, "longctx %s: flag %s takes no value", command_.c_str(),
                                 f->long_name.c_str());
                values_.emplace_back(f->long_name, "1");
                continue;
            }
            if (!inline_value) {
                if (i + 1 >= args.size())
                    return error(status_code::INVALID_ARGUMENT, "longctx %s: flag %s needs a value (%s)",
                                 command_.c_str(), a.c_str(), f->value_name.c_str());
                value = args[++i];
            }
            values_.emplace_back(f->long_name, value);
            continue;
        }
        positional_.push_back(a);
    }
    return status::ok();
}

bool arg_parser::has(const std::string & long_name) const {
    for (const auto & [k, v] : values_)
        if (k == long_name) return true;
    return std::getenv(env_name(long_name).c_str()) != nullptr;
}

std::string arg_parser::get(const std::string & long_name) const {
    for (auto it = values_.rbegin(); it != values_.rend(); ++it)
        if (it->first == long_name) return it->second;
    if (const char * e = std::getenv(env_name(long_name).c_str())) return e;
    const flag * f = find(long_name);
    return f ? f->def : std::string();
}

result<int64_t> arg_parser::get_int(const std::string & long_name, int64_t lo, int64_t hi) const {
    const std::string s   = get(long_name);
    char *            end = nullptr;
    errno                 = 0;
    const long long v     = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE)
        return error(status_code::INVALID_ARGUMENT, "longctx %s: %s expects an integer, got '%s'", command_.c_str(),
                     long_name.c_str(), s.c_str());
    if (v < lo || v > hi)
        return error(status_code::INVALID_ARGUMENT, "longctx %s: %s %lld is out of range [%lld, %lld]",
                     command_.c_str(), long_name.c_str(), v, (long long)lo, (long long)hi);
    return int64_t(v);
}

result<double> arg_parser::get_float(const std::string & long_name, double lo, double hi) const {
    const std::string s   = get(long_name);
    char *            end = nullptr;
    const double      v   = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || v != v)
        return error(status_code::INVALID_ARGUMENT, "longctx %s: %s expects a number, got '%s'", command_.c_str(),
                     long_name.c_str(), s.c_str());
    if (v < lo || v > hi)
        return error(status_code::INVALID_ARGUMENT, "longctx %s: %s %g is out of range [%g, %g]", command_.c_str(),
                     long_name.c_str(), v, lo, hi);
    return v;
}

result<size_t> parse_bytes(const std::string & s) {
    char *            end = nullptr;
    const double      v   = s.empty() ? -1.0 : std::strtod(s.c_str(), &end);
    const std::string suf = end ? std::string(end) : std::string();
    double            mul = -1.0;
    if (suf.empty() || suf == "B")
        mul = 1.0;
    else if (suf == "K" || suf == "k" || suf == "KiB")
        mul = 1024.0;
    else if (suf == "M" || suf == "MiB")
        mul = 1024.0 * 1024.0;
    else if (suf == "G" || suf == "GiB")
        mul = 1024.0 * 1024.0 * 1024.0;
    else if (suf == "T" || suf == "TiB")
        mul = 1024.0 * 1024.0 * 1024.0 * 1024.0;
    const double b = v * mul;
    if (s.empty() || end == s.c_str() || mul < 0 || !(v >= 0) || b > double(uint64_t(1) << 62))
        return error(status_code::INVALID_ARGUMENT, "'%s' is not a byte count; use e.g. 512M, 2G or 1073741824",
                     s.c_str());
    return size_t(b);
}

result<size_t> arg_parser::get_bytes(const std::string & long_name) const {
    auto b = parse_bytes(get(long_name));
    if (!b)
        return error(status_code::INVALID_ARGUMENT, "longctx %s: %s: %s", command_.c_str(), long_name.c_str(),
                     b.get_status().message().c_str());
    return b;
}

result<std::vector<int64_t>> arg_parser::get_int_list(const std::string & long_name, int64_t lo, int64_t hi) const {
    const std::string    s = get(long_name);
    std::vector<int64_t> out;
    size_t               start = 0;
    while (start <= s.size()) {
        size_t            comma = s.find(',', start);
        const std::string item  = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        char *            end   = nullptr;
        errno                   = 0;
        const long long v       = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || errno == ERANGE)
            return error(status_code::INVALID_ARGUMENT,
                         "longctx %s: %s expects a comma-separated list of integers, got '%s'", command_.c_str(),
                         long_name.c_str(), s.c_str());
        if (v < lo || v > hi)
            return error(status_code::INVALID_ARGUMENT, "longctx %s: %s value %lld is out of range [%lld, %lld]",
                         command_.c_str(), long_name.c_str(), v, (long long)lo, (long long)hi);
        out.push_back(v);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

void arg_parser::print_help() const {
    std::printf("usage: %s\n\noptions:\n", usage_.c_str());
    for (const auto & f : flags_) {
        std::string names = f.short_name.empty() ? "    " + f.long_name : f.short_name + ", " + f.long_name;
        if (!f.value_name.empty()) names += " " + f.value_name;
        std::printf("  %-28s %s", names.c_str(), f.help.c_str());
        if (!f.def.empty()) std::printf(" (default: %s)", f.def.c_str());
        std::printf("\n");
    }
    std::printf("\nEvery long flag can also be set through the environment: --top-k -> LONGCTX_ARG_TOP_K.\n");
}

} // namespace lc::cli
