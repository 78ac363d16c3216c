// The attention runner of a context (see attention.h).
#include "attn/attention.h"

#include <chrono>
#include <cmath>
#include <fstream>

#include "attn/attn-dense.h"
#include "attn/attn-sparse-decode.h"
#include "attn/attn-sparse-prefill.h"
#include "attn/minference/index.h"
#include "calibrate/sidecar.h"
#include "core/log.h"
#include "model/forward.h"
#include "model/model.h"

namespace lc {

namespace {

head_pattern method_pattern(prefill_method m) {
    switch (m) {
    case prefill_method::A_SHAPE:
        return head_pattern::A_SHAPE;
    case prefill_method::BLOCK:
        return head_pattern::BLOCK;
    case prefill_method::DENSE:
        return head_pattern::DENSE;
    case prefill_method::VSLASH:
    case prefill_method::MINFERENCE:
    case prefill_method::ORACLE:
        break;
    }
    return head_pattern::VSLASH;
}

int64_t ceil_mul(double x, int64_t n) {
    return int64_t(std::ceil(x * double(n)));
}

} // namespace

head_budget head_budget_effective(const head_budget & hb, const prefill_budget & b, int64_t n_keys) {
    head_budget r = hb;
    if (b.mode == prefill_budget::kind::SCALE) {
        r.a = int64_t(std::ceil(double(hb.a) * b.value));
        r.b = int64_t(std::ceil(double(hb.b) * b.value));
        return r;
    }
    switch (hb.pattern) {
    case head_pattern::DENSE:
        break;
    case head_pattern::A_SHAPE:
    case head_pattern::VSLASH:
        r.a = r.b = ceil_mul(b.value, n_keys);
        break;
    case head_pattern::BLOCK:
        r.a = ceil_mul(b.value, (n_keys + kv_page_tokens - 1) / kv_page_tokens);
        break;
    }
    return r;
}

result<minference_config> prefill_heads_for(const model & m, const attn_config & c) {
    const model_hparams & hp    = m.hparams();
    minference_config     heads = minference_config_uniform(hp.n_layer, hp.n_head, method_pattern(c.prefill));
    if (c.prefill != prefill_method::MINFERENCE) return heads;
    std::string path = c.sidecar;
    if (path == "auto") {
        path = sidecar_path_for(m.file().path());
        if (!std::ifstream(path).good()) path.clear();
    } else if (path == "none") {
        path.clear();
    }
    if (!path.empty()) {
        LC_ASSIGN_OR_RETURN(sidecar sc, sidecar_read(path, hp.n_layer, hp.n_head));
        if (sc.minference)
            heads = sc.minference->config;
        else
            LC_LOG_W("minference: sidecar %s has no MInference section; using the defaults", path.c_str());
    }
    LC_LOG_I("minference: head patterns from %s", heads.source.c_str());
    return heads;
}

result<std::unique_ptr<attention>> attention::create(const model & m, const attn_config & c) {
    if (c.prefill == prefill_method::ORACLE &&
        (c.budget.mode != prefill_budget::kind::FRACTION || c.budget.value >= 1.0))
        return error(status_code::INVALID_ARGUMENT,
                     "--prefill oracle keeps a share of each block's keys: give it --prefill-budget P%% below 100%%");
    std::unique_ptr<attention> a(new attention(c));
    LC_ASSIGN_OR_RETURN(a->heads_, prefill_heads_for(m, c));
    LC_ASSIGN_OR_RETURN(a->decode_, decode_method_create(m, c));
    return a;
}

bool attention::sparse_active(int64_t n_q) const {
    return cfg_.prefill != prefill_method::DENSE && n_q > 1 && prompt_end_ >= cfg_.sparse_min_len;
}

void attention::build_plan(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                           float scale, prefill_plan & plan, thread_pool & pool) {
    if (cfg_.prefill == prefill_method::ORACLE) {
        plan.reset(n_q, pos0, n_head);
        pool.run([&](int ith, int nth) {
            thread_local std::vector<float>   mass, slash, scratch;
            thread_local std::vector<int32_t> cols;
            for (int h = ith; h < n_head; h += nth)
                oracle_plan_head(q, n_q, pos0, n_head, h, kv, scale, cfg_.budget.value, plan, mass, slash, scratch,
                                 cols);
        });
        return;
    }
    prefill_plan_build(heads_, cfg_.budget, il, q, n_q, pos0, n_head, kv, scale, plan, pool);
}

void prefill_plan_build(const minference_config & heads, const prefill_budget & budget, int il, const float * q,
                        int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale, prefill_plan & plan,
                        thread_pool & pool) {
    plan.reset(n_q, pos0, n_head);
    const int64_t N = pos0 + n_q;
    pool.run([&](int ith, int nth) {
        thread_local std::vector<float>                vert, slash, scratch;
        thread_local std::vector<int32_t>              cols, offs;
        thread_local std::vector<std::vector<int32_t>> blocks;
        for (int h = ith; h < n_head; h += nth) {
            const head_budget hb = head_budget_effective(heads.at(il, h), budget, N);
            switch (hb.pattern) {
            case head_pattern::DENSE:
                prefill_plan_full_head(plan, h);
                break;
            case head_pattern::A_SHAPE:
                a_shape_plan_head(hb.a, hb.b, plan, h);
                break;
            case head_pattern::VSLASH:
                vslash_estimate(q, n_q, pos0, n_head, h, kv, scale, vert, slash, scratch);
                vslash_select(vert, slash, N, hb.a, hb.b, cols, offs);
                vslash_plan_head(cols, offs, plan, h);
                break;
            case head_pattern::BLOCK:
                block_estimate(q, n_q, pos0, n_head, h, kv, hb.a, blocks, scratch);
                block_plan_head(blocks, plan, h);
                break;
            }
        }
    });
}

void attention::run(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv_all, float scale,
                    float * o, thread_pool & pool, int64_t window, forward_timings * t) {
    // The cache may hold stale tokens past this call (after a truncation): they are not part of the sequence.
    kv_view kv = kv_all;
    kv.n_kv    = pos0 + n_q;
    if (n_q == 1 && window == attn_window_none) {
        run_decode(il, q, pos0, n_head, kv, scale, o, pool, t);
        return;
    }
    const bool counted = window == attn_window_none && n_q > 1;
    run_prefill(il, q, n_q, pos0, n_head, kv, scale, o, pool, window, t, counted);
    // The prompt is in this layer's cache: the decode method may take in its keys now.
    if (counted && decode_ && last_chunk_ && decode_->sparse_layer(il)) decode_->prepare(il, kv, pool);
}

void attention::add_stats(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                          float scale, thread_pool & pool, forward_timings * t) {
    int64_t stride = 0;
    float * buf    = stats_->colsum(il, kv.n_kv, &stride);
    if (!buf) return;
    const auto t0 = std::chrono::steady_clock::now();
    attn_colsum(q, n_q, pos0, n_head, kv, scale, lse_.data(), false, buf, stride, pool);
    if (t) t->attn_stats_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void attention::run_prefill(int il, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                            float scale, float * o, thread_pool & pool, int64_t window, forward_timings * t,
                            bool counted) {
    // Column sums for a KV policy use the lse of the attention that ran (under a sparse plan, keys outside it add
    // the mass the plan left out).
    float * lse = nullptr;
    if (stats_ && window == attn_window_none) {
        lse_.resize(size_t(n_q) * size_t(n_head));
        lse = lse_.data();
    }
    if (counted && sparse_active(n_q)) {
        const auto t0 = std::chrono::steady_clock::now();
        build_plan(il, q, n_q, pos0, n_head, kv, scale, plan_, pool);
        if (t) t->attn_index_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        attn_sparse_prefill(plan_, q, kv, scale, o, lse, pool);
        if (lse) add_stats(il, q, n_q, pos0, n_head, kv, scale, pool, t);
        if (t) {
            const prefill_plan_pairs pp = prefill_plan_count(plan_);
            t->attn_pairs_causal += pp.causal;
            t->attn_pairs_computed += pp.computed;
        }
        if (observer_) observer_->on_attention(il, q, n_q, pos0, n_head, kv, scale, window, &plan_, o, pool);
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    attn_dense(q, n_q, pos0, n_head, kv, scale, o, lse, pool, window);
    if (lse) add_stats(il, q, n_q, pos0, n_head, kv, scale, pool, t);
    if (window != attn_window_none && t)
        t->attn_swa_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (counted && t) {
        const int64_t c = prefill_causal_pairs(n_q, pos0) * n_head;
        t->attn_pairs_causal += c;
        t->attn_pairs_computed += c;
    }
    if (observer_) observer_->on_attention(il, q, n_q, pos0, n_head, kv, scale, window, nullptr, o, pool);
}

void attention::run_decode(int il, const float * q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                           float * o, thread_pool & pool, forward_timings * t) {
    const int64_t dense_bytes = kv.n_kv * kv.n_head_kv * 2 * kv.head_dim * int64_t(sizeof(fp16_t));
    if (t) {
        t->decode_calls += 1;
        t->decode_keys_total += kv.n_kv * n_head;
    }
    float * lse = nullptr;
    if (stats_) {
        lse_.resize(size_t(n_head));
        lse = lse_.data();
    }
    if (!decode_ || !decode_->sparse_layer(il)) {
        attn_dense(q, 1, pos0, n_head, kv, scale, o, lse, pool);
        if (t) {
            t->decode_keys_touched += kv.n_kv * n_head;
            t->decode_bytes_attn += dense_bytes;
        }
    } else {
        const auto t0    = std::chrono::steady_clock::now();
        int64_t    bytes = 0;
        decode_->plan(il, q, n_head, kv, scale, dplan_, pool, &bytes);
        const auto t1 = std::chrono::steady_clock::now();
        if (observer_) observer_->on_decode_plan(il, dplan_);
        attn_sparse_decode(dplan_, q, kv, scale, o, lse, pool);
        if (t) {
            t->decode_select_s += std::chrono::duration<double>(t1 - t0).count();
            // An entry shared by a group of query heads is read once for all of them.
            int64_t keys = 0;
            for (const decode_head_plan & h : dplan_.heads) keys += decode_head_keys(h);
            t->decode_keys_touched += keys * dplan_.group;
            t->decode_bytes_select += bytes;
            t->decode_bytes_attn += keys * 2 * kv.head_dim * int64_t(sizeof(fp16_t));
            t->decode_sparse_calls += 1;
        }
    }
    if (lse) add_stats(il, q, 1, pos0, n_head, kv, scale, pool, t);
    if (observer_) observer_->on_attention(il, q, 1, pos0, n_head, kv, scale, attn_window_none, nullptr, o, pool);
}

} // namespace lc
