// Next-token agreement with dense attention over long documents.
#include "eval/fidelity.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/log.h"
#include "eval/attn-fidelity.h"
#include "runtime/sampling.h"

namespace lc::eval {

std::vector<int32_t> document_slice(const tokenizer & tok, const std::vector<int32_t> & body, int64_t n, int j) {
    const bool    bos = tok.add_bos() && tok.bos() >= 0;
    const int64_t m   = bos ? n - 1 : n;
    if (m <= 0 || int64_t(body.size()) < (int64_t(j) + 1) * m) return {};
    std::vector<int32_t> ids;
    if (bos) ids.push_back(tok.bos());
    ids.insert(ids.end(), body.begin() + int64_t(j) * m, body.begin() + (int64_t(j) + 1) * m);
    return ids;
}

status fidelity_run(const fidelity_params & p, const std::vector<int32_t> & body, eval_env & env, result_file & out) {
    LC_ASSERT(env.slots && env.slots->size() == 2, "fidelity needs a dense and a method slot");
    using clock           = std::chrono::steady_clock;
    context &     dense   = *(*env.slots)[0].ctx;
    context &     method  = *(*env.slots)[1].ctx;
    const int     n_vocab = env.mdl->hparams().n_vocab;
    const int64_t chunk   = std::max<int64_t>(1, env.chunk);

    int64_t total = 0, done = 0;
    for (int64_t L : p.lengths)
        for (int j = 0; j < p.docs; ++j) {
            ++total;
            if (out.has("L=" + std::to_string(L) + ",doc=" + std::to_string(j))) ++done;
        }
    progress prog("fidelity", total, done);
    // The method's attention calls are observed for the per-layer numbers; its time is taken out of the method's.
    fidelity_observer obs(env.mdl->hparams().n_layer, p.layer_sample);
    struct observer_guard {
        context & c;
        ~observer_guard() { c.attn().set_observer(nullptr); }
    } guard{method};
    if (p.layer_sample > 0) method.attn().set_observer(&obs);
    for (int64_t L : p.lengths) {
        for (int j = 0; j < p.docs; ++j) {
            const std::string key = "L=" + std::to_string(L) + ",doc=" + std::to_string(j);
            if (out.has(key)) continue;
            const std::vector<int32_t> ids = document_slice(*env.tok, body, L, j);
            if (ids.empty())
                return error(status_code::OUT_OF_RANGE,
                             "eval fidelity: the text has %zu tokens, too few for document %d of %lld tokens; use a "
                             "longer --file, fewer --docs or shorter --lengths",
                             body.size(), j, (long long)L);
            dense.clear();
            method.clear();
            dense.reset_timings();
            method.reset_timings();
            obs.clear();
            double              t_dense = 0, t_method = 0;
            std::vector<double> kl(size_t(L), 0.0);
            std::vector<char>   agree(size_t(L), 0);
            const int64_t tail   = std::min(p.decode_tail, L - 1);
            const int64_t n_pref = L - tail;
            auto          step   = [&](int64_t i, int64_t nb) -> status {
                const std::vector<int32_t> part(ids.begin() + i, ids.begin() + i + nb);
                auto                       t0 = clock::now();
                LC_RETURN_IF_ERROR(dense.decode(part, nb > 1));
                auto t1 = clock::now();
                const double obs_s = obs.seconds();
                LC_RETURN_IF_ERROR(method.decode(part, nb > 1, {}, nb == 1 || i + nb == n_pref));
                auto t2 = clock::now();
                t_dense += std::chrono::duration<double>(t1 - t0).count();
                t_method += std::chrono::duration<double>(t2 - t1).count() - (obs.seconds() - obs_s);
                for (int64_t k = 0; k < nb; ++k) {
                    const float * a      = nb > 1 ? dense.logits(k) : dense.logits();
                    const float * b      = nb > 1 ? method.logits(k) : method.logits();
                    kl[size_t(i + k)]    = logits_kl(a, b, n_vocab);
                    agree[size_t(i + k)] = sampling_argmax(a, n_vocab) == sampling_argmax(b, n_vocab);
                }
                return status::ok();
            };
            for (int64_t i = 0; i < n_pref; i += chunk) LC_RETURN_IF_ERROR(step(i, std::min(chunk, n_pref - i)));
            for (int64_t i = n_pref; i < L; ++i) LC_RETURN_IF_ERROR(step(i, 1));
            json    buckets = json::array();
            double  kl_sum = 0, kl_max = 0;
            int64_t n_agree = 0;
            for (int64_t s = 0; s < L; s += p.bucket) {
                const int64_t e  = std::min(L, s + p.bucket);
                double        bk = 0;
                int64_t       ba = 0;
                for (int64_t t = s; t < e; ++t) {
                    bk += kl[size_t(t)];
                    ba += agree[size_t(t)];
                }
                buckets.push_back({{"start", s},
                                   {"end", e},
                                   {"kl_mean", bk / double(e - s)},
                                   {"top1_agree", double(ba) / double(e - s)}});
                kl_sum += bk;
                n_agree += ba;
            }
            for (double v : kl) kl_max = std::max(kl_max, v);
            json rec = {{"key", key},
                        {"length", L},
                        {"doc", j},
                        {"prompt_sha256", token_ids_sha256(ids)},
                        {"kl_mean", kl_sum / double(L)},
                        {"kl_max", kl_max},
                        {"top1_agree", double(n_agree) / double(L)},
                        {"buckets", buckets},
                        {"runs", json::array()}};
            json rd = method_json((*env.slots)[0]), rm = method_json((*env.slots)[1]);
            rd["prefill_s"] = t_dense;
            rd["density"]   = dense.timings().density();
            rd["index_s"]   = dense.timings().attn_index_s;
            rm["prefill_s"] = t_method;
            rm["density"]   = method.timings().density();
            rm["index_s"]   = method.timings().attn_index_s;
            rm["kv_bytes"]      = method.kv_bytes_held(); // at the end of the document
            rm["kv_bytes_full"] = method.kv_bytes_full();
            rec["runs"]     = json::array({rd, rm});
            if (tail > 0) {
                // Position n_pref - 1 is the prefill's last logits; the decode steps score n_pref .. L-1.
                double  tk = 0;
                int64_t ta = 0;
                for (int64_t t = n_pref; t < L; ++t) {
                    tk += kl[size_t(t)];
                    ta += agree[size_t(t)];
                }
                rec["decode_tail"]       = tail;
                rec["decode_kl_mean"]    = tk / double(tail);
                rec["decode_top1_agree"] = double(ta) / double(tail);
                rm["decode_keys"]        = method.timings().decode_keys_fraction();
                rec["runs"]              = json::array({rd, rm});
            }
            if (p.layer_sample > 0) {
                const json lf = layer_fidelity_json(obs.layers());
                for (auto it = lf.begin(); it != lf.end(); ++it) rec[it.key()] = it.value();
                rec["layer_sample"] = p.layer_sample;
                rm["fidelity_s"]    = obs.seconds(); // observer time, not in prefill_s
                rec["runs"]         = json::array({rd, rm});
            }
            char summary[320];
            std::snprintf(summary, sizeof(summary), "KL %.3g, top-1 %.4f, density %.3f", kl_sum / double(L),
                          double(n_agree) / double(L), rm["density"].get<double>());
            if (tail > 0) {
                const size_t n = std::strlen(summary);
                std::snprintf(summary + n, sizeof(summary) - n, "; decode: KL %.3g, top-1 %.4f, keys %.3f",
                              rec["decode_kl_mean"].get<double>(), rec["decode_top1_agree"].get<double>(),
                              rm["decode_keys"].get<double>());
            }
            if (rec.contains("attn_recall_mean")) {
                const size_t n = std::strlen(summary);
                std::snprintf(summary + n, sizeof(summary) - n,
                              "; layers: recall %.4f (worst %.4f, layer %d), rel. error %.3g (worst %.3g, layer %d)",
                              rec["attn_recall_mean"].get<double>(), rec["attn_recall_worst"]["value"].get<double>(),
                              rec["attn_recall_worst"]["layer"].get<int>(), rec["attn_rel_err_mean"].get<double>(),
                              rec["attn_rel_err_worst"]["value"].get<double>(),
                              rec["attn_rel_err_worst"]["layer"].get<int>());
            }
            LC_RETURN_IF_ERROR(out.add(std::move(rec)));
            prog.step(key + ": " + summary);
        }
    }
    return status::ok();
}

} // namespace lc::eval
