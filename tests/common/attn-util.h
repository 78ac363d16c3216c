// Shared pieces of the attention tests: random inputs, a poisoned paged KV cache (NaN wherever attention must
// not read), the kernel ISAs of this machine, and output comparison.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/cpu-features.h"
#include "kv/kv-cache.h"

namespace lc::test {

std::vector<float> randn(size_t n, float std, uint32_t seed);

// n_kv random tokens in sequence 0 of a one-layer cache whose pages interleave with those of a sequence 1
// (so sequence 0's page table is not the identity), with NaN everywhere attention must not read: all of
// sequence 1 and the rows of sequence 0's last page past n_kv. A read through the wrong page or past n_kv
// turns the output into NaN.
struct test_cache {
    std::unique_ptr<lc::kv_cache> kv;
    int64_t                       n_kv = 0;

    lc::kv_view view() const {
        lc::kv_view v = kv->view(0, 0);
        v.n_kv        = n_kv;
        return v;
    }
};
test_cache make_cache(int n_head_kv, int head_dim, int64_t n_kv, uint32_t seed);

// The kernel ISAs available on this machine and build.
std::vector<lc::cpu_isa> isas();

struct errors {
    double nmse    = 0; // sum (o - ref)^2 / sum ref^2
    double max_abs = 0; // max |o - ref|
    double lse_abs = 0; // max |lse - lse_ref|
};
errors compare(const std::vector<float> & o, const std::vector<float> & o_ref, const std::vector<float> & lse,
               const std::vector<float> & lse_ref);

} // namespace lc::test
