// Result files of `longctx eval` and the method slots every eval runs: a JSON object
// {"eval": NAME, "format": 1, "meta": {..., "identity": {...}}, "records": [...]}, rewritten after each record so that
// an interrupted run resumes where it stopped (records are keyed; the identity must match to resume).
#pragma once

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attn/attn-config.h"
#include "longctx/status.h"
#include "model/model.h"
#include "runtime/context.h"
#include "tokenizer/tokenizer.h"

namespace lc::eval {

using json = nlohmann::json;

class result_file {
  public:
    // Opens `path` for the eval `name`. An existing file is loaded when its eval and meta.identity equal the given
    // ones (its records are kept: resume); a different identity is INVALID_ARGUMENT unless overwrite.
    // meta must hold an "identity" object.
    static result<result_file> open(const std::string & path, const std::string & name, json meta, bool overwrite);
    // Reads a result file as it is (report, plots). INVALID_FILE when it is not one.
    static result<json> load(const std::string & path);

    bool   has(const std::string & key) const; // a record with this "key"
    size_t n_records() const { return doc_["records"].size(); }
    // Appends the record (it must hold a string "key") and rewrites the file (temporary file, then rename) when
    // the last write is save_interval_s old or more: an interrupted run loses at most that much work, and a grid of
    // thousands of records does not rewrite a multi-megabyte file after each one.
    status              add(json record);
    status              save();
    status              flush(); // save() if records were added since the last write
    double              save_interval_s = 5.0;
    const json &        doc() const { return doc_; }
    const std::string & path() const { return path_; }

  private:
    std::string                           path_;
    json                                  doc_;
    std::set<std::string>                 keys_;
    bool                                  dirty_ = false;
    std::chrono::steady_clock::time_point saved_at_{};
};

// One attention configuration under test and its context. Dense always runs; the configured method runs as a
// second slot on the same prompts unless it is dense too.
struct method_slot {
    std::string              label; // "dense" or attn_config_describe(attn)
    attn_config              attn;
    std::unique_ptr<context> ctx;
};

// REQUIRES: cp.attn is the method under test. Creates the dense slot (cp with a default attn_config) and, when
// cp.attn is not dense, the method's slot.
result<std::vector<method_slot>> method_slots_create(const model & m, const context_params & cp);
bool                             attn_is_dense(const attn_config & a);
// {"label", "prefill", "budget", "sparse_min_len", "sidecar"} of a slot, for records and meta.
json method_json(const method_slot & s);

// What an eval runs on: the model, its tokenizer, the method slots (dense first), whether prompts use the chat
// template, and the chunk size for passes that keep all logits.
struct eval_env {
    const model *              mdl      = nullptr;
    const tokenizer *          tok      = nullptr;
    std::vector<method_slot> * slots    = nullptr;
    bool                       use_chat = false;
    int64_t                    chunk    = 512; // tokens per decode() when all logits are kept (-ub)
};

// sha256 of the model file: the .sha256 file beside it when present (first 64 hex characters), else hashed.
result<std::string> model_file_sha256(const std::string & path);

// Writes text to path through a temporary file and a rename.
status write_file_atomic(const std::string & path, const std::string & text);

} // namespace lc::eval
