// Helpers shared by the CUDA tests: device detection, device buffers, random bf16 inputs that fp16 holds exactly (so
// the CPU references, which read fp16 caches, see the same numbers), error measures and a CPU thread pool.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "core/fp16.h"
#include "core/thread-pool.h"

#define CK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

namespace lc::cuda_test {

inline bool gpu_present() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Compute capability 9.x (the wgmma kernels).
inline bool hopper() {
    int dev = 0, major = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major == 9;
}

// bf16 values of N(0, sigma) that are exactly representable in fp16 too (no fp16 subnormals), so the fp16
// reference sees the same numbers as the bf16 kernels.
inline std::vector<bf16_t> random_bf16(size_t n, std::mt19937 & rng, float sigma = 1.f) {
    std::normal_distribution<float> dist(0.f, sigma);
    std::vector<bf16_t>             v(n);
    for (auto & x : v) {
        float f = dist(rng);
        if (std::fabs(f) < 1.0f / 16384) f = 0.f;
        x = fp32_to_bf16(f);
    }
    return v;
}

// A device array of n elements, optionally filled from a host vector; get() copies it back.
template <typename T> struct dev_buf {
    T *    p = nullptr;
    size_t n = 0;
    explicit dev_buf(size_t n_) : n(n_) {
        EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&p), std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
    }
    explicit dev_buf(const std::vector<T> & h) : dev_buf(h.size()) {
        EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    dev_buf(const dev_buf &)             = delete;
    dev_buf & operator=(const dev_buf &) = delete;
    ~dev_buf() { cudaFree(p); }
    std::vector<T> get() const {
        std::vector<T> h(n);
        EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
        return h;
    }
};

// Normalised mean squared error of a against ref (infinite when a holds a non-finite value).
inline double nmse(const std::vector<float> & a, const std::vector<float> & ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
        den += double(ref[i]) * ref[i];
    }
    return num / std::max(den, 1e-30);
}

// Largest |a - ref| over entries where ref is finite (and equal infinities elsewhere).
inline double max_dlse(const std::vector<float> & a, const std::vector<float> & ref) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::isinf(ref[i])) {
            if (a[i] != ref[i]) return INFINITY;
            continue;
        }
        if (!std::isfinite(a[i])) return INFINITY;
        m = std::max(m, std::fabs(double(a[i]) - ref[i]));
    }
    return m;
}

inline thread_pool & pool() {
    static thread_pool p(int(std::max(1u, std::thread::hardware_concurrency())));
    return p;
}

} // namespace lc::cuda_test
