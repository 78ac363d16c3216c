// Shared test helpers: locating the real models in the cache and the fixtures in the source tree.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace lc::test {

// $LONGCTX_CACHE/models/NAME (default ~/.cache/longctx/models/NAME); empty if the file does not exist.
std::string cached_model(const std::string & file_name);
// tests/fixtures/REL under the source tree.
std::string fixture_path(const std::string & rel);
// ../shared/data/REL beside the source tree; empty if absent.
std::string          shared_data_path(const std::string & rel);
bool                 file_exists(const std::string & path);
std::vector<int32_t> read_ids(const std::string & path); // whitespace-separated integers
std::vector<float>   read_f32(const std::string & path); // raw little-endian float32

// A real model from the cache and the tokens of an essay of ../shared/data/pg_essays (BOS first when the model adds
// one), cut to at most n_tokens. m is null when the model or the text is absent (the test then skips).
struct model_text {
    std::unique_ptr<lc::model> m;
    std::vector<int32_t>       prompt;
};
model_text load_model_text(int64_t n_tokens, const std::string & model_file = "SmolLM2-135M-Instruct.Q4_1.gguf",
                           const std::string & essay = "philosophy.txt");

// Agreement of two logit vectors over a vocabulary of n: max |difference|, KL(softmax(ref) || softmax(ours)) in
// double, and the argmax of each.
struct logit_cmp {
    double max_abs = 0, kl = 0;
    int    top_ref = -1, top_ours = -1;
};
logit_cmp compare_logits(const float * ref, const float * ours, int n);

} // namespace lc::test
