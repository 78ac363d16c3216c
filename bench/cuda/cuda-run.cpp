// longctx-cuda-run: the whole model on one GPU (backend/cuda/cuda-model.h) until `longctx run --device cuda`
// exists. Two modes:
//   -m MODEL [-p PROMPT] [-n N] [--check]   greedy continuation on the GPU; --check also runs the CPU path and
//                                           compares tokens and logits
//   --synthetic NAME [--pp 8192,32768] [--tg 64] [-r R] [--prefill dense|vslash|a-shape|block] [--budgets A,B]
//                                           random weights of a real model's shape: TTFT of a pp-token prompt and
//                                           decode tokens/s at depth pp, as a markdown table labelled synthetic;
//                                           --prefill: one MInference pattern in every head (METHODS.md defaults:
//                                           vslash v=1000 s=6096, the --prefill minference of a model without a
//                                           calibration; a-shape 128,3968; block k_b=100), --budgets to change them;
//                                           --layer-major: one layer at a time over the whole prompt, one KV pool
//                                           for all layers (TTFT only: no decode; reaches 1M tokens on 80 GB);
//                                           --decode topk|quest|loki [--decode-budget 0.25] [--decode-select kv]:
//                                           sparse decode, keys selected per query head or per KV head (Loki
//                                           with the identity basis: the first d = D/4 dims; random weights have no
//                                           key structure to fit)
// Timings: wall clock around forward() calls that end with a device sync (TTFT includes the first token's argmax).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda-model.h"
#include "core/thread-pool.h"
#include "kv/kv-cache.h"
#include "model/forward.h"
#include "model/model-store.h"
#include "model/model.h"
#include "runtime/sampling.h"
#include "tokenizer/tokenizer.h"

using namespace lc;

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<int64_t> parse_list(const char * s) {
    std::vector<int64_t> v;
    for (const char * p = s; *p;) {
        char *  end = nullptr;
        int64_t x   = std::strtoll(p, &end, 10);
        if (*end == 'k' || *end == 'K') {
            x *= 1024;
            ++end;
        }
        v.push_back(x);
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p) break;
    }
    return v;
}

int die(const status & st) {
    std::fprintf(stderr, "longctx-cuda-run: %s\n", st.message().c_str());
    return 1;
}

int run_synthetic(const std::string & name, const std::vector<int64_t> & pps, int tg, int reps,
                  cuda::cuda_model_options opt, head_pattern pattern, head_budget budget) {
    auto hpr = cuda::synthetic_hparams(name);
    if (!hpr.is_ok()) return die(hpr.get_status());
    const model_hparams hp = hpr.value();
    const int64_t       ubatch = opt.n_ubatch;
    if (opt.layer_major) tg = 0;
    opt.n_ctx               = (*std::max_element(pps.begin(), pps.end()) + tg + 63) / 64 * 64;
    char prefill[64]        = "dense";
    if (pattern != head_pattern::DENSE) {
        opt.prefill_heads.assign(size_t(hp.n_layer) * size_t(hp.n_head), budget);
        if (pattern == head_pattern::BLOCK)
            std::snprintf(prefill, sizeof(prefill), "block k_b=%lld", (long long)budget.a);
        else
            std::snprintf(prefill, sizeof(prefill), "%s %lld,%lld", head_pattern_name(pattern), (long long)budget.a,
                          (long long)budget.b);
    }
    const char * dec_names[] = {"dense", "topk", "quest", "loki"};
    char         decode[64];
    std::snprintf(decode, sizeof(decode), "%s", dec_names[int(opt.decode)]);
    if (opt.decode != cuda::decode_method_gpu::DENSE)
        std::snprintf(decode, sizeof(decode), "%s %.0f%% per %s", dec_names[int(opt.decode)], opt.decode_frac * 100.0,
                      opt.decode_kv_select ? "KV head" : "query head");
    if (opt.decode == cuda::decode_method_gpu::LOKI) {
        const int D = hp.head_dim;
        opt.loki_d.assign(size_t(hp.n_layer), std::max(1, D / 4));
        opt.loki_basis.assign(size_t(hp.n_layer) * hp.n_head_kv * size_t(D) * D, 0.0f);
        for (size_t b = 0; b < size_t(hp.n_layer) * hp.n_head_kv; ++b)
            for (int i = 0; i < D; ++i) opt.loki_basis[b * size_t(D) * D + size_t(i) * D + i] = 1.0f;
    }
    const double t0  = now_s();
    auto         cmr = cuda::cuda_model::synthetic(hp, opt, 1);
    if (!cmr.is_ok()) return die(cmr.get_status());
    auto cm = std::move(cmr).value();
    std::fprintf(stderr,
                 "synthetic %s: %.2f GiB weights (bf16), %.2f GiB KV (bf16, %lld tokens), built in %.1f s on %s\n",
                 name.c_str(), double(cm->weight_bytes()) / (1 << 30), double(cm->kv_bytes()) / (1 << 30),
                 (long long)opt.n_ctx, now_s() - t0, cm->device_name().c_str());
    std::printf(
        "| model | device | weights | KV | prefill | decode | ubatch | prompt | TTFT s | prefill t/s | decode t/s @ depth "
        "| runs | sparse layers run dense |\n");
    std::printf("|---|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for (int64_t pp : pps) {
        std::vector<int32_t> toks(static_cast<size_t>(pp));
        for (int64_t i = 0; i < pp; ++i)
            toks[size_t(i)] = int32_t((uint64_t(i) * 2654435761ull) % uint64_t(hp.n_vocab));
        // warm-up (GEMM plans, graph capture): a short prompt and a few decode steps
        cm->clear();
        int32_t next = 0;
        if (status st = cm->forward(toks.data(), std::min<int64_t>(pp, 512), 0, 0, nullptr, &next); !st.is_ok())
            return die(st);
        for (int i = 0; i < 3 && !opt.layer_major; ++i)
            if (status st = cm->forward(&next, 1, cm->n_past(), 0, nullptr, &next); !st.is_ok()) return die(st);
        std::vector<double>              ttft, dec;
        const cuda::cuda_model::prefill_counts vs0 = cm->sparse_prefill_stats();
        for (int r = 0; r < reps; ++r) {
            cm->clear();
            double a = now_s();
            if (status st = cm->forward(toks.data(), pp, 0, 0, nullptr, &next); !st.is_ok()) return die(st);
            ttft.push_back(now_s() - a);
            a = now_s();
            for (int i = 0; i < tg && !opt.layer_major; ++i)
                if (status st = cm->forward(&next, 1, pp + i, 0, nullptr, &next); !st.is_ok()) return die(st);
            dec.push_back(opt.layer_major ? 0.0 : double(tg) / (now_s() - a));
        }
        auto mean_sd = [](const std::vector<double> & v) {
            double m = 0, s = 0;
            for (double x : v) m += x;
            m /= double(v.size());
            for (double x : v) s += (x - m) * (x - m);
            return std::pair<double, double>{m, v.size() > 1 ? std::sqrt(s / double(v.size() - 1)) : 0.0};
        };
        const auto [tm, ts] = mean_sd(ttft);
        const auto [dm, ds] = mean_sd(dec);
        const cuda::cuda_model::prefill_counts vs1     = cm->sparse_prefill_stats();
        char                                   vsd[48] = "-";
        if (pattern != head_pattern::DENSE)
            std::snprintf(vsd, sizeof(vsd), "%lld of %lld", (long long)(vs1.dense - vs0.dense),
                          (long long)(vs1.layers - vs0.layers));
        char dcol[64] = "- (layer-major: no cache kept)";
        if (!opt.layer_major) std::snprintf(dcol, sizeof(dcol), "%.1f ± %.1f @ %lld", dm, ds, (long long)pp);
        if (!opt.layer_major && tg == 0) std::snprintf(dcol, sizeof(dcol), "-");
        std::printf("| %s (synthetic, random weights) | %s | bf16 | bf16 | %s%s | %s | %lld | %lld | %.3f ± %.3f | %.0f | "
                    "%s | %d | %s |\n",
                    name.c_str(), cm->device_name().c_str(), prefill, opt.layer_major ? ", layer-major" : "", decode,
                    (long long)ubatch, (long long)pp, tm, ts, double(pp) / tm, dcol, reps, vsd);
        std::fflush(stdout);
    }
    return 0;
}

int run_model(const std::string & path_arg, const std::string & prompt_text, int n_gen, bool check) {
    auto path = model_resolve(path_arg, false);
    if (!path.is_ok()) return die(path.get_status());
    auto mr = model::load(path.value());
    if (!mr.is_ok()) return die(mr.get_status());
    auto m  = std::move(mr).value();
    auto tk = tokenizer::from_gguf(m->file());
    if (!tk.is_ok()) return die(tk.get_status());
    const auto &         hp     = m->hparams();
    std::vector<int32_t> prompt = tk.value().encode(prompt_text, true, false);
    const int64_t        n      = int64_t(prompt.size());

    cuda::cuda_model_options opt;
    opt.n_ctx  = std::max<int64_t>(4096, (n + n_gen + 63) / 64 * 64);
    double t0  = now_s();
    auto   cmr = cuda::cuda_model::upload(*m, opt);
    if (!cmr.is_ok()) return die(cmr.get_status());
    auto cm = std::move(cmr).value();
    std::fprintf(stderr, "%s on %s: %.1f MiB bf16 weights uploaded in %.2f s\n", hp.name.c_str(),
                 cm->device_name().c_str(), double(cm->weight_bytes()) / (1 << 20), now_s() - t0);

    std::vector<float>   gl(size_t(n * hp.n_vocab)), step(size_t(hp.n_vocab));
    std::vector<int32_t> gpu_gen;
    int32_t              tok = 0;
    t0                       = now_s();
    if (status st = cm->forward(prompt.data(), n, 0, n, gl.data(), &tok); !st.is_ok()) return die(st);
    const double t_pp = now_s() - t0;
    t0                = now_s();
    for (int i = 0; i < n_gen; ++i) {
        gpu_gen.push_back(tok);
        if (status st = cm->forward(&tok, 1, n + i, 0, nullptr, &tok); !st.is_ok()) return die(st);
    }
    const double t_tg = now_s() - t0;
    std::printf("%s%s\n", prompt_text.c_str(), tk.value().decode(gpu_gen).c_str());
    std::fprintf(stderr,
                 "gpu: prompt %lld tokens in %.2f ms (logits of every row copied to the host), %d tokens at %.1f t/s\n",
                 (long long)n, t_pp * 1e3, n_gen, n_gen / t_tg);
    if (!check) return 0;

    kv_cache           kv(hp.n_layer, hp.n_head_kv, hp.head_dim, opt.n_ctx);
    thread_pool        pool(4);
    forward_scratch    s;
    std::vector<float> cl(size_t(n * hp.n_vocab));
    if (status st = forward_batch(*m, kv, 0, prompt.data(), n, 0, n, cl.data(), pool, s); !st.is_ok()) return die(st);
    double num = 0, den = 0, max_abs = 0;
    for (size_t i = 0; i < cl.size(); ++i) {
        num += (double(gl[i]) - cl[i]) * (double(gl[i]) - cl[i]);
        den += double(cl[i]) * cl[i];
        max_abs = std::max(max_abs, double(std::fabs(gl[i] - cl[i])));
    }
    std::vector<int32_t> cpu_gen;
    int32_t              ct = sampling_argmax(cl.data() + (n - 1) * hp.n_vocab, hp.n_vocab);
    for (int i = 0; i < n_gen; ++i) {
        cpu_gen.push_back(ct);
        if (status st = forward_batch(*m, kv, 0, &ct, 1, n + i, 1, step.data(), pool, s); !st.is_ok()) return die(st);
        ct = sampling_argmax(step.data(), hp.n_vocab);
    }
    int same = 0;
    while (same < n_gen && cpu_gen[size_t(same)] == gpu_gen[size_t(same)]) ++same;
    std::printf("check: prompt logits nmse %.3e, max |diff| %.4f; greedy tokens identical for %d of %d%s\n", num / den,
                max_abs, same, n_gen, same == n_gen ? " (all)" : "");
    if (same < n_gen) std::printf("cpu continuation: %s\n", tk.value().decode(cpu_gen).c_str());
    return same == n_gen ? 0 : 2;
}

} // namespace

int main(int argc, char ** argv) {
    std::string          model_arg, synthetic, prompt = "The history of the Roman Empire";
    int                  n_gen = 64, tg = 64, reps = 1;
    bool                 check  = false;
    cuda::cuda_model_options sopt;
    head_pattern             pattern       = head_pattern::DENSE;
    head_budget              budget        = head_budget_default(head_pattern::DENSE);
    bool                     budgets_given = false;
    std::vector<int64_t> pps    = {8192, 32768};
    for (int i = 1; i < argc; ++i) {
        const std::string a    = argv[i];
        auto              next = [&]() -> const char * {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "longctx-cuda-run: %s needs a value\n", a.c_str());
                std::exit(1);
            }
            return argv[++i];
        };
        if (a == "-m")
            model_arg = next();
        else if (a == "-p")
            prompt = next();
        else if (a == "-n")
            n_gen = std::atoi(next());
        else if (a == "--check")
            check = true;
        else if (a == "--synthetic")
            synthetic = next();
        else if (a == "--pp")
            pps = parse_list(next());
        else if (a == "--tg")
            tg = std::atoi(next());
        else if (a == "-r")
            reps = std::max(1, std::atoi(next()));
        else if (a == "-ub")
            sopt.n_ubatch = std::max<int64_t>(1, std::atoll(next()));
        else if (a == "--prefill") {
            std::string m = next();
            if (m == "minference") m = "vslash";
            const auto pr = head_pattern_parse(m);
            if (!pr.is_ok()) {
                std::fprintf(stderr, "longctx-cuda-run: --prefill %s: expected dense, vslash, a-shape, block or "
                                     "minference\n", m.c_str());
                return 1;
            }
            pattern = pr.value();
            if (!budgets_given) budget = head_budget_default(pattern);
            budget.pattern = pattern;
        } else if (a == "--layer-major") {
            sopt.layer_major = true;
        } else if (a == "--prefill-dense-ratio") {
            sopt.prefill_dense_ratio = float(std::atof(next()));
        } else if (a == "--budgets") {
            const std::vector<int64_t> b = parse_list(next());
            if (b.empty() || b.size() > 2 || b[0] < 1 || (b.size() == 2 && b[1] < 0)) {
                std::fprintf(stderr, "longctx-cuda-run: --budgets A[,B]: positive counts (vslash V,S; a-shape "
                                     "SINK,LOCAL; block K_B)\n");
                return 1;
            }
            budget.a      = b[0];
            budget.b      = b.size() == 2 ? b[1] : 0;
            budgets_given = true;
        } else if (a == "--decode") {
            const std::string m = next();
            if (m == "dense")
                sopt.decode = cuda::decode_method_gpu::DENSE;
            else if (m == "topk")
                sopt.decode = cuda::decode_method_gpu::TOPK;
            else if (m == "quest")
                sopt.decode = cuda::decode_method_gpu::QUEST;
            else if (m == "loki")
                sopt.decode = cuda::decode_method_gpu::LOKI;
            else {
                std::fprintf(stderr, "longctx-cuda-run: --decode %s: expected dense, topk, quest or loki\n", m.c_str());
                return 1;
            }
        } else if (a == "--decode-select") {
            const std::string m = next();
            if (m != "head" && m != "kv") {
                std::fprintf(stderr, "longctx-cuda-run: --decode-select %s: expected head or kv\n", m.c_str());
                return 1;
            }
            sopt.decode_kv_select = m == "kv";
        } else if (a == "--decode-budget") {
            sopt.decode_frac = std::atof(next());
            if (!(sopt.decode_frac > 0.0 && sopt.decode_frac <= 1.0)) {
                std::fprintf(stderr, "longctx-cuda-run: --decode-budget: a fraction in (0, 1]\n");
                return 1;
            }
        } else {
            std::fprintf(
                stderr,
                "usage: longctx-cuda-run -m MODEL [-p PROMPT] [-n 64] [--check]\n"
                "       longctx-cuda-run --synthetic llama3-8b [--pp 8192,32768] [--tg 64] [-r 1] [-ub 4096]\n"
                "                        [--prefill dense|vslash|a-shape|block|minference] [--budgets A,B]\n"
                "                        [--prefill-dense-ratio 0.5] [--layer-major]\n"
                "                        [--decode dense|topk|quest|loki] [--decode-budget 0.25] [--decode-select head|kv]\n");
            return 1;
        }
    }
    if (!cuda::device_available()) {
        std::fprintf(stderr, "longctx-cuda-run: no CUDA device\n");
        return 1;
    }
    if (!synthetic.empty()) return run_synthetic(synthetic, pps, tg, reps, sopt, pattern, budget);
    return run_model(model_arg, prompt, n_gen, check);
}
