// Text corpora for perplexity and fidelity.
#include "eval/corpus.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/sha256.h"

namespace lc::eval {

result<corpus> corpus_kjv() {
    // The package installs /usr/bin/bible and its data; nothing else reads the compressed format.
    if (!std::filesystem::exists("/usr/bin/bible"))
        return error(status_code::NOT_FOUND,
                     "eval: the King James Bible needs Debian's bible-kjv package (scripts/setup.sh installs it); or "
                     "pass --file");
    FILE * f = popen("/usr/bin/bible -l 100000 gen1:1-rev22:21 2>/dev/null", "r");
    if (!f) return error(status_code::IO_ERROR, "eval: cannot run /usr/bin/bible");
    corpus c;
    char   buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) c.text.append(buf, n);
    const int rc = pclose(f);
    if (rc != 0 || c.text.size() < 1000000)
        return error(status_code::IO_ERROR, "eval: /usr/bin/bible failed (exit status %d, %zu bytes of text)", rc,
                     c.text.size());
    c.id = "kjv:sha256=" + sha256_hex(c.text.data(), c.text.size());
    return c;
}

result<corpus> corpus_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return error(status_code::NOT_FOUND, "eval: cannot open '%s'", path.c_str());
    std::ostringstream ss;
    ss << in.rdbuf();
    corpus c;
    c.text = ss.str();
    c.id   = "file:" + std::filesystem::path(path).filename().string() +
           ":sha256=" + sha256_hex(c.text.data(), c.text.size());
    return c;
}

result<corpus> corpus_dir(const std::string & dir) {
    namespace fs = std::filesystem;
    std::error_code          ec;
    std::vector<std::string> files;
    for (const auto & e : fs::directory_iterator(dir, ec))
        if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path().string());
    if (ec || files.empty()) return error(status_code::NOT_FOUND, "eval: no *.txt files in '%s'", dir.c_str());
    std::sort(files.begin(), files.end());
    corpus c;
    for (const auto & f : files) {
        std::ifstream      in(f, std::ios::binary);
        std::ostringstream ss;
        ss << in.rdbuf();
        c.text += ss.str();
    }
    fs::path p = fs::path(dir).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    c.id = "dir:" + p.filename().string() + ":sha256=" + sha256_hex(c.text.data(), c.text.size());
    return c;
}

} // namespace lc::eval
