// Sparse prefill plans (ARCHITECTURE.md sec. 2): for one forward call of one sequence, per (query head, block of
// 64 consecutive queries), the keys those queries attend: a list of key ranges and a list of single key columns.
// Every prefill pattern is a plan: dense is one range [0, last query] per block, A-shape two ranges, block-sparse
// ranges aligned to 64 keys, vertical-slash ranges along its diagonals plus its vertical columns.
// The kernel (attn-sparse-prefill.h) applies causality on top: query at position p never sees a key t > p.
#pragma once

#include <cstdint>
#include <vector>

namespace lc {

constexpr int prefill_qblock = 64; // queries per plan block (BLOCK_M)

struct key_range {
    int32_t begin = 0; // first key position
    int32_t end   = 0; // one past the last
};

// The keys of one query head: item b covers queries [64 b, 64 b + 64) of the call (positions pos0 + ...).
// ranges[range_off[b] .. range_off[b+1]) are sorted, non-empty, disjoint and not adjacent (merged);
// cols[col_off[b] .. col_off[b+1]) are sorted, distinct and lie in no range of the item.
struct prefill_head_plan {
    std::vector<int64_t>   range_off; // [n_qblk + 1]
    std::vector<key_range> ranges;
    std::vector<int64_t>   col_off; // [n_qblk + 1]
    std::vector<int32_t>   cols;

    void clear() {
        range_off.assign(1, 0);
        col_off.assign(1, 0);
        ranges.clear();
        cols.clear();
    }
    // Appends a range to the item being built (the items are built in order, see end_item()). Ranges must come
    // sorted by begin; overlapping or adjacent ranges are merged here.
    void add_range(int64_t begin, int64_t end);
    void add_col(int64_t t) { cols.push_back(int32_t(t)); } // sorted, outside the ranges: the caller ensures
    void end_item() {
        range_off.push_back(int64_t(ranges.size()));
        col_off.push_back(int64_t(cols.size()));
    }
};

struct prefill_plan {
    int64_t                        n_q    = 0; // queries of the call
    int64_t                        pos0   = 0; // position of query 0
    int                            n_head = 0;
    std::vector<prefill_head_plan> heads; // [n_head]

    int64_t n_qblk() const { return (n_q + prefill_qblock - 1) / prefill_qblock; }
    // Positions of the first and last query of block b.
    int64_t q_first(int64_t b) const { return pos0 + b * prefill_qblock; }
    int64_t q_last(int64_t b) const {
        const int64_t e = (b + 1) * prefill_qblock < n_q ? (b + 1) * prefill_qblock : n_q;
        return pos0 + e - 1;
    }
    void reset(int64_t n_q_, int64_t pos0_, int n_head_);
};

// Dense causal attention as a plan: each block sees keys [0, its last query].
void prefill_plan_full(prefill_plan & plan, int64_t n_q, int64_t pos0, int n_head);
// The same for head h alone (REQUIRES: plan.reset() done).
void prefill_plan_full_head(prefill_plan & plan, int h);

// Counts (query, key) pairs: causal = all pairs with key <= query; computed = the causal pairs the plan covers.
struct prefill_plan_pairs {
    int64_t causal   = 0;
    int64_t computed = 0;
};
prefill_plan_pairs prefill_plan_count(const prefill_plan & plan);
// Causal pairs of n_q queries at positions pos0.. with every earlier key visible.
int64_t prefill_causal_pairs(int64_t n_q, int64_t pos0);

// Checks the invariants above and that no key lies past the item's last query; returns false on the first
// violation (for tests and debug checks).
bool prefill_plan_valid(const prefill_plan & plan);

} // namespace lc
