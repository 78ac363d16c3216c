// Prefill plan construction helpers and pair counting (see prefill-plan.h).
#include "attn/prefill-plan.h"

#include <algorithm>

namespace lc {

void prefill_head_plan::add_range(int64_t begin, int64_t end) {
    if (end <= begin) return;
    const int64_t first = range_off.back(); // first range of the current item
    if (int64_t(ranges.size()) > first && ranges.back().end >= begin) {
        ranges.back().end = int32_t(std::max<int64_t>(ranges.back().end, end));
        return;
    }
    ranges.push_back({int32_t(begin), int32_t(end)});
}

void prefill_plan::reset(int64_t n_q_, int64_t pos0_, int n_head_) {
    n_q    = n_q_;
    pos0   = pos0_;
    n_head = n_head_;
    heads.resize(size_t(n_head));
    for (prefill_head_plan & h : heads) h.clear();
}

void prefill_plan_full_head(prefill_plan & plan, int h) {
    prefill_head_plan & hp = plan.heads[size_t(h)];
    hp.clear();
    for (int64_t b = 0; b < plan.n_qblk(); ++b) {
        hp.add_range(0, plan.q_last(b) + 1);
        hp.end_item();
    }
}

void prefill_plan_full(prefill_plan & plan, int64_t n_q, int64_t pos0, int n_head) {
    plan.reset(n_q, pos0, n_head);
    for (int h = 0; h < n_head; ++h) prefill_plan_full_head(plan, h);
}

int64_t prefill_causal_pairs(int64_t n_q, int64_t pos0) {
    // sum over i < n_q of (pos0 + i + 1)
    return n_q * (pos0 + 1) + n_q * (n_q - 1) / 2;
}

namespace {

// Pairs (p, t) with p in [p0, p1], t in [b, e), t <= p.
int64_t range_pairs(int64_t p0, int64_t p1, int64_t b, int64_t e) {
    int64_t n = 0;
    // Queries p >= e - 1 see the whole range; queries in [b, e - 1) see t in [b, p].
    const int64_t full_from = std::max(p0, e - 1);
    if (full_from <= p1) n += (p1 - full_from + 1) * (e - b);
    const int64_t lo = std::max(p0, b), hi = std::min(p1, e - 2);
    if (lo <= hi) n += (lo - b + 1 + hi - b + 1) * (hi - lo + 1) / 2;
    return n;
}

} // namespace

prefill_plan_pairs prefill_plan_count(const prefill_plan & plan) {
    prefill_plan_pairs r;
    r.causal = prefill_causal_pairs(plan.n_q, plan.pos0) * plan.n_head;
    for (const prefill_head_plan & h : plan.heads)
        for (int64_t b = 0; b < plan.n_qblk(); ++b) {
            const int64_t p0 = plan.q_first(b), p1 = plan.q_last(b);
            for (int64_t i = h.range_off[b]; i < h.range_off[b + 1]; ++i)
                r.computed += range_pairs(p0, p1, h.ranges[i].begin, h.ranges[i].end);
            for (int64_t i = h.col_off[b]; i < h.col_off[b + 1]; ++i)
                r.computed += std::max<int64_t>(0, p1 - std::max<int64_t>(p0, h.cols[i]) + 1);
        }
    return r;
}

bool prefill_plan_valid(const prefill_plan & plan) {
    if (int(plan.heads.size()) != plan.n_head) return false;
    const int64_t nb = plan.n_qblk();
    for (const prefill_head_plan & h : plan.heads) {
        if (int64_t(h.range_off.size()) != nb + 1 || int64_t(h.col_off.size()) != nb + 1) return false;
        if (h.range_off[0] != 0 || h.col_off[0] != 0 || h.range_off[nb] != int64_t(h.ranges.size()) ||
            h.col_off[nb] != int64_t(h.cols.size()))
            return false;
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t last = plan.q_last(b);
            if (h.range_off[b] > h.range_off[b + 1] || h.col_off[b] > h.col_off[b + 1]) return false;
            int64_t prev_end = -2;
            for (int64_t i = h.range_off[b]; i < h.range_off[b + 1]; ++i) {
                const key_range & r = h.ranges[i];
                if (r.begin < 0 || r.end <= r.begin || r.begin <= prev_end || r.end > last + 1) return false;
                prev_end = r.end;
            }
            int64_t prev = -1;
            int64_t ri   = h.range_off[b];
            for (int64_t i = h.col_off[b]; i < h.col_off[b + 1]; ++i) {
                const int64_t c = h.cols[i];
                if (c <= prev || c > last || c < 0) return false;
                while (ri < h.range_off[b + 1] && h.ranges[ri].end <= c) ++ri;
                if (ri < h.range_off[b + 1] && h.ranges[ri].begin <= c) return false;
                prev = c;
            }
        }
    }
    return true;
}

} // namespace lc
