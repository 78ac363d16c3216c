// Scoring, prompt assembly, greedy generation and progress for the evaluation harness.
#include "eval/eval-common.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/log.h"
#include "core/sha256.h"
#include "runtime/sampling.h"

namespace lc::eval {

// ---- scoring ----

namespace {
bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
std::string strip(std::string_view s) {
    size_t a = 0, b = s.size();
    while (a < b && is_space(s[a])) ++a;
    while (b > a && is_space(s[b - 1])) --b;
    return std::string(s.substr(a, b - a));
}
char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
}
} // namespace

std::string answer_clean(std::string_view s) {
    std::string t = strip(s);
    for (char & c : t)
        if ((unsigned char)c < 0x20) c = '\n';
    return strip(t);
}

bool contains_icase(std::string_view hay, std::string_view needle) {
    if (needle.empty()) return true;
    if (needle.size() > hay.size()) return false;
    for (size_t i = 0; i + needle.size() <= hay.size(); ++i) {
        size_t j = 0;
        while (j < needle.size() && lower(hay[i + j]) == lower(needle[j])) ++j;
        if (j == needle.size()) return true;
    }
    return false;
}

double score_all_match(std::string_view pred, const std::vector<std::string> & refs) {
    if (refs.empty()) return 0.0;
    int n = 0;
    for (const auto & r : refs) n += contains_icase(pred, r) ? 1 : 0;
    return double(n) / double(refs.size());
}

double score_any_match(std::string_view pred, const std::vector<std::string> & refs) {
    for (const auto & r : refs)
        if (contains_icase(pred, r)) return 1.0;
    return 0.0;
}

double score_percent(const std::vector<double> & s) {
    if (s.empty()) return 0.0;
    double sum = 0;
    for (double x : s) sum += x;
    return std::round(100.0 * sum / double(s.size()) * 100.0) / 100.0;
}

std::string first_digit_run(std::string_view s) {
    size_t i = 0;
    while (i < s.size() && !std::isdigit((unsigned char)s[i])) ++i;
    size_t j = i;
    while (j < s.size() && std::isdigit((unsigned char)s[j])) ++j;
    return std::string(s.substr(i, j - i));
}

// ---- identity and randomness ----

uint64_t seed_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t seed_combine(uint64_t a, uint64_t b) {
    return seed_mix(seed_mix(a) ^ (b + 0x632be59bd9b4e019ULL));
}

rng::rng(uint64_t seed) {
    uint64_t x = seed;
    for (auto & s : s_) {
        x = seed_mix(x);
        s = x;
    }
}

uint64_t rng::next() {
    auto           rotl   = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t      = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

uint64_t rng::below(uint64_t n) {
    LC_ASSERT(n > 0, "rng::below(0)");
    // Rejection sampling: no modulo bias.
    const uint64_t lim = ~uint64_t(0) - (~uint64_t(0) % n);
    uint64_t       v;
    do v = next();
    while (v >= lim);
    return v % n;
}

int64_t rng::range(int64_t lo, int64_t hi) {
    return lo + int64_t(below(uint64_t(hi - lo) + 1));
}

double rng::uniform() {
    return double(next() >> 11) * (1.0 / 9007199254740992.0);
}

// ---- prompts ----

std::vector<int32_t> encode_plain(const tokenizer & tok, std::string_view text) {
    return tok.encode(text, false, false);
}

result<std::vector<int32_t>> prompt_build(const tokenizer & tok, bool use_chat, const prompt_template & t,
                                          const std::vector<int32_t> & context_ids) {
    std::string head, tail;
    if (use_chat) {
        // Render with a marker where the context goes, then split the rendered text around it.
        static const char * marker = "\x01\x02LONGCTX_CONTEXT\x02\x01";
        LC_ASSIGN_OR_RETURN(std::string r, tok.apply_chat_template({{"user", t.before + marker + t.after}}, true));
        const size_t at = r.find(marker);
        if (at == std::string::npos)
            return error(status_code::INTERNAL, "eval: the chat template dropped the prompt's context marker");
        head = r.substr(0, at);
        tail = r.substr(at + std::strlen(marker)) + t.answer_prefix;
    } else {
        head = t.before;
        tail = t.after + t.answer_prefix;
    }
    // The template parts may hold special-token texts (turn markers); the context never does.
    std::vector<int32_t> ids;
    if (tok.add_bos() && tok.bos() >= 0) ids.push_back(tok.bos());
    std::vector<int32_t> h = tok.encode(head, false, use_chat);
    if (!ids.empty() && !h.empty() && h[0] == ids[0]) ids.clear();
    ids.insert(ids.end(), h.begin(), h.end());
    ids.insert(ids.end(), context_ids.begin(), context_ids.end());
    std::vector<int32_t> tl = tok.encode(tail, false, use_chat);
    ids.insert(ids.end(), tl.begin(), tl.end());
    return ids;
}

// ---- running prompts ----

result<gen_result> generate_greedy(context & c, const tokenizer & tok, const std::vector<int32_t> & prompt, int n_max) {
    using clock = std::chrono::steady_clock;
    gen_result r;
    r.n_prompt = int64_t(prompt.size());
    if (r.n_prompt + n_max > c.n_ctx())
        return error(status_code::OUT_OF_RANGE,
                     "eval: prompt of %lld tokens + %d to generate exceeds the context of %lld tokens; raise -c",
                     (long long)r.n_prompt, n_max, (long long)c.n_ctx());
    c.clear();
    c.reset_timings();
    const auto t0 = clock::now();
    LC_RETURN_IF_ERROR(c.decode(prompt));
    const auto    t1      = clock::now();
    const int32_t n_vocab = c.get_model().hparams().n_vocab;
    r.density             = c.timings().density();
    r.index_s             = c.timings().attn_index_s;
    for (int i = 0; i < n_max; ++i) {
        const int32_t id = sampling_argmax(c.logits(), n_vocab);
        if (tok.is_eog(id)) break;
        r.ids.push_back(id);
        if (i + 1 == n_max) break;
        LC_RETURN_IF_ERROR(c.decode({id}));
    }
    const auto t2 = clock::now();
    r.prefill_s   = std::chrono::duration<double>(t1 - t0).count();
    r.decode_s    = std::chrono::duration<double>(t2 - t1).count();
    r.text        = tok.decode(r.ids);
    return r;
}

// ---- next-token distributions ----

double token_nll(const float * logits, int n, int32_t target) {
    LC_ASSERT(target >= 0 && target < n, "token_nll: target %d outside [0, %d)", target, n);
    double mx = -INFINITY;
    for (int i = 0; i < n; ++i) mx = std::max(mx, double(logits[i]));
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
    return mx + std::log(sum) - double(logits[target]);
}

double logits_kl(const float * ref, const float * ours, int n) {
    double mr = -INFINITY, mo = -INFINITY;
    for (int i = 0; i < n; ++i) {
        mr = std::max(mr, double(ref[i]));
        mo = std::max(mo, double(ours[i]));
    }
    double sr = 0, so = 0;
    for (int i = 0; i < n; ++i) {
        sr += std::exp(double(ref[i]) - mr);
        so += std::exp(double(ours[i]) - mo);
    }
    const double lzr = mr + std::log(sr), lzo = mo + std::log(so);
    double       kl = 0;
    for (int i = 0; i < n; ++i) {
        const double lp = double(ref[i]) - lzr, lq = double(ours[i]) - lzo;
        kl += std::exp(lp) * (lp - lq);
    }
    return std::max(0.0, kl);
}

std::vector<int32_t> encode_document(const tokenizer & tok, std::string_view text) {
    std::vector<int32_t> ids;
    if (tok.add_bos() && tok.bos() >= 0) ids.push_back(tok.bos());
    std::vector<int32_t> t = encode_plain(tok, text);
    ids.insert(ids.end(), t.begin(), t.end());
    return ids;
}

// ---- progress ----

progress::progress(std::string name, int64_t total, int64_t done_before)
    : name_(std::move(name)), total_(total), done_(done_before), done_before_(done_before), t0_(clock::now()),
      t_last_(t0_) {}

void progress::step(const std::string & what) {
    ++done_;
    const auto   now = clock::now();
    const double dt  = std::chrono::duration<double>(now - t_last_).count();
    const double all = std::chrono::duration<double>(now - t0_).count();
    const double per = all / double(std::max<int64_t>(1, done_ - done_before_));
    const double eta = per * double(total_ - done_);
    t_last_          = now;
    LC_LOG_I("eval %s: %lld/%lld cells (%d%%), %s, %.1f s, ETA %.0f s", name_.c_str(), (long long)done_,
             (long long)total_, total_ > 0 ? int(100 * done_ / total_) : 100, what.c_str(), dt, eta);
}

result<std::vector<double>> parse_number_list(const std::string & s, const char * what) {
    std::vector<double> out;
    auto                bad = [&]() {
        return error(status_code::INVALID_ARGUMENT,
                                    "%s expects numbers separated by commas, START:STOP:STEP (e.g. 0:100:10) or sigmoid:K, got '%s'",
                                    what, s.c_str());
    };
    auto num = [](const std::string & x, double & v) {
        if (x.empty()) return false;
        char * end = nullptr;
        v          = std::strtod(x.c_str(), &end);
        return *end == '\0' && std::isfinite(v);
    };
    if (s.rfind("sigmoid:", 0) == 0) {
        double k;
        if (!num(s.substr(8), k) || k < 2 || k > 10000 || k != std::floor(k)) return bad();
        for (int i = 0; i < int(k); ++i) {
            const double x = 100.0 * i / (k - 1);
            double       d = 100.0 / (1.0 + std::exp(-0.1 * (x - 50.0)));
            d              = std::round(d * 1000.0) / 1000.0;
            out.push_back(i == 0 ? 0.0 : i == int(k) - 1 ? 100.0 : d);
        }
        return out;
    }
    if (s.find(':') != std::string::npos) {
        const size_t a = s.find(':'), b = s.find(':', a + 1);
        if (b == std::string::npos || s.find(':', b + 1) != std::string::npos) return bad();
        double lo, hi, st;
        if (!num(s.substr(0, a), lo) || !num(s.substr(a + 1, b - a - 1), hi) || !num(s.substr(b + 1), st)) return bad();
        if (!(st > 0) || hi < lo || (hi - lo) / st > 1e6) return bad();
        const int64_t n = int64_t(std::floor((hi - lo) / st + 1e-9));
        for (int64_t i = 0; i <= n; ++i) out.push_back(lo + double(i) * st);
        return out;
    }
    size_t start = 0;
    while (true) {
        const size_t comma = s.find(',', start);
        double       v;
        if (!num(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start), v)) return bad();
        out.push_back(v);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

} // namespace lc::eval
