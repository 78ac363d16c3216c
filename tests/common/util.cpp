// Shared test helpers (see util.h).
#include "common/util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"

namespace lc::test {

bool file_exists(const std::string & path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
}

std::string cached_model(const std::string & file_name) {
    std::string dir;
    if (const char * c = std::getenv("LONGCTX_CACHE"); c && *c)
        dir = c;
    else if (const char * h = std::getenv("HOME"); h && *h)
        dir = std::string(h) + "/.cache/longctx";
    else
        return "";
    const std::string p = dir + "/models/" + file_name;
    return file_exists(p) ? p : "";
}

std::string fixture_path(const std::string & rel) {
    return std::string(LC_SOURCE_DIR) + "/tests/fixtures/" + rel;
}

std::string shared_data_path(const std::string & rel) {
    const std::string p = std::string(LC_SOURCE_DIR) + "/../shared/data/" + rel;
    return file_exists(p) ? p : "";
}

std::vector<int32_t> read_ids(const std::string & path) {
    std::ifstream        in(path);
    std::vector<int32_t> ids;
    long long            v;
    while (in >> v) ids.push_back(int32_t(v));
    return ids;
}

std::vector<float> read_f32(const std::string & path) {
    std::ifstream      in(path, std::ios::binary | std::ios::ate);
    std::vector<float> v;
    if (!in) return v;
    const auto n = in.tellg();
    in.seekg(0);
    v.resize(size_t(n) / sizeof(float));
    in.read(reinterpret_cast<char *>(v.data()), std::streamsize(v.size() * sizeof(float)));
    return v;
}

logit_cmp compare_logits(const float * ref, const float * ours, int n) {
    logit_cmp c;
    double    mr = -1e30, mo = -1e30;
    for (int i = 0; i < n; ++i) {
        c.max_abs = std::max(c.max_abs, double(std::fabs(ref[i] - ours[i])));
        if (ref[i] > mr) mr = ref[i], c.top_ref = i;
        if (ours[i] > mo) mo = ours[i], c.top_ours = i;
    }
    double zr = 0, zo = 0;
    for (int i = 0; i < n; ++i) zr += std::exp(ref[i] - mr), zo += std::exp(ours[i] - mo);
    const double lzr = std::log(zr) + mr, lzo = std::log(zo) + mo;
    for (int i = 0; i < n; ++i) {
        const double lpr = ref[i] - lzr, lpo = ours[i] - lzo;
        c.kl += std::exp(lpr) * (lpr - lpo);
    }
    return c;
}

model_text load_model_text(int64_t n_tokens, const std::string & model_file, const std::string & essay) {
    model_text        f;
    const std::string path = cached_model(model_file);
    const std::string text = shared_data_path("pg_essays/" + essay);
    if (path.empty() || text.empty()) return f;
    auto m = lc::model::load(path);
    EXPECT_TRUE(m.is_ok()) << (m.is_ok() ? "" : m.get_status().message());
    if (!m.is_ok()) return f;
    f.m      = std::move(*m);
    auto tok = lc::tokenizer::from_gguf(f.m->file());
    EXPECT_TRUE(tok.is_ok());
    if (!tok.is_ok()) return model_text{};
    std::ifstream     in(text);
    const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    f.prompt = tok->encode(s, true, false);
    if (int64_t(f.prompt.size()) > n_tokens) f.prompt.resize(size_t(n_tokens));
    return f;
}

} // namespace lc::test
