// Names and parsing of the attention configuration (see attn-config.h).
#include "attn/attn-config.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace lc {

namespace {

struct method_name {
    prefill_method m;
    const char *   name;
};
constexpr method_name k_prefill_names[] = {
    {prefill_method::DENSE, "dense"}, {prefill_method::A_SHAPE, "a-shape"},       {prefill_method::VSLASH, "vslash"},
    {prefill_method::BLOCK, "block"}, {prefill_method::MINFERENCE, "minference"},
};

} // namespace

const char * prefill_method_name(prefill_method m) {
    for (const method_name & n : k_prefill_names)
        if (n.m == m) return n.name;
    return "?";
}

result<prefill_method> prefill_method_parse(const std::string & s) {
    for (const method_name & n : k_prefill_names)
        if (s == n.name) return n.m;
    return error(status_code::INVALID_ARGUMENT,
                 "--prefill '%s' is not a method; use dense, a-shape, vslash, block or minference", s.c_str());
}

result<prefill_budget> prefill_budget_parse(const std::string & s) {
    prefill_budget b;
    std::string    num = s;
    if (!num.empty() && (num.back() == 'x' || num.back() == '%')) num.pop_back();
    char * end     = nullptr;
    errno          = 0;
    const double v = num.empty() ? NAN : std::strtod(num.c_str(), &end);
    if (num.empty() || errno != 0 || end != num.c_str() + num.size() || !std::isfinite(v) || v <= 0.0)
        return error(status_code::INVALID_ARGUMENT,
                     "--prefill-budget '%s' is not a budget; use a multiple of the head budgets (1x, 0.5x) or a "
                     "fraction of the prompt (20%%, 0.2)",
                     s.c_str());
    if (s.back() == 'x') {
        b.mode  = prefill_budget::kind::SCALE;
        b.value = v;
        if (v > 1e6) return error(status_code::INVALID_ARGUMENT, "--prefill-budget %s: at most 1000000x", s.c_str());
    } else {
        b.mode  = prefill_budget::kind::FRACTION;
        b.value = s.back() == '%' ? v / 100.0 : v;
        if (b.value > 1.0)
            return error(status_code::INVALID_ARGUMENT,
                         "--prefill-budget %s: a fraction of the prompt is at most 100%% (for a multiple of the head "
                         "budgets write it with an x, e.g. 2x)",
                         s.c_str());
    }
    return b;
}

std::string prefill_budget_name(const prefill_budget & b) {
    char buf[48];
    if (b.mode == prefill_budget::kind::SCALE)
        std::snprintf(buf, sizeof(buf), "%gx", b.value);
    else
        std::snprintf(buf, sizeof(buf), "%g%%", b.value * 100.0);
    return buf;
}

std::string attn_config_describe(const attn_config & c) {
    std::string s = std::string("prefill=") + prefill_method_name(c.prefill);
    if (c.prefill != prefill_method::DENSE) {
        s += " budget=" + prefill_budget_name(c.budget);
        s += " min-len=" + std::to_string(c.sparse_min_len);
    }
    return s;
}

} // namespace lc
