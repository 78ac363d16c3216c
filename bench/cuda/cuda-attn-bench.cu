// Times the CUDA attention kernels on the device: causal prefill in TFLOP/s (4 * N^2/2 * D * n_head FLOPs) per
// variant, split-K paged decode in GB/s of K and V read (L2 flushed before each run), and the device-to-device
// copy bandwidth (bytes read + written) as the ceiling. Medians of CUDA-event timings after a warm-up.
// Usage: longctx-cuda-attn-bench [--prefill 8192,32768,131072] [--decode 32768,131072] [--batch 1,16] [--splits 0]
//                                [--kernels mma_sync,wgmma_basic,wgmma_overlap,wgmma] [--json FILE]
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "core/fp16.h"

#include "bench-util.cuh"

namespace {

using namespace lc;
using namespace lc::cuda_bench;

constexpr int H = 32, HKV = 8, D = 128;

template <typename F> double median_ms(F && fn, int warm, int reps, void * flush = nullptr, size_t flush_bytes = 0) {
    cudaEvent_t e0, e1;
    LC_CUDA_CHECK(cudaEventCreate(&e0));
    LC_CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < warm; ++i) fn();
    std::vector<double> ts;
    for (int i = 0; i < reps; ++i) {
        if (flush != nullptr) LC_CUDA_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes));
        LC_CUDA_CHECK(cudaEventRecord(e0));
        fn();
        LC_CUDA_CHECK(cudaEventRecord(e1));
        LC_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        LC_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        ts.push_back(ms);
    }
    LC_CUDA_CHECK(cudaEventDestroy(e0));
    LC_CUDA_CHECK(cudaEventDestroy(e1));
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

float bf(const bf16_t * p, size_t i) {
    return bf16_to_fp32(p[i]);
}

std::string json;

void json_row(const char * fmt, ...) __attribute__((format(printf, 1, 2)));
void json_row(const char * fmt, ...) {
    char    buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    json += json.empty() ? "[\n " : ",\n ";
    json += buf;
}

void bench_prefill(int64_t N, const std::vector<std::string> & kernels) {
    const int64_t n_pages = (N + 63) / 64;
    const size_t  q_elems = size_t(N) * H * D, pool_elems = size_t(n_pages) * HKV * 64 * D;
    void *        q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
    float *       lse   = nullptr;
    int32_t *     pages = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&q, q_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&o, q_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&k, pool_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&v, pool_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&lse, size_t(N) * H * 4));
    LC_CUDA_CHECK(cudaMalloc(&pages, n_pages * 4));
    fill(q, q_elems, 1, 2.f); // uniform [-2, 2): scores of spread ~1.3 after scaling, a peaked softmax
    fill(k, pool_elems, 2, 2.f);
    fill(v, pool_elems, 3, 1.f);
    std::vector<int32_t> hp(static_cast<size_t>(n_pages));
    std::iota(hp.begin(), hp.end(), 0);
    std::shuffle(hp.begin(), hp.end(), std::mt19937(7));
    LC_CUDA_CHECK(cudaMemcpy(pages, hp.data(), n_pages * 4, cudaMemcpyHostToDevice));

    cuda::attn_prefill_args a;
    a.q                = static_cast<const bf16_t *>(q);
    a.n_q              = N;
    a.pos0             = 0;
    a.n_head           = H;
    a.kv.k_pool        = static_cast<const bf16_t *>(k);
    a.kv.v_pool        = static_cast<const bf16_t *>(v);
    a.kv.pages         = pages;
    a.kv.n_pages_total = n_pages;
    a.kv.n_kv          = N;
    a.kv.n_head_kv     = HKV;
    a.kv.head_dim      = D;
    a.scale            = 1.f / std::sqrt(float(D));
    a.o                = o;
    a.o_f32            = false;
    a.lse              = lse;
    const double flops = 4.0 * double(N) * double(N) / 2 * D * H;

    // spot check: a few rows against an fp64 reference on the host
    std::vector<bf16_t> hq(q_elems), hk(pool_elems), hv(pool_elems), ho(q_elems);
    const bool          check = N <= 32768;
    if (check) {
        LC_CUDA_CHECK(cudaMemcpy(hq.data(), q, q_elems * 2, cudaMemcpyDeviceToHost));
        LC_CUDA_CHECK(cudaMemcpy(hk.data(), k, pool_elems * 2, cudaMemcpyDeviceToHost));
        LC_CUDA_CHECK(cudaMemcpy(hv.data(), v, pool_elems * 2, cudaMemcpyDeviceToHost));
    }
    for (const auto & kname : kernels) {
        const auto kern = kname == "wgmma"           ? cuda::attn_prefill_kernel::WGMMA
                          : kname == "wgmma_overlap" ? cuda::attn_prefill_kernel::WGMMA_OVERLAP
                          : kname == "wgmma_basic"   ? cuda::attn_prefill_kernel::WGMMA_BASIC
                                                     : cuda::attn_prefill_kernel::MMA_SYNC;
        LC_CUDA_CHECK(cudaMemset(o, 0xff, q_elems * 2));
        const double ms  = median_ms([&] { LC_ASSERT(cuda::attn_prefill(a, kern, nullptr).is_ok(), "prefill"); }, 1,
                                    N > 65536 ? 3 : 5);
        double       err = -1;
        if (check) {
            LC_CUDA_CHECK(cudaMemcpy(ho.data(), o, q_elems * 2, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (int64_t row : {int64_t(0), int64_t(1), N / 3, N / 2 + 17, N - 2, N - 1}) {
                for (int h : {0, 5, 31}) {
                    const int           hk_ = h / (H / HKV);
                    std::vector<double> s(size_t(row) + 1);
                    double              mx = -1e300;
                    for (int64_t j = 0; j <= row; ++j) {
                        const size_t kb = (size_t(hp[j / 64]) * HKV + hk_) * 64 * D + size_t(j % 64) * D;
                        double       d  = 0;
                        for (int e = 0; e < D; ++e)
                            d += double(bf(hq.data(), (size_t(row) * H + h) * D + e)) * bf(hk.data(), kb + e);
                        s[j] = d * a.scale;
                        mx   = std::max(mx, s[j]);
                    }
                    double              l = 0;
                    std::vector<double> acc(D, 0.0);
                    for (int64_t j = 0; j <= row; ++j) {
                        const double p  = std::exp(s[j] - mx);
                        const size_t vb = (size_t(hp[j / 64]) * HKV + hk_) * 64 * D + size_t(j % 64) * D;
                        l += p;
                        for (int e = 0; e < D; ++e) acc[e] += p * bf(hv.data(), vb + e);
                    }
                    for (int e = 0; e < D; ++e) {
                        const double ref = acc[e] / l, got = bf(ho.data(), (size_t(row) * H + h) * D + e);
                        num += (got - ref) * (got - ref);
                        den += ref * ref;
                    }
                }
            }
            err = num / den;
        }
        std::printf("| prefill | %-13s | %7lld | - | %9.3f | %7.1f TFLOP/s | nmse(18 rows) %s |\n", kname.c_str(),
                    (long long)N, ms, flops / ms / 1e9, err < 0 ? "-" : std::to_string(err).c_str());
        std::fflush(stdout);
        json_row(
            "{\"kind\": \"prefill\", \"kernel\": \"%s\", \"N\": %lld, \"ms\": %.4f, \"tflops\": %.1f, \"nmse\": %.3g}",
            kname.c_str(), (long long)N, ms, flops / ms / 1e9, err);
    }
    LC_CUDA_CHECK(cudaFree(q));
    LC_CUDA_CHECK(cudaFree(o));
    LC_CUDA_CHECK(cudaFree(k));
    LC_CUDA_CHECK(cudaFree(v));
    LC_CUDA_CHECK(cudaFree(lse));
    LC_CUDA_CHECK(cudaFree(pages));
}

void bench_decode(int64_t N, int B, void * flush, size_t flush_bytes, int n_split_arg) {
    const int64_t pps = (N + 63) / 64, n_pages = pps * B;
    const size_t  pool_elems = size_t(n_pages) * HKV * 64 * D;
    void *        q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *ws = nullptr;
    float *       lse   = nullptr;
    int32_t *     pages = nullptr, *lens = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&q, size_t(B) * H * D * 2));
    LC_CUDA_CHECK(cudaMalloc(&o, size_t(B) * H * D * 4));
    LC_CUDA_CHECK(cudaMalloc(&k, pool_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&v, pool_elems * 2));
    LC_CUDA_CHECK(cudaMalloc(&lse, size_t(B) * H * 4));
    LC_CUDA_CHECK(cudaMalloc(&pages, n_pages * 4));
    LC_CUDA_CHECK(cudaMalloc(&lens, B * 4));
    fill(q, size_t(B) * H * D, 4, 2.f);
    fill(k, pool_elems, 5, 2.f);
    fill(v, pool_elems, 6, 1.f);
    std::vector<int32_t> hp(static_cast<size_t>(n_pages));
    std::iota(hp.begin(), hp.end(), 0);
    std::shuffle(hp.begin(), hp.end(), std::mt19937(9)); // sequences' pages interleaved in the pool
    std::vector<int32_t> hl(static_cast<size_t>(B), static_cast<int32_t>(N));
    LC_CUDA_CHECK(cudaMemcpy(pages, hp.data(), n_pages * 4, cudaMemcpyHostToDevice));
    LC_CUDA_CHECK(cudaMemcpy(lens, hl.data(), B * 4, cudaMemcpyHostToDevice));
    const int    n_split  = n_split_arg > 0 ? n_split_arg : cuda::attn_decode_n_split(B, H, HKV, D, N);
    const size_t ws_bytes = cuda::attn_decode_workspace_bytes(B, H, D, n_split);
    LC_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));

    cuda::attn_decode_args a;
    a.q                = static_cast<const bf16_t *>(q);
    a.n_seq            = B;
    a.n_head           = H;
    a.k_pool           = static_cast<const bf16_t *>(k);
    a.v_pool           = static_cast<const bf16_t *>(v);
    a.n_head_kv        = HKV;
    a.head_dim         = D;
    a.pages            = pages;
    a.pages_stride     = pps;
    a.n_kv             = lens;
    a.n_kv_max         = N;
    a.scale            = 1.f / std::sqrt(float(D));
    a.o                = o;
    a.o_f32            = true;
    a.lse              = lse;
    a.workspace        = ws;
    a.workspace_bytes  = ws_bytes;
    a.n_split          = n_split;
    const double bytes = 2.0 * B * HKV * double(N) * D * 2;
    const double ms =
        median_ms([&] { LC_ASSERT(cuda::attn_decode(a, nullptr).is_ok(), "decode"); }, 5, 15, flush, flush_bytes);
    std::printf("| decode  | split-K       | %7lld | %2d | %9.4f | %7.0f GB/s    | n_split %d |\n", (long long)N, B, ms,
                bytes / ms / 1e6, n_split);
    std::fflush(stdout);
    json_row("{\"kind\": \"decode\", \"N\": %lld, \"B\": %d, \"ms\": %.5f, \"GBps\": %.0f, \"n_split\": %d}",
             (long long)N, B, ms, bytes / ms / 1e6, n_split);
    for (void * p : {q, o, k, v, ws, static_cast<void *>(lse), static_cast<void *>(pages), static_cast<void *>(lens)}) {
        LC_CUDA_CHECK(cudaFree(p));
    }
}

void bench_copy() {
    const size_t n = size_t(1) << 31; // 2 GiB each way
    void *       x = nullptr, *y = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&x, n));
    LC_CUDA_CHECK(cudaMalloc(&y, n));
    fill(x, n / 2, 8, 1.f);
    const double ms = median_ms([&] { LC_CUDA_CHECK(cudaMemcpyAsync(y, x, n, cudaMemcpyDeviceToDevice)); }, 2, 10);
    std::printf("| copy    | memcpy        | 2 GiB   | - | %9.4f | %7.0f GB/s    | read + write |\n", ms,
                2.0 * n / ms / 1e6);
    json_row("{\"kind\": \"copy\", \"ms\": %.4f, \"GBps\": %.0f}", ms, 2.0 * n / ms / 1e6);
    LC_CUDA_CHECK(cudaFree(x));
    LC_CUDA_CHECK(cudaFree(y));
}

} // namespace

int main(int argc, char ** argv) {
    std::vector<int64_t>     prefill = {8192, 32768, 131072}, decode = {32768, 131072}, batch = {1, 16}, splits = {0};
    std::vector<std::string> kernels   = {"mma_sync", "wgmma_basic", "wgmma_overlap", "wgmma"};
    const char *             json_path = nullptr;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string f = argv[i];
        if (f == "--prefill")
            prefill = parse_list(argv[i + 1]);
        else if (f == "--decode")
            decode = parse_list(argv[i + 1]);
        else if (f == "--batch")
            batch = parse_list(argv[i + 1]);
        else if (f == "--splits")
            splits = parse_list(argv[i + 1]); // 0: the kernel's own choice
        else if (f == "--json")
            json_path = argv[i + 1];
        else if (f == "--kernels") {
            kernels.clear();
            std::string s = argv[i + 1];
            for (size_t p = 0; p <= s.size();) {
                const size_t q = std::min(s.find(',', p), s.size());
                kernels.push_back(s.substr(p, q - p));
                p = q + 1;
            }
        } else {
            std::fprintf(stderr, "unknown flag %s\n", f.c_str());
            return 2;
        }
    }
    cudaDeviceProp prop{};
    LC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int drv = 0, rt = 0;
    LC_CUDA_CHECK(cudaDriverGetVersion(&drv));
    LC_CUDA_CHECK(cudaRuntimeGetVersion(&rt));
    std::printf("device: %s, %d SMs, L2 %d MB, driver API %d, runtime %d\n\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize >> 20, drv, rt);
    std::printf("| op      | kernel        |       N |  B |   ms      | rate           | note |\n");
    std::printf("|---------|---------------|--------:|---:|----------:|---------------:|------|\n");
    bench_copy();
    for (int64_t n : prefill) {
        if (n > 0) bench_prefill(n, kernels); // --prefill 0: none
    }
    const size_t flush_bytes = size_t(256) << 20;
    void *       flush       = nullptr;
    LC_CUDA_CHECK(cudaMalloc(&flush, flush_bytes));
    for (int64_t n : decode) {
        for (int64_t b : batch) {
            for (int64_t ns : splits) bench_decode(n, int(b), flush, flush_bytes, int(ns));
        }
    }
    LC_CUDA_CHECK(cudaFree(flush));
    if (json_path != nullptr) {
        FILE * f = std::fopen(json_path, "w");
        if (f != nullptr) {
            std::fprintf(f, "%s\n]\n", json.c_str());
            std::fclose(f);
        }
    }
    return 0;
}
