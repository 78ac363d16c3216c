// Per-layer attention-mass recall and output error against dense attention on the same inputs.
#include "eval/attn-fidelity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "attn/attn-dense.h"
#include "attn/attn-stats.h"
#include "core/log.h"

namespace lc::eval {

using json = nlohmann::json;

double layer_fidelity::recall_mean() const {
    return n_row_heads > 0 ? recall_sum / double(n_row_heads) : std::nan("");
}
double layer_fidelity::rel_err() const {
    return n_rows > 0 ? (ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : 0.0) : std::nan("");
}
double layer_fidelity::decode_rel_err() const {
    return n_decode > 0 ? (dec_ref_sq > 0 ? std::sqrt(dec_err_sq / dec_ref_sq) : 0.0) : std::nan("");
}

double layer_fidelity::decode_recall() const {
    return n_decode > 0 ? dec_recall_sum / double(n_decode) : std::nan("");
}

double plan_item_mass(const prefill_plan & plan, int h, int64_t b, const float * colsum) {
    const prefill_head_plan & hp = plan.heads[size_t(h)];
    double                    s  = 0;
    for (int64_t x = hp.range_off[size_t(b)]; x < hp.range_off[size_t(b) + 1]; ++x)
        for (int64_t k = hp.ranges[size_t(x)].begin; k < hp.ranges[size_t(x)].end; ++k) s += colsum[k];
    for (int64_t x = hp.col_off[size_t(b)]; x < hp.col_off[size_t(b) + 1]; ++x) s += colsum[hp.cols[size_t(x)]];
    return s;
}

fidelity_observer::fidelity_observer(int n_layer, int stride)
    : stride_(std::max(1, stride)), layers_(size_t(n_layer)), seen_(size_t(n_layer), 0) {
    clear();
}

void fidelity_observer::clear() {
    for (size_t il = 0; il < layers_.size(); ++il) {
        layers_[il]    = layer_fidelity{};
        layers_[il].il = int(il);
    }
    std::fill(seen_.begin(), seen_.end(), 0);
    seconds_ = 0;
}

std::vector<layer_fidelity> fidelity_observer::layers() const {
    std::vector<layer_fidelity> r;
    for (size_t il = 0; il < layers_.size(); ++il)
        if (seen_[il]) r.push_back(layers_[il]);
    return r;
}

namespace {
void add_sq(const float * o, const float * ref, size_t n, double & err_sq, double & ref_sq) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; ++i) {
        const double d = double(o[i]) - double(ref[i]);
        e += d * d;
        r += double(ref[i]) * double(ref[i]);
    }
    err_sq += e;
    ref_sq += r;
}
} // namespace

void fidelity_observer::on_attention(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                                     float scale, int64_t window, const prefill_plan * plan, const float * o,
                                     thread_pool & pool) {
    if (window != attn_window_none) return;
    LC_ASSERT(il >= 0 && size_t(il) < layers_.size(), "fidelity: layer %d of %zu", il, layers_.size());
    const auto       t0  = std::chrono::steady_clock::now();
    layer_fidelity & L   = layers_[size_t(il)];
    const size_t     row = size_t(n_head) * size_t(kv.head_dim);
    seen_[size_t(il)]    = 1;
    if (n_q == 1) {
        o_dense_.resize(row);
        lse_.resize(size_t(n_head));
        attn_dense(q, 1, pos0, n_head, kv, scale, o_dense_.data(), lse_.data(), pool);
        add_sq(o, o_dense_.data(), row, L.dec_err_sq, L.dec_ref_sq);
        L.dec_recall_sum += dplan_ && dplan_layer_ == il ? decode_plan_mass(*dplan_, q, kv, scale, lse_.data()) : 1.0;
        dplan_ = nullptr;
        ++L.n_decode;
    } else {
        if (plan)
            LC_ASSERT(plan->n_q == n_q && plan->pos0 == pos0 && plan->n_head == n_head,
                      "fidelity: plan of %lld queries at %lld for a call of %lld at %lld", (long long)plan->n_q,
                      (long long)plan->pos0, (long long)n_q, (long long)pos0);
        const int64_t n_blk = (n_q + prefill_qblock - 1) / prefill_qblock;
        for (int64_t b = 0; b < n_blk; ++b) {
            if ((pos0 / prefill_qblock + b) % stride_ != stride_ - 1) continue;
            const int64_t i0 = b * prefill_qblock;
            const int64_t nb = std::min<int64_t>(prefill_qblock, n_q - i0);
            const int64_t p0 = pos0 + i0;
            kv_view       kb = kv; // the block's queries see keys up to its last one
            kb.n_kv          = p0 + nb;
            const float * qb = q + size_t(i0) * row;
            o_dense_.resize(size_t(nb) * row);
            lse_.resize(size_t(nb) * size_t(n_head));
            attn_dense(qb, nb, p0, n_head, kb, scale, o_dense_.data(), lse_.data(), pool);
            add_sq(o + size_t(i0) * row, o_dense_.data(), size_t(nb) * row, L.err_sq, L.ref_sq);
            L.n_rows += nb;
            L.n_row_heads += nb * n_head;
            if (!plan) { // a dense call computed every pair
                L.recall_sum += double(nb * n_head);
                continue;
            }
            colsum_.assign(size_t(n_head) * size_t(kb.n_kv), 0.0f);
            attn_colsum(qb, nb, p0, n_head, kb, scale, lse_.data(), false, colsum_.data(), kb.n_kv, pool);
            for (int h = 0; h < n_head; ++h) {
                const double m = plan_item_mass(*plan, h, b, colsum_.data() + size_t(h) * size_t(kb.n_kv));
                L.recall_sum += m;
                L.recall_min = std::min(L.recall_min, m / double(nb));
            }
        }
    }
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double decode_plan_mass(const decode_plan & plan, const float * q, const kv_view & kv, float scale,
                        const float * lse) {
    const int n_head = plan.n_head, D = kv.head_dim, G = n_head / kv.n_head_kv;
    double    total  = 0;
    for (int h = 0; h < n_head; ++h) {
        const decode_head_plan & e  = plan.heads[size_t(h / plan.group)];
        const float *            qh = q + size_t(h) * size_t(D);
        auto mass = [&](int64_t j) {
            const fp16_t * k = kv.k_row(j, h / G);
            double         d = 0;
            for (int x = 0; x < D; ++x) d += double(qh[x]) * double(fp16_to_fp32(k[x]));
            return std::exp(double(scale) * d - double(lse[h]));
        };
        double m = 0;
        for (const key_range & r : e.dense)
            for (int64_t j = r.begin; j < r.end; ++j) m += mass(j);
        for (int32_t j : e.idx) m += mass(j);
        total += m;
    }
    return n_head > 0 ? total / n_head : 1.0;
}

json layer_fidelity_json(const std::vector<layer_fidelity> & layers) {
    json   out    = json::object();
    json   arr    = json::array();
    double rc_sum = 0, err_sum = 0, dec_sum = 0, dec_rc_sum = 0;
    int    n = 0, n_dec = 0;
    int    rc_worst = -1, err_worst = -1;
    double rc_w = 0, err_w = 0;
    for (const layer_fidelity & L : layers) {
        json e = {{"layer", L.il}, {"rows", L.n_rows}};
        if (L.n_rows > 0) {
            e["recall_mean"] = L.recall_mean();
            e["recall_min"]  = L.recall_min;
            e["rel_err"]     = L.rel_err();
            rc_sum += L.recall_mean();
            err_sum += L.rel_err();
            ++n;
            if (rc_worst < 0 || L.recall_mean() < rc_w) rc_worst = L.il, rc_w = L.recall_mean();
            if (err_worst < 0 || L.rel_err() > err_w) err_worst = L.il, err_w = L.rel_err();
        }
        if (L.n_decode > 0) {
            e["decode_steps"]   = L.n_decode;
            e["decode_rel_err"] = L.decode_rel_err();
            e["decode_recall"]  = L.decode_recall();
            dec_sum += L.decode_rel_err();
            dec_rc_sum += L.decode_recall();
            ++n_dec;
        }
        if (L.n_rows > 0 || L.n_decode > 0) arr.push_back(e);
    }
    if (arr.empty()) return out;
    out["layers"] = arr;
    if (n > 0) {
        out["attn_recall_mean"]   = rc_sum / n;
        out["attn_rel_err_mean"]  = err_sum / n;
        out["attn_recall_worst"]  = {{"layer", rc_worst}, {"value", rc_w}};
        out["attn_rel_err_worst"] = {{"layer", err_worst}, {"value", err_w}};
    }
    if (n_dec > 0) {
        out["attn_decode_rel_err_mean"] = dec_sum / n_dec;
        out["attn_decode_recall_mean"]  = dec_rc_sum / n_dec;
    }
    return out;
}

} // namespace lc::eval
