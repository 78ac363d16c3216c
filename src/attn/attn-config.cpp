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
    {prefill_method::BLOCK, "block"}, {prefill_method::MINFERENCE, "minference"}, {prefill_method::ORACLE, "oracle"},
};

struct decode_name {
    decode_kind   m;
    const char *  name;
};
constexpr decode_name k_decode_names[] = {
    {decode_kind::DENSE, "dense"}, {decode_kind::TOPK, "topk"},         {decode_kind::QUEST, "quest"},
    {decode_kind::LOKI, "loki"},   {decode_kind::MAGICPIG, "magicpig"},
};

} // namespace

const char * decode_kind_name(decode_kind m) {
    for (const decode_name & n : k_decode_names)
        if (n.m == m) return n.name;
    return "?";
}

result<decode_kind> decode_kind_parse(const std::string & s) {
    for (const decode_name & n : k_decode_names)
        if (s == n.name) return n.m;
    return error(status_code::INVALID_ARGUMENT,
                 "--decode '%s' is not a method; use dense, topk, quest, loki or magicpig", s.c_str());
}

int64_t decode_budget::keys(int64_t n_kv) const {
    if (n_kv <= 0) return 0;
    const int64_t k = mode == kind::TOKENS ? int64_t(value) : int64_t(std::ceil(value * double(n_kv)));
    return k < 1 ? 1 : (k > n_kv ? n_kv : k);
}

result<decode_budget> decode_budget_parse(const std::string & s) {
    decode_budget b;
    std::string   num = s;
    const bool    pct = !num.empty() && num.back() == '%';
    if (pct) num.pop_back();
    char * end     = nullptr;
    errno          = 0;
    const double v = num.empty() ? NAN : std::strtod(num.c_str(), &end);
    if (num.empty() || errno != 0 || end != num.c_str() + num.size() || !std::isfinite(v) || v <= 0.0)
        return error(status_code::INVALID_ARGUMENT,
                     "--decode-budget '%s' is not a budget; use a share of the cache (25%%, 0.25) or a number of "
                     "tokens (1024)",
                     s.c_str());
    if (pct || v < 1.0) {
        b.mode  = decode_budget::kind::FRACTION;
        b.value = pct ? v / 100.0 : v;
        if (b.value > 1.0) return error(status_code::INVALID_ARGUMENT, "--decode-budget %s: at most 100%%", s.c_str());
    } else {
        if (v != std::floor(v) || v > 1e12)
            return error(status_code::INVALID_ARGUMENT,
                         "--decode-budget %s: a number of tokens is a whole number (or write a share as 0.25 or 25%%)",
                         s.c_str());
        b.mode  = decode_budget::kind::TOKENS;
        b.value = v;
    }
    return b;
}

std::string decode_budget_name(const decode_budget & b) {
    char buf[48];
    if (b.mode == decode_budget::kind::TOKENS)
        std::snprintf(buf, sizeof(buf), "%lld", (long long)b.value);
    else
        std::snprintf(buf, sizeof(buf), "%g%%", b.value * 100.0);
    return buf;
}

const char * prefill_method_name(prefill_method m) {
    for (const method_name & n : k_prefill_names)
        if (n.m == m) return n.name;
    return "?";
}

result<prefill_method> prefill_method_parse(const std::string & s) {
    for (const method_name & n : k_prefill_names)
        if (s == n.name) return n.m;
    return error(status_code::INVALID_ARGUMENT,
                 "--prefill '%s' is not a method; use dense, a-shape, vslash, block, minference or oracle", s.c_str());
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

const char * kv_method_name(kv_method k) {
    switch (k) {
    case kv_method::FULL: return "full";
    case kv_method::STREAMING: return "streaming";
    case kv_method::H2O: return "h2o";
    case kv_method::D2O: return "d2o";
    }
    return "?";
}

result<kv_method> kv_method_parse(const std::string & s) {
    for (kv_method k : {kv_method::FULL, kv_method::STREAMING, kv_method::H2O, kv_method::D2O})
        if (s == kv_method_name(k)) return k;
    return error(status_code::INVALID_ARGUMENT, "--kv '%s': use full, streaming, h2o or d2o", s.c_str());
}

std::string attn_config_describe(const attn_config & c) {
    std::string s = std::string("prefill=") + prefill_method_name(c.prefill);
    if (c.prefill != prefill_method::DENSE) {
        s += " budget=" + prefill_budget_name(c.budget);
        s += " min-len=" + std::to_string(c.sparse_min_len);
    }
    if (c.decode != decode_kind::DENSE) {
        s += std::string(" decode=") + decode_kind_name(c.decode);
        if (c.decode != decode_kind::MAGICPIG) s += " decode-budget=" + decode_budget_name(c.decode_keys);
        const decode_params & d = c.decode_opts;
        char                  buf[96];
        if (c.decode == decode_kind::LOKI) {
            if (d.loki_var > 0)
                std::snprintf(buf, sizeof(buf), " loki-var=%g", d.loki_var);
            else
                std::snprintf(buf, sizeof(buf), " loki-d=%g", d.loki_d);
            s += buf;
        } else if (c.decode == decode_kind::MAGICPIG) {
            std::snprintf(buf, sizeof(buf), " lsh=%d,%d min-hits=%d", d.lsh_k, d.lsh_l, d.lsh_min_hits);
            s += buf;
        } else if (c.decode == decode_kind::QUEST) {
            std::snprintf(buf, sizeof(buf), " quest-page=%d", d.quest_page);
            s += buf;
        }
        if (d.kv_select && c.decode != decode_kind::MAGICPIG) s += " select=kv";
        if (d.n_sink >= 0 || d.n_local >= 0) {
            std::snprintf(buf, sizeof(buf), " keep=%d,%d", d.n_sink, d.n_local);
            s += buf;
        }
    }
    if (c.kv == kv_method::FULL && c.kv_opts.swa_full) s += " swa-full";
    if (c.kv != kv_method::FULL) {
        const kv_params & k = c.kv_opts;
        s += std::string(" kv=") + kv_method_name(c.kv) + " kv-budget=" + decode_budget_name(k.budget);
        char buf[96];
        if (k.n_sink >= 0) {
            std::snprintf(buf, sizeof(buf), " kv-sink=%d", k.n_sink);
            s += buf;
        }
        if (k.recent_share != 0.5 && c.kv != kv_method::STREAMING) {
            std::snprintf(buf, sizeof(buf), " kv-recent=%g", k.recent_share);
            s += buf;
        }
        if (k.evict_every != 64) s += " evict-every=" + std::to_string(k.evict_every);
        if (c.kv == kv_method::D2O) {
            if (k.merge != d2o_merge::REFERENCE) s += k.merge == d2o_merge::SOFTMAX ? " merge=softmax" : " merge=off";
            if (!k.d2o_shared) s += " d2o-budget=extra";
            if (k.whole_layers != std::vector<int>{0, 1, -1}) {
                std::string w;
                for (int l : k.whole_layers) w += (w.empty() ? "" : ",") + std::to_string(l);
                s += " whole=" + (w.empty() ? std::string("none") : w);
            }
        }
    }
    return s;
}

} // namespace lc
