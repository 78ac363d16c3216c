// Helpers for the tokenizer tests: build a tokenizer from a vocab-only GGUF written with gguf_writer, find the
// real models and fixture files.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace lc::test {

// Writes the file, opens it with the GGUF reader and builds the tokenizer from it.
inline result<tokenizer> tokenizer_from_writer(const gguf_writer & w) {
    static int        counter = 0;
    const char *      tmp     = std::getenv("TMPDIR");
    const std::string path    = std::string(tmp && *tmp ? tmp : "/tmp") + "/longctx-tok-test-" +
                             std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".gguf";
    LC_RETURN_IF_ERROR(w.write(path));
    auto f = gguf_file::open(path);
    std::remove(path.c_str());
    if (!f) return f.get_status();
    return tokenizer::from_gguf(**f);
}

// $LONGCTX_CACHE/models/NAME (default ~/.cache/longctx/models/NAME); empty when the file is absent.
inline std::string tok_model_path(const std::string & name) {
    std::string dir;
    if (const char * c = std::getenv("LONGCTX_CACHE"); c && *c) {
        dir = c;
    } else if (const char * h = std::getenv("HOME"); h && *h) {
        dir = std::string(h) + "/.cache/longctx";
    } else {
        return "";
    }
    const std::string p = dir + "/models/" + name;
    return std::ifstream(p).good() ? p : "";
}

// Whole file as bytes; false when it cannot be read.
inline bool read_file(const std::string & path, std::string & out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::ostringstream ss;
    ss << in.rdbuf();
    out = ss.str();
    return true;
}

inline std::vector<int32_t> parse_ids(const std::string & line) {
    std::istringstream   in(line);
    std::vector<int32_t> ids;
    long long            v;
    while (in >> v) ids.push_back(int32_t(v));
    return ids;
}

} // namespace lc::test
