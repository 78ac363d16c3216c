// Decode plans and their scalar reference executor (see decode-plan.h).
#include "attn/decode/decode-plan.h"

#include <cmath>

#include "core/log.h"

namespace lc {

void decode_plan_full(decode_plan & plan, int n_head, int64_t n_kv) {
    plan.n_head = n_head;
    plan.group  = 1;
    plan.heads.assign(size_t(n_head), {});
    for (decode_head_plan & h : plan.heads) h.dense.push_back({0, int32_t(n_kv)});
}

void attn_decode_plan_ref(const decode_plan & plan, const float * q, const kv_view & kv, float scale, float * o,
                          float * lse) {
    const int D       = kv.head_dim;
    const int n_group = plan.n_head / kv.n_head_kv;
    LC_ASSERT(plan.group >= 1 && n_group % plan.group == 0 && int(plan.heads.size()) * plan.group == plan.n_head,
              "decode plan: %zu entries of group %d for %d query heads (%d per KV head)", plan.heads.size(), plan.group,
              plan.n_head, n_group);
    for (int h = 0; h < plan.n_head; ++h) {
        const decode_head_plan & hp = plan.heads[size_t(h / plan.group)];
        const int                hk = h / n_group;
        LC_ASSERT(hp.logw.empty() || hp.logw.size() == hp.idx.size(), "decode plan: %zu log-weights for %zu indices",
                  hp.logw.size(), hp.idx.size());
        std::vector<int64_t> keys;
        std::vector<double>  z;
        const float *        qh  = q + size_t(h) * D;
        auto                 add = [&](int64_t t, double w) {
            LC_ASSERT(t >= 0 && t < kv.n_kv, "decode plan: key %lld outside the cache (%lld)", (long long)t,
                                      (long long)kv.n_kv);
            const fp16_t * kr  = kv.k_row(t, hk);
            double         dot = 0.0;
            for (int d = 0; d < D; ++d) dot += double(qh[d]) * double(fp16_to_fp32(kr[d]));
            keys.push_back(t);
            z.push_back(dot * scale + w);
        };
        for (const key_range & r : hp.dense)
            for (int64_t t = r.begin; t < r.end; ++t) add(t, 0.0);
        for (size_t i = 0; i < hp.idx.size(); ++i) add(hp.idx[i], hp.logw.empty() ? 0.0 : double(hp.logw[i]));
        float * oh = o + size_t(h) * D;
        if (keys.empty()) {
            for (int d = 0; d < D; ++d) oh[d] = 0.0f;
            if (lse) lse[h] = -INFINITY;
            continue;
        }
        double m = -INFINITY;
        for (double x : z) m = std::fmax(m, x);
        double              sum = 0.0;
        std::vector<double> acc(size_t(D), 0.0);
        for (size_t i = 0; i < keys.size(); ++i) {
            const double   p  = std::exp(z[i] - m);
            const fp16_t * vr = kv.v_row(keys[i], hk);
            sum += p;
            for (int d = 0; d < D; ++d) acc[size_t(d)] += p * double(fp16_to_fp32(vr[d]));
        }
        for (int d = 0; d < D; ++d) oh[d] = float(acc[size_t(d)] / sum);
        if (lse) lse[h] = float(m + std::log(sum));
    }
}

} // namespace lc
