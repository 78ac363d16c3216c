// MagicPIG hybrid decode, host side (METHODS.md sec. 4; issue 9): the middle of a sparse layer's cache (K and V in
// bf16, as the GPU cache holds them) and its LSH tables live in host memory; each step CPU threads walk the tables
// with the query codes the GPU computed (magicpig-hybrid.cuh), gather the keys colliding in at least min_hits
// tables and compute the importance-weighted attention over them as a partial state (o, lse) that the GPU merges
// with its dense part. Same sampling rule and log-weights as the CPU method (attn/decode/magicpig.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attn/decode/magicpig.h"
#include "core/fp16.h"
#include "core/thread-pool.h"

namespace lc::cuda {

// Host arrays on 2 MiB-aligned memory that the kernel is asked to back with huge pages (madvise): the sampled rows
// and table buckets are random accesses over tens of GiB, and with 4 KiB pages nearly each one is also a TLB miss.
// Uninitialised (fresh anonymous memory reads as zero until written).
struct mpig_free {
    void operator()(void * p) const;
};
template <typename T> using mpig_host_ptr = std::unique_ptr<T[], mpig_free>;
void *                                     mpig_host_alloc_bytes(size_t bytes);
template <typename T> mpig_host_ptr<T>     mpig_host_alloc(size_t n) {
    return mpig_host_ptr<T>(static_cast<T *>(mpig_host_alloc_bytes(n * sizeof(T))));
}

// LSH tables of one KV head over the n middle keys, compact: keys are split into chunks of 2^chunk_bits and a table
// lists each chunk's keys as uint16 indices within the chunk (2 bytes per key and table instead of the CPU tables' 4,
// which is what lets the tables of a 128k cache sit beside its K and V in host memory).
//   mu [D], norm [n]: the centre the keys were hashed relative to and |k_i - mu|
//   offset [n_chunk][L][2^K + 1]: bucket b of table t in chunk c holds key[t][c * 2^chunk_bits + offset[c][t][b]
//                                  .. c * 2^chunk_bits + offset[c][t][b + 1])
//   key [L][n]: uint16 index within the chunk (ascending within a bucket)
struct mpig_host_tables {
    int                   K = 0, L = 0, chunk_bits = 16;
    int64_t               n = 0;
    std::vector<float>      mu, norm;
    mpig_host_ptr<uint32_t> offset;
    mpig_host_ptr<uint16_t> key;

    int64_t n_chunk() const { return (n + (int64_t(1) << chunk_bits) - 1) >> chunk_bits; }
    size_t  n_offset() const { return size_t(n_chunk()) * size_t(L) * ((size_t(1) << K) + 1); }
    size_t  bytes() const;
};

// Fills offset and key of `out` from the keys' codes codes_t [L][n] (mpig_hash with code_t, or any [L][n] array);
// out.K, L, chunk_bits (1..16) and n are set here; mu and norm are left to the caller. Tables split over the pool.
void mpig_host_tables_build(const uint16_t * codes_t, int64_t n, int K, int L, int chunk_bits, mpig_host_tables & out,
                            thread_pool & pool);

// One sparse layer of one sequence in host memory: the middle keys are cache positions begin .. begin + n - 1.
// k, v [n_head_kv][n][D] bf16, owned here (allocated uninitialised by alloc(): the caller fills them, from pool
// threads for large caches so that the pages are touched in parallel).
struct mpig_host_layer {
    int                           n_head_kv = 0, D = 0;
    int64_t                       begin = 0, n = 0;
    mpig_host_ptr<bf16_t>         k, v;
    std::vector<mpig_host_tables> heads; // [n_head_kv]

    void           alloc(int n_head_kv, int D, int64_t begin, int64_t n);
    const bf16_t * k_row(int h, int64_t i) const { return k.get() + (size_t(h) * size_t(n) + size_t(i)) * size_t(D); }
    const bf16_t * v_row(int h, int64_t i) const { return v.get() + (size_t(h) * size_t(n) + size_t(i)) * size_t(D); }
};

// Scratch of one thread (collision counters or bitmaps, hit lists, accumulators) and its counters.
struct mpig_host_scratch {
    std::vector<uint16_t> cnt;
    std::vector<uint64_t> once, twice; // collision bitmaps of one chunk (min_hits <= 2), zero between uses
    std::vector<uint32_t> touched, hits;
    std::vector<float>    acc;
    int64_t               walked = 0, sampled = 0; // bucket entries walked, keys sampled (added up over calls)
    uint64_t              tsc_walk = 0, tsc_rows = 0; // time stamp counter ticks in the walk and over the rows
};

// The sampled part of query head h (KV head h / (n_head / n_head_kv)): q [D] bf16, codes [L] (the GPU's codes of q),
// scores z_i = scale q.k_i + logw(cos(q, k_i - mu)) over the sampled middle keys i; o [D] = sum softmax(z)_i v_i,
// *lse = ln sum exp(z_i); no key sampled: o = 0, lse = -inf. sampled (optional): the sampled cache positions,
// ascending. REQUIRES: D a multiple of 8, at most 256; the layer's tables built with the codes' K and L.
void mpig_host_attend(const mpig_host_layer & ly, int hk, const bf16_t * q, const uint16_t * codes, float scale,
                      int min_hits, const lsh_log_weight & logw, mpig_host_scratch & sc, float * o, float * lse,
                      std::vector<int32_t> * sampled = nullptr);

// All (sequence, query head) pairs of one layer: layers[s] is sequence s's host layer; q [n_seq][n_head][D] bf16,
// codes [n_seq][n_head][L]; o [n_seq][n_head][D] f32, lse [n_seq][n_head]. Pairs are spread over the pool's threads,
// scratch [pool.n_threads()].
void mpig_host_attend_batch(const mpig_host_layer * const * layers, int n_seq, int n_head, const bf16_t * q,
                            const uint16_t * codes, float scale, int min_hits, const lsh_log_weight & logw,
                            std::vector<mpig_host_scratch> & scratch, float * o, float * lse, thread_pool & pool);

} // namespace lc::cuda
