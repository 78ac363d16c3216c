// Perplexity protocols A (single prefill pass), B (sliding window) and C (teacher-forced decode).
#include "eval/ppl.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "core/log.h"

namespace lc::eval {

namespace {
using clock = std::chrono::steady_clock;
double since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
}
json run_json(const method_slot & s, double nll_sum, int64_t n, double prefill_s, double decode_s) {
    json r         = method_json(s);
    r["nll_sum"]   = nll_sum;
    r["n_scored"]  = n;
    r["ppl"]       = n > 0 ? std::exp(nll_sum / double(n)) : 0.0;
    r["density"]   = s.ctx->timings().density();
    r["index_s"]   = s.ctx->timings().attn_index_s;
    r["prefill_s"] = prefill_s;
    r["decode_s"]  = decode_s;
    return r;
}
} // namespace

const char * ppl_protocol_name(ppl_protocol p) {
    switch (p) {
    case ppl_protocol::PREFILL:
        return "prefill";
    case ppl_protocol::SLIDING:
        return "sliding";
    case ppl_protocol::DECODE:
        return "decode";
    }
    return "?";
}

result<ppl_protocol> ppl_protocol_parse(const std::string & s) {
    if (s == "prefill" || s == "A") return ppl_protocol::PREFILL;
    if (s == "sliding" || s == "B") return ppl_protocol::SLIDING;
    if (s == "decode" || s == "C") return ppl_protocol::DECODE;
    return error(status_code::INVALID_ARGUMENT,
                 "--protocol '%s' is not one of prefill (A), sliding (B), "
                 "decode (C)",
                 s.c_str());
}

std::vector<ppl_window> ppl_windows(int64_t n, int64_t window, int64_t stride) {
    std::vector<ppl_window> out;
    int64_t                 prev_end = 0;
    for (int64_t begin = 0; prev_end < n; begin += stride) {
        ppl_window w;
        w.begin      = begin;
        w.end        = std::min(begin + window, n);
        w.score_from = std::max<int64_t>(1, prev_end - begin);
        prev_end     = w.end;
        out.push_back(w);
    }
    return out;
}

status nll_prefill(context & c, const std::vector<int32_t> & ids, int64_t chunk, int64_t score_from, double * nll_sum,
                   int64_t * n_scored, double * secs) {
    const int     n_vocab = c.get_model().hparams().n_vocab;
    const int64_t n       = int64_t(ids.size());
    score_from            = std::max<int64_t>(1, score_from);
    c.clear();
    c.reset_timings();
    for (int64_t i = 0; i < n; i += chunk) {
        const int64_t              nb = std::min(chunk, n - i);
        const std::vector<int32_t> part(ids.begin() + i, ids.begin() + i + nb);
        const auto                 t0 = clock::now();
        LC_RETURN_IF_ERROR(c.decode(part, true));
        *secs += since(t0);
        // Logits of position i + k predict token i + k + 1.
        for (int64_t k = 0; k < nb; ++k) {
            const int64_t t = i + k + 1;
            if (t >= n || t < score_from) continue;
            *nll_sum += token_nll(c.logits(k), n_vocab, ids[size_t(t)]);
            ++*n_scored;
        }
    }
    return status::ok();
}

status ppl_run(const ppl_params & p, const std::vector<int32_t> & body, eval_env & env, result_file & out) {
    const int64_t chunk = std::max<int64_t>(1, env.chunk);
    struct unit {
        std::string          key;
        json                 fields;
        std::vector<int32_t> ids;
        int64_t              score_from = 1;
    };
    // The work list: documents (A, C) or windows (B).
    std::vector<unit> units;
    auto              too_short = [&](int64_t need) {
        return error(status_code::OUT_OF_RANGE,
                                  "eval ppl: the text has %zu tokens but this protocol needs %lld; use a longer --file or smaller "
                                               "settings",
                                  body.size(), (long long)need);
    };
    if (p.protocol == ppl_protocol::PREFILL) {
        for (int64_t L : p.lengths)
            for (int j = 0; j < p.docs; ++j) {
                unit u;
                u.key    = "A:L=" + std::to_string(L) + ",doc=" + std::to_string(j);
                u.fields = {{"length", L}, {"doc", j}, {"last", p.last}};
                u.ids    = document_slice(*env.tok, body, L, j);
                if (u.ids.empty()) return too_short((int64_t(j) + 1) * L);
                u.score_from = p.last > 0 ? std::max<int64_t>(1, L - p.last) : 1;
                units.push_back(std::move(u));
            }
    } else if (p.protocol == ppl_protocol::SLIDING) {
        const std::vector<int32_t> stream = document_slice(*env.tok, body, p.n_tokens, 0);
        if (stream.empty()) return too_short(p.n_tokens);
        int64_t w = 0;
        for (const ppl_window & win : ppl_windows(p.n_tokens, p.window, p.stride)) {
            const int64_t begin = win.begin, end = win.end;
            unit          u;
            u.key = "B:W=" + std::to_string(p.window) + ",S=" + std::to_string(p.stride) +
                    ",N=" + std::to_string(p.n_tokens) + ",win=" + std::to_string(w);
            u.fields = {{"window", p.window}, {"stride", p.stride}, {"n_tokens", p.n_tokens},
                        {"win", w},           {"begin", begin},     {"end", end}};
            u.ids.assign(stream.begin() + begin, stream.begin() + end);
            u.score_from = win.score_from; // the positions no earlier window scored
            units.push_back(std::move(u));
            ++w;
        }
    } else {
        for (int j = 0; j < p.docs; ++j) {
            unit u;
            u.key =
                "C:P=" + std::to_string(p.prefix) + ",N=" + std::to_string(p.n_tokens) + ",doc=" + std::to_string(j);
            u.fields = {{"prefix", p.prefix}, {"n_tokens", p.n_tokens}, {"doc", j}};
            u.ids    = document_slice(*env.tok, body, p.n_tokens, j);
            if (u.ids.empty()) return too_short((int64_t(j) + 1) * p.n_tokens);
            units.push_back(std::move(u));
        }
    }

    int64_t done = 0;
    for (const auto & u : units) done += out.has(u.key) ? 1 : 0;
    progress prog(std::string("ppl ") + ppl_protocol_name(p.protocol), int64_t(units.size()), done);
    for (const auto & u : units) {
        if (out.has(u.key)) continue;
        json rec             = u.fields;
        rec["key"]           = u.key;
        rec["protocol"]      = ppl_protocol_name(p.protocol);
        rec["prompt_sha256"] = token_ids_sha256(u.ids);
        rec["n_tokens_run"]  = int64_t(u.ids.size());
        rec["runs"]          = json::array();
        std::string summary;
        for (auto & s : *env.slots) {
            double  nll = 0, t_pre = 0, t_dec = 0;
            int64_t n = 0;
            json    buckets;
            if (p.protocol != ppl_protocol::DECODE) {
                LC_RETURN_IF_ERROR(nll_prefill(*s.ctx, u.ids, chunk, u.score_from, &nll, &n, &t_pre));
            } else {
                // Prefill x_0..x_{P-1}; its last logits score x_P; then feed x_t and score x_{t+1}.
                context &            c       = *s.ctx;
                const int            n_vocab = env.mdl->hparams().n_vocab;
                const int64_t        N = int64_t(u.ids.size()), P = std::min(p.prefix, N - 1);
                std::vector<double>  bsum(size_t((N + p.bucket - 1) / p.bucket), 0.0);
                std::vector<int64_t> bcnt(bsum.size(), 0);
                c.clear();
                c.reset_timings();
                auto t0 = clock::now();
                LC_RETURN_IF_ERROR(c.decode(std::vector<int32_t>(u.ids.begin(), u.ids.begin() + P)));
                t_pre = since(t0);
                t0    = clock::now();
                for (int64_t t = P; t < N; ++t) {
                    const double l = token_nll(c.logits(), n_vocab, u.ids[size_t(t)]);
                    nll += l;
                    ++n;
                    bsum[size_t(t / p.bucket)] += l;
                    ++bcnt[size_t(t / p.bucket)];
                    if (t + 1 < N) LC_RETURN_IF_ERROR(c.decode({u.ids[size_t(t)]}));
                }
                t_dec   = since(t0);
                buckets = json::array();
                for (size_t b = 0; b < bsum.size(); ++b)
                    if (bcnt[b] > 0)
                        buckets.push_back({{"start", int64_t(b) * p.bucket},
                                           {"end", std::min(N, int64_t(b + 1) * p.bucket)},
                                           {"n_scored", bcnt[b]},
                                           {"ppl", std::exp(bsum[b] / double(bcnt[b]))}});
            }
            json r = run_json(s, nll, n, t_pre, t_dec);
            if (!buckets.is_null()) r["buckets"] = buckets;
            char b[96];
            std::snprintf(b, sizeof(b), "%s ppl %.3f", s.label.c_str(), r["ppl"].get<double>());
            summary += (summary.empty() ? "" : ", ") + std::string(b);
            rec["runs"].push_back(std::move(r));
        }
        LC_RETURN_IF_ERROR(out.add(std::move(rec)));
        prog.step(u.key + ": " + summary);
    }
    return status::ok();
}

result<std::vector<ppl_summary_row>> ppl_summary(const json & doc) {
    try {
        std::vector<ppl_summary_row>                                              rows;
        std::map<std::pair<std::string, std::string>, std::pair<double, int64_t>> acc;
        std::vector<std::pair<std::string, std::string>>                          order;
        for (const auto & rec : doc.at("records")) {
            const std::string pr = rec.at("protocol").get<std::string>();
            std::string       g;
            if (pr == "prefill")
                g = "A L=" + std::to_string(rec.at("length").get<int64_t>()) +
                    (rec.value("last", int64_t(0)) > 0 ? " last=" + std::to_string(rec.at("last").get<int64_t>()) : "");
            else if (pr == "sliding")
                g = "B W=" + std::to_string(rec.at("window").get<int64_t>()) +
                    " S=" + std::to_string(rec.at("stride").get<int64_t>()) +
                    " N=" + std::to_string(rec.at("n_tokens").get<int64_t>());
            else
                g = "C P=" + std::to_string(rec.at("prefix").get<int64_t>()) +
                    " N=" + std::to_string(rec.at("n_tokens").get<int64_t>());
            for (const auto & run : rec.at("runs")) {
                const auto k = std::make_pair(g, run.at("label").get<std::string>());
                if (!acc.count(k)) order.push_back(k);
                acc[k].first += run.at("nll_sum").get<double>();
                acc[k].second += run.at("n_scored").get<int64_t>();
            }
        }
        for (const auto & k : order) {
            const auto & a = acc[k];
            rows.push_back({k.first, k.second, a.second, a.second > 0 ? std::exp(a.first / double(a.second)) : 0.0});
        }
        return rows;
    } catch (const json::exception & e) {
        return error(status_code::INVALID_FILE, "eval: malformed ppl result file: %s", e.what());
    }
}

} // namespace lc::eval
