// Vertical-slash sparse prefill on the GPU, one layer at Llama-3-8B shapes (32 query heads, 8 KV heads, D = 128,
// bf16): the GPU index (estimate, select, plan), the sparse kernel (attn-sparse-prefill.cuh: AUTO, i.e. the paired
// wgmma kernel on the H100, and the one-block wgmma and mma.sync ones for reference) and the end-to-end path with
// its dense fallback (vslash_attention_gpu), beside our dense kernel. Two diagonal structures:
// "scattered", the plan the index builds from random Q/K (its top diagonals are noise, spread over all offsets),
// and "clustered", offsets in 4 contiguous bands (the local band plus 3 at random distances) with v random columns,
// planned by the same GPU plan builder. --dump DIR writes each structure's column and offset lists, sampled output
// rows and a JSON line of timings for bench/cuda/minference-vslash-bench.py, which rebuilds the same Q/K/V.
// Usage: longctx-cuda-sparse-bench [--n N,N,...] [--v 1000] [--s 6096] [--iters 3] [--dense-max N]
//        [--scattered-max N] [--dense-ratio 0.45] [--dump DIR]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/attn-sparse-prefill.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/vslash-index.cuh"

using namespace lc;

namespace {

__global__ void fill_random(bf16_t * p, size_t n, uint32_t seed, float sigma) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t x = uint32_t(i) * 2654435761u ^ seed;
        x ^= x >> 15;
        x *= 2246822519u;
        x ^= x >> 13;
        const float u = (x & 0xffffff) / float(0x1000000) - 0.5f; // uniform, variance 1/12
        const __nv_bfloat16 b = __float2bfloat16(u * sigma * 3.4641f);
        p[i] = *reinterpret_cast<const bf16_t *>(&b);
    }
}

float elapsed(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    LC_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

template <typename F> float time_ms(F && f, int iters) {
    cudaEvent_t a, b;
    LC_CUDA_CHECK(cudaEventCreate(&a));
    LC_CUDA_CHECK(cudaEventCreate(&b));
    f(); // warm-up
    std::vector<float> ts;
    for (int i = 0; i < iters; ++i) {
        LC_CUDA_CHECK(cudaEventRecord(a));
        f();
        LC_CUDA_CHECK(cudaEventRecord(b));
        LC_CUDA_CHECK(cudaEventSynchronize(b));
        ts.push_back(elapsed(a, b));
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

} // namespace


namespace {

void write_file(const std::string & path, const void * p, size_t bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char *>(p), std::streamsize(bytes));
    if (!f) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        std::exit(1);
    }
}

template <typename T> void dump_dev(const std::string & path, const T * d, size_t n) {
    std::vector<T> h(n);
    LC_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    write_file(path, h.data(), n * sizeof(T));
}

float med(std::vector<float> x) {
    std::sort(x.begin(), x.end());
    return x.empty() ? 0.f : x[x.size() / 2];
}

// 64-key steps of the paired wgmma kernel (two adjacent blocks of a head walk the union of their ranges in
// windows of 64 keys, then the union of their columns 64 at a time; above 4096 columns the two lists one after
// the other).
int64_t pair_steps(const prefill_plan & p) {
    int64_t       n  = 0;
    const int64_t nb = p.n_qblk();
    for (const prefill_head_plan & hp : p.heads)
        for (int64_t b = 0; b < nb; b += 2) {
            const int64_t          e = std::min(b + 2, nb);
            std::vector<key_range> rg(hp.ranges.begin() + hp.range_off[size_t(b)],
                                      hp.ranges.begin() + hp.range_off[size_t(e)]);
            std::sort(rg.begin(), rg.end(), [](const key_range & x, const key_range & y) { return x.begin < y.begin; });
            int64_t ub = -1, ue = -1;
            for (const key_range & r : rg) {
                if (r.begin <= ue) {
                    ue = std::max<int64_t>(ue, r.end);
                    continue;
                }
                if (ue > ub) n += (ue - ub + 63) / 64;
                ub = r.begin;
                ue = r.end;
            }
            if (ue > ub) n += (ue - ub + 63) / 64;
            const int64_t c0 = hp.col_off[size_t(b)], c1 = hp.col_off[size_t(b) + 1], c2 = hp.col_off[size_t(e)];
            if (c2 - c0 <= 4096) {
                std::vector<int32_t> u;
                std::set_union(hp.cols.begin() + c0, hp.cols.begin() + c1, hp.cols.begin() + c1, hp.cols.begin() + c2,
                               std::back_inserter(u));
                n += (int64_t(u.size()) + 63) / 64;
            } else {
                n += (c1 - c0 + 63) / 64 + (c2 - c1 + 63) / 64;
            }
        }
    return n;
}

// The query blocks whose output rows are dumped: first, two inner, last.
std::vector<int64_t> sample_blocks(int64_t N) {
    const int64_t nb = (N + 63) / 64;
    return {0, nb / 3, 2 * nb / 3, nb - 1};
}

} // namespace

int main(int argc, char ** argv) {
    std::vector<int64_t> ns = {32768, 131072};
    int64_t              v = 1000, s = 6096, dense_max = INT64_MAX, scattered_max = INT64_MAX;
    int                  iters       = 3;
    float                dense_ratio = 0.45f;
    std::string          dump;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--n")) {
            ns.clear();
            for (char * p = argv[i + 1]; *p;) {
                ns.push_back(std::strtoll(p, &p, 10));
                if (*p == ',') ++p;
            }
        } else if (!std::strcmp(argv[i], "--v")) {
            v = std::atoll(argv[i + 1]);
        } else if (!std::strcmp(argv[i], "--s")) {
            s = std::atoll(argv[i + 1]);
        } else if (!std::strcmp(argv[i], "--iters")) {
            iters = std::max(1, std::atoi(argv[i + 1]));
        } else if (!std::strcmp(argv[i], "--dense-max")) {
            dense_max = std::atoll(argv[i + 1]);
        } else if (!std::strcmp(argv[i], "--scattered-max")) {
            scattered_max = std::atoll(argv[i + 1]);
        } else if (!std::strcmp(argv[i], "--dense-ratio")) {
            dense_ratio = float(std::atof(argv[i + 1]));
        } else if (!std::strcmp(argv[i], "--dump")) {
            dump = argv[i + 1];
        }
    }
    const int   H = 32, HKV = 8, D = 128;
    const float scale = 1.f / std::sqrt(float(D));
    std::printf("| N | structure | estimate ms | select ms | plan ms | index total ms | sparse kernel ms "
                "| sparse total ms | index share | pairs computed | steps / dense tiles | auto path | auto total ms "
                "| our dense ms | mma.sync sparse kernel ms | 1-block wgmma sparse kernel ms "
                "| pair steps / dense tiles | serial paired wgmma sparse kernel ms |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int64_t N : ns) {
        const int64_t n_pages = (N + 63) / 64;
        const size_t  kv_el   = size_t(n_pages) * HKV * 64 * D;
        bf16_t *      q = nullptr, *k = nullptr, *vv = nullptr, *o = nullptr;
        int32_t *     pages = nullptr;
        LC_CUDA_CHECK(cudaMalloc(&q, size_t(N) * H * D * 2));
        LC_CUDA_CHECK(cudaMalloc(&k, kv_el * 2));
        LC_CUDA_CHECK(cudaMalloc(&vv, kv_el * 2));
        LC_CUDA_CHECK(cudaMalloc(&o, size_t(N) * H * D * 2));
        LC_CUDA_CHECK(cudaMalloc(&pages, n_pages * 4));
        fill_random<<<1024, 256>>>(q, size_t(N) * H * D, 1, 1.f);
        fill_random<<<1024, 256>>>(k, kv_el, 2, 1.f);
        fill_random<<<1024, 256>>>(vv, kv_el, 3, 1.f);
        LC_CUDA_CHECK(cudaGetLastError());
        std::vector<int32_t> hp(static_cast<size_t>(n_pages));
        for (int64_t i = 0; i < n_pages; ++i) hp[size_t(i)] = int32_t(i);
        LC_CUDA_CHECK(cudaMemcpy(pages, hp.data(), n_pages * 4, cudaMemcpyHostToDevice));
        const std::string pre = dump.empty() ? "" : dump + "/n" + std::to_string(N);
        if (!dump.empty()) { // the first elements of Q, K and V, to check that the driver rebuilt the same values
            dump_dev(pre + "-head-q.bf16", q, 4096);
            dump_dev(pre + "-head-k.bf16", k, 4096);
            dump_dev(pre + "-head-v.bf16", vv, 4096);
        }
        cuda::attn_kv_paged kv;
        kv.k_pool        = k;
        kv.v_pool        = vv;
        kv.pages         = pages;
        kv.n_pages_total = n_pages;
        kv.n_kv          = N;
        kv.n_head_kv     = HKV;
        kv.head_dim      = D;

        cuda::attn_prefill_args da;
        da.q       = q;
        da.n_q     = N;
        da.n_head  = H;
        da.kv      = kv;
        da.scale   = scale;
        da.o       = o;
        da.o_f32   = false;
        float dense_ms = -1;
        auto  dense    = [&] {
            if (dense_ms < 0)
                dense_ms = time_ms([&] { (void)cuda::attn_prefill(da, cuda::attn_prefill_kernel::AUTO, nullptr); },
                                   iters);
            return dense_ms;
        };
        if (N <= dense_max) dense();

        cuda::vslash_workspace ws;
        cuda::prefill_plan_buf plan;
        const int64_t          ve = cuda::vslash_v_eff(v, N), se = cuda::vslash_s_eff(s, N);
        LC_CUDA_CHECK(cuda::vslash_index_gpu(q, N, 0, H, kv, scale, v, s, ws, plan, nullptr).is_ok()
                          ? cudaSuccess
                          : cudaErrorUnknown); // sizes the workspace
        LC_CUDA_CHECK(cudaDeviceSynchronize());
        cudaEvent_t e[5];
        for (auto & x : e) LC_CUDA_CHECK(cudaEventCreate(&x));

        // clustered lists: offsets in 4 bands of se/4 (band 0 at offset 0), v random columns (first 30 forced)
        std::mt19937         rng(7);
        std::vector<int32_t> cl_offs, cl_cols;
        {
            const int64_t band = se / 4;
            std::vector<char> on(size_t(N), 0);
            for (int64_t o2 = 0; o2 < band + se % 4; ++o2) on[size_t(o2)] = 1;
            for (int b = 1; b < 4; ++b) {
                const int64_t st = std::uniform_int_distribution<int64_t>(band, std::max(band, N / 2 - band))(rng);
                for (int64_t o2 = st; o2 < st + band; ++o2) on[size_t(o2)] = 1;
            }
            for (int64_t o2 = 0; o2 < N && int64_t(cl_offs.size()) < se; ++o2)
                if (on[size_t(o2)]) cl_offs.push_back(int32_t(o2));
            for (int64_t o2 = 0; int64_t(cl_offs.size()) < se; ++o2) // bands overlapped: top up the local band
                if (!on[size_t(o2)]) cl_offs.push_back(int32_t(o2));
            std::sort(cl_offs.begin(), cl_offs.end());
            std::vector<char> c_on(size_t(N), 0);
            for (int64_t j = 0; j < std::min<int64_t>(30, N); ++j) c_on[size_t(j)] = 1;
            int64_t n_on = std::min<int64_t>(30, N);
            while (n_on < ve) {
                const int64_t j = std::uniform_int_distribution<int64_t>(0, N - 1)(rng);
                if (!c_on[size_t(j)]) c_on[size_t(j)] = 1, ++n_on;
            }
            for (int64_t j = 0; j < N; ++j)
                if (c_on[size_t(j)]) cl_cols.push_back(int32_t(j));
        }
        std::vector<int32_t> all_offs, all_cols;
        for (int h = 0; h < H; ++h) {
            all_offs.insert(all_offs.end(), cl_offs.begin(), cl_offs.end());
            all_cols.insert(all_cols.end(), cl_cols.begin(), cl_cols.end());
        }

        for (int structure = 0; structure < 2; ++structure) {
            if (structure == 0 && N > scattered_max) continue;
            const char * sname = structure == 0 ? "scattered" : "clustered";
            std::vector<float> t_est, t_sel, t_plan, t_steps, t_kern, t_sync, t_one, t_ser;
            cuda::prefill_plan_steps steps;
            for (int it = 0; it <= iters; ++it) {
                LC_CUDA_CHECK(cudaEventRecord(e[0]));
                (void)cuda::vslash_estimate_gpu(q, N, 0, H, kv, scale, ws.vertical, ws.slash, ws, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[1]));
                cuda::vslash_select_gpu(ws.vertical, ws.slash, N, H, ve, se, ws.cols, ws.offsets, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[2]));
                if (structure == 1) { // the clustered lists replace the selected ones (not timed: a stand-in)
                    LC_CUDA_CHECK(cudaEventSynchronize(e[2]));
                    LC_CUDA_CHECK(cudaMemcpy(ws.offsets, all_offs.data(), all_offs.size() * 4, cudaMemcpyHostToDevice));
                    LC_CUDA_CHECK(cudaMemcpy(ws.cols, all_cols.data(), all_cols.size() * 4, cudaMemcpyHostToDevice));
                    LC_CUDA_CHECK(cudaEventRecord(e[2]));
                }
                cuda::vslash_plan_gpu(ws.cols, ve, ws.offsets, se, N, 0, H, ws, plan, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[3]));
                steps = cuda::prefill_plan_steps_gpu(plan, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[4]));
                LC_CUDA_CHECK(cudaEventSynchronize(e[4]));
                const float t_e = elapsed(e[0], e[1]), t_s = elapsed(e[1], e[2]);
                cuda::attn_sparse_prefill_args sa;
                sa.q     = q;
                sa.plan  = plan.view;
                sa.kv    = kv;
                sa.scale = scale;
                sa.o     = o;
                sa.o_f32 = false;
                sa.kernel = cuda::attn_sparse_prefill_kernel::MMA_SYNC; // the portable kernel, for reference
                LC_CUDA_CHECK(cudaEventRecord(e[0]));
                (void)cuda::attn_sparse_prefill(sa, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[1]));
                LC_CUDA_CHECK(cudaEventSynchronize(e[1]));
                const float km_sync = elapsed(e[0], e[1]);
                sa.kernel = cuda::attn_sparse_prefill_kernel::WGMMA; // one 64-query block per CTA
                LC_CUDA_CHECK(cudaEventRecord(e[0]));
                (void)cuda::attn_sparse_prefill(sa, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[1]));
                LC_CUDA_CHECK(cudaEventSynchronize(e[1]));
                const float km_one = elapsed(e[0], e[1]);
                sa.kernel = cuda::attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL; // paired, consumer steps in turn
                LC_CUDA_CHECK(cudaEventRecord(e[0]));
                (void)cuda::attn_sparse_prefill(sa, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[1]));
                LC_CUDA_CHECK(cudaEventSynchronize(e[1]));
                const float km_ser = elapsed(e[0], e[1]);
                sa.kernel = cuda::attn_sparse_prefill_kernel::AUTO; // paired wgmma on the H100; its output is dumped
                LC_CUDA_CHECK(cudaEventRecord(e[0]));
                (void)cuda::attn_sparse_prefill(sa, nullptr);
                LC_CUDA_CHECK(cudaEventRecord(e[1]));
                LC_CUDA_CHECK(cudaEventSynchronize(e[1]));
                const float km = elapsed(e[0], e[1]);
                if (it == 0) continue; // warm-up
                t_est.push_back(t_e);
                t_sel.push_back(structure == 1 ? 0.f : t_s);
                t_plan.push_back(elapsed(e[2], e[3]));
                t_steps.push_back(elapsed(e[3], e[4]));
                t_kern.push_back(km);
                t_sync.push_back(km_sync);
                t_one.push_back(km_one);
                t_ser.push_back(km_ser);
            }
            LC_CUDA_CHECK(cudaDeviceSynchronize());
            const float est = med(t_est), sel = med(t_sel), pl = med(t_plan), stp = med(t_steps), kern = med(t_kern);
            const float kern_sync = med(t_sync), kern_one = med(t_one), kern_ser = med(t_ser);
            const float idx        = est + sel + pl;
            const bool  auto_dense = double(steps.sparse) > double(dense_ratio) * double(steps.dense);
            if (!dump.empty()) { // o holds the sparse kernel's output: sample rows, and the lists it was planned from
                const std::string sp = pre + "-" + sname;
                dump_dev(sp + "-cols.i32", ws.cols, size_t(H) * ve);
                dump_dev(sp + "-offs.i32", ws.offsets, size_t(H) * se);
                std::vector<bf16_t> rows;
                for (int64_t b : sample_blocks(N)) {
                    const int64_t r0 = b * 64, r1 = std::min(N, r0 + 64);
                    const size_t  n  = size_t(r1 - r0) * H * D;
                    const size_t  at = rows.size();
                    rows.resize(at + n);
                    LC_CUDA_CHECK(cudaMemcpy(rows.data() + at, o + size_t(r0) * H * D, n * 2, cudaMemcpyDeviceToHost));
                }
                write_file(sp + "-o.bf16", rows.data(), rows.size() * 2);
            }
            const float auto_kern  = auto_dense ? dense() : kern;
            const float auto_total = idx + stp + auto_kern;
            prefill_plan hp2;
            cuda::prefill_plan_download(plan, hp2);
            const prefill_plan_pairs pc = prefill_plan_count(hp2);
            const double             pairs = double(pc.computed) / double(pc.causal);
            const double             sr    = double(steps.sparse) / double(steps.dense);
            const double             psr   = double(pair_steps(hp2)) / double(steps.dense);
            char dense_s[32] = "-";
            if (dense_ms >= 0) std::snprintf(dense_s, sizeof dense_s, "%.2f", dense_ms);
            std::printf("| %lld | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f%% | %.2f%% | %.3f | %s | %.2f "
                        "| %s | %.2f | %.2f | %.3f | %.2f |\n",
                        (long long)N, sname, est, sel, pl, idx, kern, idx + kern, 100.0 * idx / (idx + kern),
                        100.0 * pairs, sr, auto_dense ? "dense" : "sparse", auto_total, dense_s, kern_sync, kern_one,
                        psr, kern_ser);
            std::fflush(stdout);
            if (!dump.empty()) {
                FILE * f = std::fopen((dump + "/ours.jsonl").c_str(), "a");
                if (f != nullptr) {
                    std::fprintf(f,
                                 "{\"n\": %lld, \"structure\": \"%s\", \"estimate_ms\": %.4f, \"select_ms\": %.4f, "
                                 "\"plan_ms\": %.4f, \"steps_ms\": %.4f, \"sparse_kernel_ms\": %.4f, "
                                 "\"pairs\": %.6f, \"steps_ratio\": %.6f, \"auto_dense\": %s, \"auto_total_ms\": %.4f, "
                                 "\"dense_ms\": %.4f, \"mma_sync_kernel_ms\": %.4f, \"wgmma_1block_kernel_ms\": %.4f, "
                                 "\"pair_steps_ratio\": %.6f, \"pair_serial_kernel_ms\": %.4f, \"v\": %lld, \"s\": %lld, \"iters\": %d}\n",
                                 (long long)N, sname, est, sel, pl, stp, kern, pairs, sr, auto_dense ? "true" : "false",
                                 auto_total, dense_ms, kern_sync, kern_one, psr, kern_ser, (long long)ve, (long long)se, iters);
                    std::fclose(f);
                }
            }
        }
        for (auto & x : e) cudaEventDestroy(x);
        cudaFree(q);
        cudaFree(k);
        cudaFree(vv);
        cudaFree(o);
        cudaFree(pages);
    }
    return 0;
}
