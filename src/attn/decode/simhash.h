// SimHash (random hyperplanes, Charikar 2002) as MagicPIG uses it (METHODS.md sec. 4.1): L tables of K sign bits
// from one Gaussian matrix W [D][K*L], and the tables of one (layer, KV head): the "middle" keys centred by their
// mean, sorted by code with bucket offsets. Pure functions over arrays, so that hashing and table building can
// move to an accelerator while the sampling (magicpig.h) stays on CPU threads.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread-pool.h"
#include "kv/kv-cache.h"

namespace lc {

// Largest K: codes are uint16 and every table has 2^K buckets.
constexpr int simhash_k_max = 16;

// The hyperplanes W [D][K*L]: column c = t*K + j is bit j of table t; entries N(0, 1) from `seed` (the same on
// every platform: splitmix64 + Box-Muller). Stored as panels of 16 columns for the blocked product: panel p is
// [D][16] f32 holding columns 16p..16p+15; columns past K*L are zero.
struct simhash_matrix {
    int                D = 0, K = 0, L = 0;
    int                n_panel = 0; // ceil(K * L / 16)
    std::vector<float> w;           // [n_panel][D][16]

    float at(int d, int c) const { return w[(size_t(c / 16) * size_t(D) + size_t(d)) * 16 + size_t(c % 16)]; }
};
// REQUIRES: D >= 1, 1 <= K <= simhash_k_max, L >= 1.
simhash_matrix simhash_matrix_make(int D, int K, int L, uint64_t seed);

// Codes of n rows: x [n][D] f32 row-major; codes [n][L] uint16, bit j of codes[r][t] = (x_r . W[:, t*K + j] > 0).
// Scaling a row does not change its codes (so q and q/|q| hash alike). AVX2/FMA blocked product, D*K*L FMAs a row.
void simhash_codes(const float * x, int64_t n, const simhash_matrix & W, uint16_t * codes);

// Scalar reference of simhash_codes (double dot products), for tests.
void simhash_codes_ref(const float * x, int64_t n, const simhash_matrix & W, uint16_t * codes);

// LSH tables of one KV head over the "middle" keys [begin, begin + n) of a layer; key i is token begin + i.
//   mu     [D]                 f32 mean of the middle keys (the centre every key is hashed relative to)
//   norm   [n]                 f32 |k_i - mu|
//   offset [L][2^K + 1]        bucket b of table t holds key[t][offset[t][b] .. offset[t][b + 1])
//   key    [L][n]              key indices i sorted by their code in table t (ascending i within a bucket)
struct lsh_tables {
    int                   K = 0, L = 0;
    int64_t               begin = 0, n = 0;
    std::vector<float>    mu;
    std::vector<float>    norm;
    std::vector<uint32_t> offset;
    std::vector<uint32_t> key;

    size_t           n_bucket() const { return size_t(1) << K; }
    const uint32_t * table_offset(int t) const { return offset.data() + size_t(t) * (n_bucket() + 1); }
    const uint32_t * table_key(int t) const { return key.data() + size_t(t) * size_t(n); }
    size_t           bytes() const;
};

// Builds the tables of every KV head of a layer over keys [begin, end) of kv (fp16 rows converted to f32,
// centred by their mean, hashed with W, counting-sorted by code): out [kv.n_head_kv]. Work is split over
// (head, 64-row tiles) for the mean and the hashing and over (head, table) for the sort, on all threads of the
// pool. REQUIRES: 0 <= begin <= end <= kv.n_kv, end - begin < 2^32, W.D == kv.head_dim.
void lsh_tables_build(const kv_view & kv, int64_t begin, int64_t end, const simhash_matrix & W,
                      std::vector<lsh_tables> & out, thread_pool & pool);

} // namespace lc
