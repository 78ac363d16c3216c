// Haystack corpora cut in model tokens, and needle insertion at sentence starts.
#include "eval/haystack.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/log.h"
#include "core/sha256.h"
#include "eval/eval-common.h"

namespace lc::eval {

const char * const filler_line =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

result<haystack> haystack::from_dir(const std::string & dir, const tokenizer & tok) {
    namespace fs = std::filesystem;
    std::error_code          ec;
    std::vector<std::string> files;
    for (const auto & e : fs::directory_iterator(dir, ec)) {
        if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path().string());
    }
    if (ec)
        return error(status_code::NOT_FOUND, "eval: cannot list haystack directory '%s': %s", dir.c_str(),
                     ec.message().c_str());
    if (files.empty())
        return error(status_code::NOT_FOUND, "eval: haystack directory '%s' holds no *.txt files", dir.c_str());
    std::sort(files.begin(), files.end());
    haystack h;
    sha256   hash;
    for (const auto & f : files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) return error(status_code::IO_ERROR, "eval: cannot read '%s'", f.c_str());
        std::ostringstream ss;
        ss << in.rdbuf();
        const std::string text = ss.str();
        hash.update(text.data(), text.size());
        std::vector<int32_t> ids = encode_plain(tok, text);
        if (!ids.empty()) h.units_.push_back(std::move(ids));
    }
    if (h.units_.empty()) return error(status_code::NOT_FOUND, "eval: the files of '%s' are empty", dir.c_str());
    h.id_ = "dir:" + fs::path(dir).lexically_normal().filename().string() + ":sha256=" + hash.final_hex();
    if (fs::path(dir).lexically_normal().filename().empty())
        h.id_ = "dir:" + fs::path(dir).lexically_normal().parent_path().filename().string() +
                ":sha256=" + h.id_.substr(h.id_.find("sha256=") + 7);
    return h;
}

haystack haystack::filler(const tokenizer & tok) {
    haystack h;
    h.units_.push_back(encode_plain(tok, std::string(filler_line) + "\n"));
    h.id_ = "filler-v1";
    return h;
}

haystack haystack::from_units(std::vector<std::vector<int32_t>> units, std::string id) {
    haystack h;
    for (auto & u : units)
        if (!u.empty()) h.units_.push_back(std::move(u));
    h.id_ = std::move(id);
    return h;
}

int64_t haystack::n_tokens() const {
    int64_t n = 0;
    for (const auto & u : units_) n += int64_t(u.size());
    return n;
}

std::vector<int32_t> haystack::tokens(int64_t n, size_t first) const {
    LC_ASSERT(n_tokens() > 0, "haystack: no tokens");
    std::vector<int32_t> out;
    out.reserve(size_t(n));
    size_t u = first % units_.size();
    while (int64_t(out.size()) < n) {
        const auto &  unit = units_[u];
        const int64_t take = std::min<int64_t>(int64_t(unit.size()), n - int64_t(out.size()));
        out.insert(out.end(), unit.begin(), unit.begin() + take);
        u = (u + 1) % units_.size();
    }
    return out;
}

bool token_is_full_stop(const tokenizer & tok, int32_t id) {
    const std::string p = tok.token_to_piece(id);
    size_t            n = p.size();
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\n' || p[n - 1] == '\t' || p[n - 1] == '\r')) --n;
    return n > 0 && p[n - 1] == '.';
}

int64_t needle_insert(std::vector<int32_t> & hay, const std::vector<int32_t> & needle, double depth,
                      const std::function<bool(int32_t)> & is_full_stop) {
    const int64_t n = int64_t(hay.size());
    int64_t       p = n;
    if (depth < 100.0) {
        p = int64_t(std::floor(double(n) * depth / 100.0));
        p = std::clamp<int64_t>(p, 0, n);
        while (p > 0 && !is_full_stop(hay[size_t(p - 1)])) --p;
    }
    hay.insert(hay.begin() + p, needle.begin(), needle.end());
    return p;
}

std::vector<int32_t> haystack_with_needle(const haystack & h, size_t first_unit, int64_t length, int64_t reserve,
                                          const std::vector<int32_t> & needle, double depth,
                                          const std::function<bool(int32_t)> & is_full_stop, int64_t * pos) {
    std::vector<int32_t> hay = h.tokens(length, first_unit);
    const int64_t        b   = std::max<int64_t>(0, length - reserve);
    if (int64_t(hay.size() + needle.size()) > b) hay.resize(size_t(std::max<int64_t>(0, b - int64_t(needle.size()))));
    const int64_t p = needle_insert(hay, needle, depth, is_full_stop);
    if (pos) *pos = p;
    return hay;
}

std::vector<int32_t> haystack_with_needles(const haystack & h, size_t first_unit, int64_t length, int64_t reserve,
                                           const std::vector<std::vector<int32_t>> & needles,
                                           const std::vector<double> &               depths,
                                           const std::function<bool(int32_t)> &      is_full_stop,
                                           std::vector<int64_t> *                    pos) {
    LC_ASSERT(needles.size() == depths.size(), "needles and depths differ in count");
    std::vector<int32_t> hay = h.tokens(length, first_unit);
    const int64_t        b   = std::max<int64_t>(0, length - reserve);
    int64_t              n_n = 0;
    for (const auto & nd : needles) n_n += int64_t(nd.size());
    if (int64_t(hay.size()) + n_n > b) hay.resize(size_t(std::max<int64_t>(0, b - n_n)));
    if (pos) pos->clear();
    for (size_t i = 0; i < needles.size(); ++i) {
        const int64_t p = needle_insert(hay, needles[i], depths[i], is_full_stop);
        if (pos) pos->push_back(p);
    }
    return hay;
}

} // namespace lc::eval
