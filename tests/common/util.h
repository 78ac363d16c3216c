// Shared test helpers: locating the real models in the cache and the fixtures in the source tree.
#pragma once

#include <string>
#include <vector>

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

} // namespace lc::test
