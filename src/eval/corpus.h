// Long texts for the perplexity and fidelity evals: the King James Bible from Debian's bible-kjv package (public
// domain; printed by its `bible` program), a directory of *.txt files concatenated in sorted order, or any file.
#pragma once

#include <string>

#include "longctx/status.h"

namespace lc::eval {

struct corpus {
    std::string text;
    std::string id; // "kjv:sha256=<hex>", "dir:NAME:sha256=<hex>", "file:NAME:sha256=<hex>"
};

// The whole KJV, Genesis 1:1 to Revelation 22:21, one verse per line ("  1 In the beginning ..."), with book and
// chapter headings, as `bible -l 100000 gen1:1-rev22:21` prints it (about 4.3 MB). NOT_FOUND without the package.
result<corpus> corpus_kjv();
result<corpus> corpus_file(const std::string & path);
result<corpus> corpus_dir(const std::string & dir); // *.txt in sorted filename order, concatenated

} // namespace lc::eval
