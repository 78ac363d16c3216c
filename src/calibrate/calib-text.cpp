// Calibration prompt builders (see calib-text.h).
#include "calibrate/calib-text.h"

#include <fstream>
#include <random>
#include <sstream>

namespace lc {

namespace {

std::string uuid(std::mt19937_64 & rng) {
    static const char * hex = "0123456789abcdef";
    std::string         s;
    for (int i = 0; i < 32; ++i) {
        if (i == 8 || i == 12 || i == 16 || i == 20) s += '-';
        s += hex[rng() % 16];
    }
    return s;
}

std::string kv_text(const std::vector<std::pair<std::string, std::string>> & kv, size_t ask) {
    std::string s = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n{";
    for (size_t i = 0; i < kv.size(); ++i) {
        s += (i ? ", \"" : "\"") + kv[i].first + "\": \"" + kv[i].second + "\"";
    }
    s += "}\n\nKey: \"" + kv[ask].first + "\"\nThe value associated with the specified key is: ";
    return s;
}

} // namespace

calib_prompt calib_kv_retrieval(const tokenizer & tok, int64_t n_tokens, uint64_t seed) {
    std::mt19937_64                                  rng(seed);
    std::vector<std::pair<std::string, std::string>> kv;
    calib_prompt                                     out;
    out.source = "builtin:kv-retrieval seed=" + std::to_string(seed);
    // Grow in steps estimated from the tokens per pair so far, then trim to the largest count that fits.
    size_t n_pairs = 16;
    for (;;) {
        while (kv.size() < n_pairs) kv.emplace_back(uuid(rng), uuid(rng));
        std::vector<int32_t> t = tok.encode(kv_text(kv, kv.size() / 2), true, false);
        if (int64_t(t.size()) > n_tokens) break;
        out.tokens          = std::move(t);
        const double per    = double(out.tokens.size()) / double(n_pairs);
        const size_t target = size_t(double(n_tokens) / per);
        n_pairs             = std::max(n_pairs + 1, std::min(target, n_pairs * 2));
    }
    // Step back one pair at a time from the first size that did not fit.
    while (kv.size() > 1) {
        kv.pop_back();
        std::vector<int32_t> t = tok.encode(kv_text(kv, kv.size() / 2), true, false);
        if (int64_t(t.size()) <= n_tokens) {
            out.tokens = std::move(t);
            break;
        }
    }
    return out;
}

result<calib_prompt> calib_from_file(const tokenizer & tok, const std::string & path, int64_t n_tokens) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return error(status_code::NOT_FOUND, "calibrate: cannot open --calib-file '%s'", path.c_str());
    std::stringstream ss;
    ss << in.rdbuf();
    const std::vector<int32_t> body = tok.encode(ss.str(), false, false);
    if (body.empty())
        return error(status_code::INVALID_ARGUMENT, "calibrate: --calib-file '%s' has no tokens", path.c_str());
    calib_prompt out;
    out.source = path;
    out.tokens = tok.encode("", true, false); // BOS when the model wants one
    for (size_t i = 0; int64_t(out.tokens.size()) < n_tokens; ++i) out.tokens.push_back(body[i % body.size()]);
    return out;
}

} // namespace lc
