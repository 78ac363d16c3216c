// Times the GPU statistics and eviction of H2O/D2O at Llama-3-8B shapes (32 query heads, 8 KV heads, head_dim 128,
// bf16 paged cache): per prefill chunk, the column-sum pass (attn-colsum.cuh, per query head) against our dense
// prefill kernel on the same chunk (each column-sum kernel: mma.sync, wgmma, wgmma with a quarter of the exps as a
// polynomial); per decode step, the column-sum row against our split-K decode kernel; and per
// layer at the end of the prompt, evict_keep + d2o_merge + kv_compact (kv-evict.cuh) at a 20% budget.
// Medians of CUDA-event timings after a warm-up.
// Usage: longctx-cuda-kv-evict-bench [--prompt 32768,131072] [--chunk 4096] [--reps 3] [--budget 0.2]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/attn-colsum.cuh"
#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/kv-evict.cuh"
#include "core/fp16.h"

#include "bench-util.cuh"

namespace {

using namespace lc;
using namespace lc::cuda_bench;

constexpr int H = 32, HKV = 8, D = 128, G = H / HKV;

template <typename F> double median_ms(int reps, F && f) {
    cudaEvent_t a, b;
    LC_CUDA_CHECK(cudaEventCreate(&a));
    LC_CUDA_CHECK(cudaEventCreate(&b));
    f(); // warm-up
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        LC_CUDA_CHECK(cudaEventRecord(a));
        f();
        LC_CUDA_CHECK(cudaEventRecord(b));
        LC_CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        LC_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    LC_CUDA_CHECK(cudaEventDestroy(a));
    LC_CUDA_CHECK(cudaEventDestroy(b));
    return t[t.size() / 2];
}

void check(const status & s) {
    if (!s.is_ok()) {
        std::fprintf(stderr, "error: %s\n", s.message().c_str());
        std::exit(1);
    }
}

} // namespace

int main(int argc, char ** argv) {
    std::vector<int64_t> prompts = {32768, 131072};
    int64_t              chunk   = 4096;
    int                  reps    = 3;
    double               budget  = 0.2;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i];
        if (k == "--prompt")
            prompts = parse_list(argv[i + 1]);
        else if (k == "--chunk")
            chunk = std::atoll(argv[i + 1]);
        else if (k == "--reps")
            reps = std::atoi(argv[i + 1]);
        else if (k == "--budget")
            budget = std::atof(argv[i + 1]);
    }
    cudaDeviceProp prop{};
    LC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs; Llama-3-8B shapes: %d q heads, %d KV heads, D=%d; chunk %lld, reps %d\n\n",
                prop.name, prop.multiProcessorCount, H, HKV, D, (long long)chunk, reps);
    const float scale = 1.f / std::sqrt(float(D));

    for (int64_t N : prompts) {
        const int64_t n_pages = (N + 63) / 64;
        const size_t  pool_el = size_t(n_pages) * HKV * 64 * D;
        bf16_t *      k = nullptr, *v = nullptr, *kb = nullptr, *vb = nullptr, *q = nullptr;
        LC_CUDA_CHECK(cudaMalloc(&k, pool_el * 2));
        LC_CUDA_CHECK(cudaMalloc(&v, pool_el * 2));
        LC_CUDA_CHECK(cudaMalloc(&kb, pool_el * 2));
        LC_CUDA_CHECK(cudaMalloc(&vb, pool_el * 2));
        LC_CUDA_CHECK(cudaMalloc(&q, size_t(chunk) * H * D * 2));
        fill(k, pool_el, 1, 2.f);
        fill(v, pool_el, 2, 1.f);
        fill(q, size_t(chunk) * H * D, 3, 2.f);
        std::vector<int32_t> pages(static_cast<size_t>(n_pages));
        std::iota(pages.begin(), pages.end(), 0);
        std::shuffle(pages.begin(), pages.end(), std::mt19937(5));
        int32_t * dpages = nullptr;
        LC_CUDA_CHECK(cudaMalloc(&dpages, pages.size() * 4));
        LC_CUDA_CHECK(cudaMemcpy(dpages, pages.data(), pages.size() * 4, cudaMemcpyHostToDevice));
        float *o = nullptr, *lse = nullptr, *cs = nullptr;
        LC_CUDA_CHECK(cudaMalloc(&o, size_t(chunk) * H * D * 4));
        LC_CUDA_CHECK(cudaMalloc(&lse, size_t(chunk) * H * 4));
        LC_CUDA_CHECK(cudaMalloc(&cs, size_t(H) * N * 4));
        LC_CUDA_CHECK(cudaMemset(cs, 0, size_t(H) * N * 4));

        // prefill chunks: dense kernel (with lse, timed before and after the column sums) vs the column-sum pass of
        // the same chunk, each kernel, per query head and per KV head
        constexpr cuda::attn_colsum_kernel kernels[] = {
            cuda::attn_colsum_kernel::MMA_SYNC, cuda::attn_colsum_kernel::WGMMA, cuda::attn_colsum_kernel::WGMMA_POLY};
        constexpr const char * kernel_names[] = {"mma.sync", "wgmma", "wgmma + poly exp"};
        constexpr int          n_kern         = 3;
        double                 t_pre = 0, t_pre2 = 0, last_pre = 0, t_cs[n_kern][2] = {}, last_cs[n_kern][2] = {};
        for (int64_t pos0 = 0; pos0 < N; pos0 += chunk) {
            const int64_t           nq = std::min(chunk, N - pos0);
            cuda::attn_prefill_args pa;
            pa.q                 = q;
            pa.n_q               = nq;
            pa.pos0              = pos0;
            pa.n_head            = H;
            pa.kv.k_pool         = k;
            pa.kv.v_pool         = v;
            pa.kv.pages          = dpages;
            pa.kv.n_pages_total  = n_pages;
            pa.kv.n_kv           = pos0 + nq;
            pa.kv.n_head_kv      = HKV;
            pa.kv.head_dim       = D;
            pa.scale             = scale;
            pa.o                 = o;
            pa.o_f32             = false;
            pa.lse               = lse;
            auto         prefill = [&] { check(cuda::attn_prefill(pa, cuda::attn_prefill_kernel::AUTO, nullptr)); };
            const double tp      = median_ms(reps, prefill);
            cuda::attn_colsum_args ca;
            ca.q             = q;
            ca.n_q           = nq;
            ca.pos0          = pos0;
            ca.n_head        = H;
            ca.kv            = pa.kv;
            ca.scale         = scale;
            ca.lse           = lse;
            ca.colsum        = cs;
            ca.colsum_stride = N;
            for (int kk = 0; kk < n_kern; ++kk) {
                ca.kernel = kernels[kk];
                for (int pk = 0; pk < 2; ++pk) {
                    ca.per_kv_head  = pk == 1;
                    const double tc = median_ms(reps, [&] { check(cuda::attn_colsum(ca, nullptr)); });
                    t_cs[kk][pk] += tc;
                    last_cs[kk][pk] = tc;
                }
            }
            const double tp2 = median_ms(reps, prefill);
            t_pre += tp;
            t_pre2 += tp2;
            last_pre = tp;
        }
        std::printf("prompt %lld: dense prefill (wgmma, with lse), all chunks: %.2f ms (timed again after the column "
                    "sums: %.2f ms); last chunk %.3f ms\n\n",
                    (long long)N, t_pre, t_pre2, last_pre);
        std::printf("| prompt | colsum kernel | per query head | / prefill | per KV head | / prefill | last chunk per "
                    "head: colsum / prefill |\n|---|---|---|---|---|---|---|\n");
        for (int kk = 0; kk < n_kern; ++kk)
            std::printf("| %lld | %s | %.2f ms | %.3fx | %.2f ms | %.3fx | %.3f / %.3f ms (%.3fx) |\n", (long long)N,
                        kernel_names[kk], t_cs[kk][0], t_cs[kk][0] / t_pre, t_cs[kk][1], t_cs[kk][1] / t_pre,
                        last_cs[kk][0], last_pre, last_cs[kk][0] / last_pre);
        std::printf("\n");

        // decode step, batch 1: the split-K kernel vs the column-sum row
        {
            const int    n_split = cuda::attn_decode_n_split(1, H, HKV, D, N);
            const size_t wsb     = cuda::attn_decode_workspace_bytes(1, H, D, n_split);
            void *       ws      = nullptr;
            int32_t *    dn      = nullptr;
            LC_CUDA_CHECK(cudaMalloc(&ws, wsb));
            LC_CUDA_CHECK(cudaMalloc(&dn, 4));
            const int32_t nn = int32_t(N);
            LC_CUDA_CHECK(cudaMemcpy(dn, &nn, 4, cudaMemcpyHostToDevice));
            cuda::attn_decode_args da;
            da.q               = q;
            da.n_seq           = 1;
            da.n_head          = H;
            da.k_pool          = k;
            da.v_pool          = v;
            da.n_head_kv       = HKV;
            da.head_dim        = D;
            da.pages           = dpages;
            da.pages_stride    = n_pages;
            da.n_kv            = dn;
            da.n_kv_max        = N;
            da.scale           = scale;
            da.o               = o;
            da.o_f32           = false;
            da.lse             = lse;
            da.workspace       = ws;
            da.workspace_bytes = wsb;
            const double td    = median_ms(std::max(reps, 10), [&] { check(cuda::attn_decode(da, nullptr)); });
            cuda::attn_colsum_decode_args cd;
            cd.q             = q;
            cd.n_seq         = 1;
            cd.n_head        = H;
            cd.k_pool        = k;
            cd.n_head_kv     = HKV;
            cd.head_dim      = D;
            cd.pages         = dpages;
            cd.pages_stride  = n_pages;
            cd.n_kv          = dn;
            cd.n_kv_max      = N;
            cd.scale         = scale;
            cd.lse           = lse;
            cd.per_kv_head   = false;
            cd.colsum        = cs;
            cd.colsum_stride = N;
            cd.seq_stride    = int64_t(H) * N;
            const double tc  = median_ms(std::max(reps, 10), [&] { check(cuda::attn_colsum_decode(cd, nullptr)); });
            std::printf("| decode step, batch 1, context | dense decode | colsum row | overhead |\n|---|---|---|---|\n"
                        "| %lld | %.3f ms | %.3f ms | %.1f%% |\n\n",
                        (long long)N, td, tc, 100 * tc / td);
            LC_CUDA_CHECK(cudaFree(ws));
            LC_CUDA_CHECK(cudaFree(dn));
        }

        // eviction at the end of the prompt, one layer: keep sets + D2O merge + compaction at `budget`
        {
            const int64_t B        = std::max<int64_t>(1, std::llround(budget * double(N)));
            const int64_t n_sink   = std::min<int64_t>(4, B);
            const int64_t n_recent = std::llround(0.5 * double(B - n_sink));
            const int64_t n_heavy  = B - n_sink - n_recent;
            const int64_t n_keep   = cuda::evict_keep_count(N, n_sink, n_recent, n_heavy);
            int32_t *     keep     = nullptr;
            LC_CUDA_CHECK(cudaMalloc(&keep, size_t(HKV) * n_keep * 4));
            const size_t  ws_keep = cuda::evict_keep_workspace_bytes(HKV, N);
            const size_t  ws_m    = cuda::d2o_merge_workspace_bytes(HKV, N, n_keep);
            const int64_t cchunk  = 8192;
            const size_t  ws_c    = cuda::kv_compact_workspace_bytes(HKV, D, cchunk);
            void *        ws      = nullptr;
            LC_CUDA_CHECK(cudaMalloc(&ws, std::max({ws_keep, ws_m, ws_c})));
            float * score = nullptr;
            LC_CUDA_CHECK(cudaMalloc(&score, size_t(H) * N * 4));
            cuda::d2o_tau_state * tau    = nullptr;
            int64_t *             merged = nullptr;
            LC_CUDA_CHECK(cudaMalloc(&tau, sizeof(cuda::d2o_tau_state)));
            LC_CUDA_CHECK(cudaMalloc(&merged, 8));
            LC_CUDA_CHECK(cudaMemcpy(kb, k, pool_el * 2, cudaMemcpyDeviceToDevice));
            LC_CUDA_CHECK(cudaMemcpy(vb, v, pool_el * 2, cudaMemcpyDeviceToDevice));

            cuda::kv_paged_mut kv;
            kv.k_pool    = k;
            kv.v_pool    = v;
            kv.pages     = dpages;
            kv.n_head_kv = HKV;
            kv.head_dim  = D;
            cuda::evict_keep_args ka;
            ka.score           = score;
            ka.score_stride    = N;
            ka.rows_per_kv     = G;
            ka.n_head_kv       = HKV;
            ka.n               = N;
            ka.n_sink          = n_sink;
            ka.n_recent        = n_recent;
            ka.n_heavy         = n_heavy;
            ka.keep            = keep;
            ka.keep_stride     = n_keep;
            ka.workspace       = ws;
            ka.workspace_bytes = ws_keep;
            cuda::d2o_merge_args ma;
            ma.kv              = kv;
            ma.n               = N;
            ma.keep            = keep;
            ma.keep_stride     = n_keep;
            ma.n_keep          = n_keep;
            ma.tau             = tau;
            ma.merged          = merged;
            ma.workspace       = ws;
            ma.workspace_bytes = ws_m;
            cuda::kv_compact_args xa;
            xa.kv              = kv;
            xa.keep            = keep;
            xa.keep_stride     = n_keep;
            xa.n_keep          = n_keep;
            xa.score           = score;
            xa.score_stride    = N;
            xa.rows_per_kv     = G;
            xa.workspace       = ws;
            xa.workspace_bytes = ws_c;
            xa.chunk           = cchunk;
            auto restore       = [&] {
                LC_CUDA_CHECK(cudaMemcpy(k, kb, pool_el * 2, cudaMemcpyDeviceToDevice));
                LC_CUDA_CHECK(cudaMemcpy(v, vb, pool_el * 2, cudaMemcpyDeviceToDevice));
                LC_CUDA_CHECK(cudaMemcpy(score, cs, size_t(H) * N * 4, cudaMemcpyDeviceToDevice));
                LC_CUDA_CHECK(cudaMemset(tau, 0, sizeof(cuda::d2o_tau_state)));
            };
            std::vector<double> tk, tm, tc, tall;
            for (int r = 0; r <= std::max(reps, 5); ++r) {
                restore();
                cudaEvent_t e[4];
                for (auto & x : e) LC_CUDA_CHECK(cudaEventCreate(&x));
                LC_CUDA_CHECK(cudaEventRecord(e[0]));
                check(cuda::evict_keep(ka, nullptr));
                LC_CUDA_CHECK(cudaEventRecord(e[1]));
                check(cuda::d2o_merge(ma, nullptr));
                LC_CUDA_CHECK(cudaEventRecord(e[2]));
                check(cuda::kv_compact(xa, nullptr));
                LC_CUDA_CHECK(cudaEventRecord(e[3]));
                LC_CUDA_CHECK(cudaEventSynchronize(e[3]));
                float a = 0, b = 0, c = 0;
                LC_CUDA_CHECK(cudaEventElapsedTime(&a, e[0], e[1]));
                LC_CUDA_CHECK(cudaEventElapsedTime(&b, e[1], e[2]));
                LC_CUDA_CHECK(cudaEventElapsedTime(&c, e[2], e[3]));
                for (auto & x : e) LC_CUDA_CHECK(cudaEventDestroy(x));
                if (r == 0) continue; // warm-up
                tk.push_back(a);
                tm.push_back(b);
                tc.push_back(c);
                tall.push_back(a + b + c);
            }
            auto med = [](std::vector<double> x) {
                std::sort(x.begin(), x.end());
                return x[x.size() / 2];
            };
            int64_t nm = 0;
            LC_CUDA_CHECK(cudaMemcpy(&nm, merged, 8, cudaMemcpyDeviceToHost));
            std::printf("| prompt | kept / layer / KV head | evict_keep | d2o_merge | kv_compact | total per layer | "
                        "rows merged |\n|---|---|---|---|---|---|---|\n");
            std::printf("| %lld | %lld (%.0f%%) | %.3f ms | %.3f ms | %.3f ms | %.3f ms | %lld of %lld |\n\n",
                        (long long)N, (long long)n_keep, 100 * budget, med(tk), med(tm), med(tc), med(tall),
                        (long long)nm, (long long)(HKV * (N - n_keep)));
            LC_CUDA_CHECK(cudaFree(keep));
            LC_CUDA_CHECK(cudaFree(ws));
            LC_CUDA_CHECK(cudaFree(score));
            LC_CUDA_CHECK(cudaFree(tau));
            LC_CUDA_CHECK(cudaFree(merged));
        }
        for (void * p : {(void *)k, (void *)v, (void *)kb, (void *)vb, (void *)q, (void *)dpages, (void *)o,
                         (void *)lse, (void *)cs})
            LC_CUDA_CHECK(cudaFree(p));
    }
    return 0;
}
