// llama-bench-style speed tests over the engine's forward pass (see bench.h).
#include "bench/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "core/log.h"
#include "lc-git-commit.h"

namespace lc {

namespace {

using clock_type = std::chrono::steady_clock;

// Prompt tokens: the next n ids of the text (wrapping around) or seeded random ids.
struct token_source {
    const std::vector<int32_t> & text;
    std::mt19937_64              rng;
    int32_t                      n_vocab = 0;
    size_t                       pos     = 0;

    std::vector<int32_t> take(int64_t n) {
        std::vector<int32_t> t(static_cast<size_t>(n));
        if (!text.empty()) {
            for (auto & x : t) x = text[pos++ % text.size()];
            return t;
        }
        std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
        for (auto & x : t) x = d(rng);
        return t;
    }
    void rewind() { pos = 0; }
};

double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One timed repetition; returns seconds of the timed part. The context's timings cover the timed part only.
// Decode tests after a depth reuse the depth prefix a previous repetition left in the context (cut back to it),
// so that only the first repetition pays for the prefill. Under a KV policy that evicted tokens (no cut back
// possible) the repetitions are consecutive blocks of decode steps after that prefill while the context has room,
// else each prefills again.
result<double> run_once(context & c, const bench_row & r, token_source & src, bool reuse_depth) {
    src.rewind(); // every repetition and method sees the same text
    if (reuse_depth && r.n_gen > 0 && r.depth > 0 && c.n_past() >= r.depth && c.can_truncate(r.depth)) {
        LC_RETURN_IF_ERROR(c.truncate(r.depth));
        src.take(r.depth);
    } else if (reuse_depth && r.n_gen > 0 && r.depth > 0 && c.n_past() >= r.depth &&
               c.n_past() + r.n_gen <= c.n_ctx()) {
        // A KV policy evicted tokens: the repetition goes on decoding after the previous one (the cache stays at
        // its budget), with the tokens the text has next.
        src.take(c.n_past());
    } else {
        c.clear();
        if (r.depth > 0) LC_RETURN_IF_ERROR(c.decode(src.take(r.depth)));
    }
    c.reset_timings();
    if (r.n_prompt > 0) {
        auto       toks = src.take(r.n_prompt);
        const auto t0   = clock_type::now();
        LC_RETURN_IF_ERROR(c.decode(toks));
        return std::chrono::duration<double>(clock_type::now() - t0).count();
    }
    auto       toks = src.take(r.n_gen);
    const auto t0   = clock_type::now();
    for (int64_t i = 0; i < r.n_gen; ++i) LC_RETURN_IF_ERROR(c.decode({toks[static_cast<size_t>(i)]}));
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Medians over the repetitions of what the context's timings saw.
struct samples {
    std::vector<double> attn, swa, index, density, keys, select, bytes;
    void add(const forward_timings & t, int64_t n_tok_gen) {
        attn.push_back(t.attn_s);
        swa.push_back(t.attn_swa_s);
        index.push_back(t.attn_index_s);
        density.push_back(t.density());
        keys.push_back(t.decode_keys_fraction());
        select.push_back(t.decode_select_s);
        bytes.push_back(n_tok_gen > 0 ? double(t.decode_bytes_select + t.decode_bytes_attn) / double(n_tok_gen)
                                      : 0.0);
    }
};
// The decode tests of one batched row (see bench.h): returns seconds per timed block and adds each block's
// timings to sm; sets r.n_seq.
result<std::vector<double>> run_batched(const model & m, const attn_config & method, const bench_params & p,
                                        bench_row & r, token_source & src, std::unique_ptr<context> & c,
                                        samples & sm) {
    const model_hparams & hp   = m.hparams();
    const int64_t         grow = r.n_gen * (p.reps + 1);
    const int64_t         fill = std::max<int64_t>(r.depth, 1);
    context_params        cp;
    cp.n_ctx     = (fill + grow + 64 + 63) / 64 * 64;
    cp.n_threads = p.n_threads;
    cp.n_ubatch  = p.n_ubatch;
    cp.attn      = method;
    cp.kv_memory = p.kv_memory;
    if (cp.n_ctx > hp.n_ctx_train)
        return error(status_code::OUT_OF_RANGE, "bench: %s needs %lld tokens per sequence; the model was trained on %lld",
                     r.test.c_str(), (long long)cp.n_ctx, (long long)hp.n_ctx_train);
    const int64_t page_pair = int64_t(hp.n_head_kv) * hp.head_dim * kv_page_tokens * 2 * 2; // fp16 K and V
    if (r.seq_max) {
        if (p.kv_memory == 0)
            return error(status_code::INVALID_ARGUMENT, "bench: -np max needs --kv-memory (the budget to fill)");
        // Every sequence holds at least one page per layer.
        cp.n_seq = int(std::min<int64_t>(1024, std::max<int64_t>(1, int64_t(p.kv_memory) / (page_pair * hp.n_layer))));
    } else {
        cp.n_seq = r.n_seq;
    }
    c.reset();
    LC_ASSIGN_OR_RETURN(c, context::create(m, cp));
    const size_t margin = c->kv_bytes_for(grow + 64); // a sequence's decode blocks, plus partly filled pages
    int          n      = 0;
    for (int s = 0; s < cp.n_seq; ++s) {
        if (r.seq_max && c->kv_bytes_free() < size_t(n) * margin + c->kv_bytes_for(fill + grow + 64)) break;
        status st = c->decode_seq(s, src.take(fill));
        if (r.seq_max && st.code() == status_code::RESOURCE_EXHAUSTED) {
            c->clear(s);
            break;
        }
        LC_RETURN_IF_ERROR(st);
        if (r.seq_max && c->kv_bytes_free() < size_t(n + 1) * margin) {
            c->clear(s);
            break;
        }
        ++n;
    }
    if (n == 0)
        return error(status_code::RESOURCE_EXHAUSTED, "bench: --kv-memory %zu bytes holds no sequence of %lld tokens",
                     p.kv_memory, (long long)(fill + grow));
    r.n_seq = n;
    std::vector<int> seqs(static_cast<size_t>(n));
    for (int s = 0; s < n; ++s) seqs[size_t(s)] = s;
    std::vector<double> out;
    for (int rep = 0; rep <= p.reps; ++rep) {
        std::vector<std::vector<int32_t>> toks;
        for (int64_t i = 0; i < r.n_gen; ++i) toks.push_back(src.take(n));
        c->reset_timings();
        const auto t0 = clock_type::now();
        for (int64_t i = 0; i < r.n_gen; ++i) LC_RETURN_IF_ERROR(c->decode_step(seqs, toks[size_t(i)]));
        if (rep == 0) continue;
        out.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
        sm.add(c->timings(), r.n_gen * n);
    }
    return out;
}

std::string json_escape(const std::string & s) {
    std::string o;
    for (char ch : s) {
        if (ch == '"' || ch == '\\')
            o += '\\', o += ch;
        else if ((unsigned char)ch < 0x20) {
            char b[8];
            std::snprintf(b, sizeof(b), "\\u%04x", ch);
            o += b;
        } else
            o += ch;
    }
    return o;
}

} // namespace

std::string bench_cpu_name() {
    std::ifstream in("/proc/cpuinfo");
    std::string   line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            if (p != std::string::npos) return line.substr(p + 2);
        }
    }
    return "unknown CPU";
}

result<std::vector<bench_row>> bench_run(const model & m, const bench_params & p, bench_env & env,
                                         const std::function<void(const bench_row &)> & on_row) {
    std::vector<bench_row> rows;
    for (int64_t d : p.depth) {
        for (int64_t n : p.n_prompt) {
            if (n <= 0) continue;
            bench_row r;
            r.n_prompt = n;
            r.depth    = d;
            r.test     = "pp" + std::to_string(n) + (d > 0 ? " @ d" + std::to_string(d) : "");
            rows.push_back(r);
        }
        for (int64_t n : p.n_gen) {
            if (n <= 0) continue;
            bench_row r;
            r.n_gen = n;
            r.depth = d;
            r.test  = "tg" + std::to_string(n) + (d > 0 ? " @ d" + std::to_string(d) : "");
            rows.push_back(r);
        }
    }
    int64_t n_ctx = 1;
    for (const auto & r : rows) n_ctx = std::max(n_ctx, r.depth + r.n_prompt + r.n_gen);
    n_ctx = (n_ctx + 63) / 64 * 64;
    if (n_ctx > m.hparams().n_ctx_train)
        return error(status_code::OUT_OF_RANGE,
                     "bench: a test needs %lld tokens of context but the model was trained on %lld", (long long)n_ctx,
                     (long long)m.hparams().n_ctx_train);
    env.build_commit = LC_GIT_COMMIT;
    env.cpu          = bench_cpu_name();
    env.n_ubatch     = p.n_ubatch;
    env.weight_type  = m.weight_type_name();
    env.model_bytes  = m.n_weight_bytes();
    env.model_name   = m.hparams().name;
    env.n_params     = 0;
    for (const auto & t : m.file().tensors()) env.n_params += t.n_elements();

    // Room for the consecutive decode blocks of a KV policy (see run_once).
    int64_t n_ctx_kv = n_ctx;
    for (const auto & r : rows) n_ctx_kv = std::max(n_ctx_kv, r.depth + r.n_prompt + r.n_gen * (p.reps + 1));
    n_ctx_kv = (n_ctx_kv + 63) / 64 * 64;

    // Batched decode tests: one row per decode test and batch size other than 1.
    std::vector<bench_row> batched;
    for (int b : p.parallel) {
        if (b == 1) continue;
        for (const bench_row & r0 : rows) {
            if (r0.n_gen <= 0) continue;
            bench_row r = r0;
            r.n_seq     = b;
            r.seq_max   = b == 0;
            r.test += b == 0 ? " xmax" : " x" + std::to_string(b);
            batched.push_back(r);
        }
    }
    const bool single = std::find(p.parallel.begin(), p.parallel.end(), 1) != p.parallel.end();
    if (p.cuda && !batched.empty())
        return error(status_code::UNSUPPORTED, "bench: the GPU runs one sequence so far; use -np 1 with --device cuda");

    std::vector<bench_row> out;
    auto finish = [&](bench_row & r, const samples & sm, const context & c) {
        const double n_tok = double(r.n_prompt + r.n_gen) * double(std::max(r.n_seq, 1));
        double       sum = 0.0, sum2 = 0.0;
        for (double s : r.samples_s) {
            sum += n_tok / s;
            sum2 += (n_tok / s) * (n_tok / s);
        }
        const double k    = double(r.samples_s.size());
        r.mean_tps        = sum / k;
        r.sd_tps          = k > 1 ? std::sqrt(std::max(0.0, (sum2 - sum * sum / k) / (k - 1))) : 0.0;
        r.kv_bytes        = c.kv_bytes_held();
        r.attn_s          = median(sm.attn);
        r.attn_swa_s      = median(sm.swa);
        r.index_s         = median(sm.index);
        r.density         = median(sm.density);
        r.decode_keys     = median(sm.keys);
        r.select_s        = median(sm.select);
        r.bytes_per_token = median(sm.bytes);
        if (on_row) on_row(r);
        out.push_back(r);
    };
    for (const attn_config & method : p.methods) {
        context_params cp;
        cp.n_ctx     = std::min<int64_t>(method.kv == kv_method::FULL ? n_ctx : n_ctx_kv, m.hparams().n_ctx_train);
        cp.n_threads = p.n_threads;
        cp.n_ubatch  = p.n_ubatch;
        cp.attn      = method;
        cp.cuda      = p.cuda;
        LC_ASSIGN_OR_RETURN(std::unique_ptr<context> c, context::create(m, cp));
        env.n_threads = c->n_threads();
        env.device    = c->on_gpu() ? "cuda" : "cpu";

        token_source src{p.text, std::mt19937_64(p.seed), m.hparams().n_vocab};
        for (bench_row r : rows) {
            if (!single && r.n_gen > 0) continue;
            r.method = attn_config_describe(method);
            LC_ASSIGN_OR_RETURN(double warm, run_once(*c, r, src, false));
            (void)warm;
            samples sm;
            for (int i = 0; i < p.reps; ++i) {
                LC_ASSIGN_OR_RETURN(double s, run_once(*c, r, src, true));
                r.samples_s.push_back(s);
                sm.add(c->timings(), r.n_gen);
            }
            finish(r, sm, *c);
        }
        c.reset();
        for (bench_row r : batched) {
            r.method = attn_config_describe(method);
            src.rewind();
            std::unique_ptr<context> cb;
            samples                  sm;
            LC_ASSIGN_OR_RETURN(r.samples_s, run_batched(m, method, p, r, src, cb, sm));
            if (r.seq_max) r.test += "=" + std::to_string(r.n_seq);
            finish(r, sm, *cb);
        }
    }
    return out;
}

std::string bench_format_md_header(const bench_env & env) {
    std::ostringstream o;
    o << "build: " << env.build_commit << ", device: " << env.device << ", CPU: " << env.cpu << ", threads: " << env.n_threads
      << ", ubatch: " << env.n_ubatch << ", prompts: " << env.prompt_source << "\n\n";
    o << "| model | size | params | weights | KV | threads | attention | test | t/s | attn s | of which SWA s | index "
         "s | density | keys | select s | MB/tok | KV MiB |\n";
    o << "| --- | ---: | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
         "| ---: |\n";
    return o.str();
}

std::string bench_format_md_row(const bench_env & env, const bench_row & r) {
    char buf[768];
    std::snprintf(buf, sizeof(buf),
                  "| %s | %.2f MiB | %.2f M | %s | %s | %d | %s | %s | %.2f ± %.2f | %.3f | %.3f | %.3f | ",
                  env.model_name.c_str(), double(env.model_bytes) / (1024.0 * 1024.0), double(env.n_params) / 1e6,
                  env.weight_type.c_str(), env.kv_type.c_str(), env.n_threads, r.method.c_str(), r.test.c_str(),
                  r.mean_tps, r.sd_tps, r.attn_s, r.attn_swa_s, r.index_s);
    std::string row = buf;
    if (r.n_gen > 0)
        std::snprintf(buf, sizeof(buf), "- | %.1f%% | %.3f | %.2f | %.2f |\n", 100.0 * r.decode_keys, r.select_s,
                      r.bytes_per_token / 1e6, double(r.kv_bytes) / (1024.0 * 1024.0));
    else
        std::snprintf(buf, sizeof(buf), "%.1f%% | - | - | - | %.2f |\n", 100.0 * r.density,
                      double(r.kv_bytes) / (1024.0 * 1024.0));
    return row + buf;
}

std::string bench_format_json(const bench_env & env, const std::vector<bench_row> & rows) {
    std::ostringstream o;
    o << "[\n";
    for (size_t i = 0; i < rows.size(); ++i) {
        const auto & r = rows[i];
        o << "  {\"build_commit\": \"" << json_escape(env.build_commit) << "\", \"cpu\": \"" << json_escape(env.cpu)
          << "\", \"model\": \"" << json_escape(env.model_name) << "\", \"model_path\": \""
          << json_escape(env.model_path) << "\", \"device\": \"" << env.device << "\", \"model_bytes\": " << env.model_bytes
          << ", \"n_params\": " << env.n_params << ", \"weight_type\": \"" << env.weight_type << "\", \"kv_type\": \""
          << env.kv_type << "\", \"n_threads\": " << env.n_threads << ", \"n_ubatch\": " << env.n_ubatch
          << ", \"attention\": \"" << json_escape(r.method) << "\", \"prompts\": \"" << json_escape(env.prompt_source)
          << "\", \"attn_s\": " << r.attn_s << ", \"attn_swa_s\": " << r.attn_swa_s << ", \"index_s\": " << r.index_s
          << ", \"density\": " << r.density << ", \"decode_keys\": " << r.decode_keys
          << ", \"select_s\": " << r.select_s << ", \"bytes_per_token\": " << r.bytes_per_token << ", \"test\": \""
          << r.test << "\", \"n_prompt\": " << r.n_prompt << ", \"n_gen\": " << r.n_gen << ", \"depth\": " << r.depth
          << ", \"n_seq\": " << r.n_seq << ", \"kv_bytes\": " << r.kv_bytes << ", \"avg_ts\": " << r.mean_tps << ", \"stddev_ts\": " << r.sd_tps
          << ", \"samples_s\": [";
        for (size_t j = 0; j < r.samples_s.size(); ++j) o << (j ? ", " : "") << r.samples_s[j];
        o << "]}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    o << "]\n";
    return o.str();
}

} // namespace lc
