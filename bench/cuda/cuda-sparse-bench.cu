// Vertical-slash sparse prefill on the GPU, one layer at Llama-3-8B shapes (32 query heads, 8 KV heads, D = 128,
// bf16): the GPU index (estimate, select, plan) and the sparse kernel (attn-sparse-prefill.cuh), beside our dense
// kernel. Two diagonal structures for the kernel: "scattered", the plan the index builds from random Q/K (its top
// diagonals are noise, spread over all offsets), and "clustered", offsets in 4 contiguous bands (the local band plus
// 3 at random distances) with v random columns, planned by the same GPU plan builder. cuDNN dense comes from
// bench/cuda/sdpa-cudnn-prefill.py. Usage: longctx-cuda-sparse-bench [--n N,N,...] [--v 1000] [--s 6096]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

int main(int argc, char ** argv) {
    std::vector<int64_t> ns = {32768, 131072};
    int64_t              v = 1000, s = 6096;
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
        }
    }
    const int   H = 32, HKV = 8, D = 128;
    const float scale = 1.f / std::sqrt(float(D));
    std::printf("| N | structure | estimate ms | select ms | plan ms | index total ms | sparse kernel ms | sparse total ms "
                "| index share | pairs computed | our dense ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
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
        std::vector<int32_t> hp(static_cast<size_t>(n_pages));
        for (int64_t i = 0; i < n_pages; ++i) hp[size_t(i)] = int32_t(i);
        LC_CUDA_CHECK(cudaMemcpy(pages, hp.data(), n_pages * 4, cudaMemcpyHostToDevice));
        cuda::attn_kv_paged kv;
        kv.k_pool        = k;
        kv.v_pool        = vv;
        kv.pages         = pages;
        kv.n_pages_total = n_pages;
        kv.n_kv          = N;
        kv.n_head_kv     = HKV;
        kv.head_dim      = D;

        cuda::attn_prefill_args da;
        da.q      = q;
        da.n_q    = N;
        da.n_head = H;
        da.kv     = kv;
        da.scale  = scale;
        da.o      = o;
        da.o_f32  = false;
        const float dense_ms =
            time_ms([&] { (void)cuda::attn_prefill(da, cuda::attn_prefill_kernel::AUTO, nullptr); }, 3);

        cuda::vslash_workspace ws;
        cuda::prefill_plan_buf plan;
        const int64_t          ve = cuda::vslash_v_eff(v, N), se = cuda::vslash_s_eff(s, N);
        LC_CUDA_CHECK(cuda::vslash_index_gpu(q, N, 0, H, kv, scale, v, s, ws, plan, nullptr).is_ok()
                          ? cudaSuccess
                          : cudaErrorUnknown); // sizes the workspace
        LC_CUDA_CHECK(cudaDeviceSynchronize());
        cudaEvent_t e[4];
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
            std::vector<float> t_est, t_sel, t_plan, t_kern;
            for (int it = 0; it < 4; ++it) {
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
                LC_CUDA_CHECK(cudaEventSynchronize(e[3]));
                cuda::attn_sparse_prefill_args sa;
                sa.q     = q;
                sa.plan  = plan.view;
                sa.kv    = kv;
                sa.scale = scale;
                sa.o     = o;
                sa.o_f32 = false;
                const float km = time_ms([&] { (void)cuda::attn_sparse_prefill(sa, nullptr); }, 1);
                if (it == 0) continue; // warm-up
                t_est.push_back(elapsed(e[0], e[1]));
                t_sel.push_back(structure == 1 ? 0.f : elapsed(e[1], e[2]));
                t_plan.push_back(elapsed(e[2], e[3]));
                t_kern.push_back(km);
            }
            auto med = [](std::vector<float> x) {
                std::sort(x.begin(), x.end());
                return x[x.size() / 2];
            };
            const float est = med(t_est), sel = med(t_sel), pl = med(t_plan), kern = med(t_kern);
            // pairs computed: from the plan on the host
            prefill_plan hp2;
            cuda::prefill_plan_download(plan, hp2);
            const prefill_plan_pairs pc = prefill_plan_count(hp2);
            std::printf("| %lld | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f%% | %.2f%% | %.2f |\n",
                        (long long)N, structure == 0 ? "scattered (index of random Q/K)" : "clustered (4 bands)", est,
                        sel, pl, est + sel + pl, kern, est + sel + pl + kern,
                        100.0 * (est + sel + pl) / (est + sel + pl + kern), 100.0 * pc.computed / pc.causal, dense_ms);
            std::fflush(stdout);
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
