// Helpers shared by the CUDA kernel benches: bf16 inputs filled on the device from a hash of the index (uniform in
// [-a, a), the same values for the same seed on every run and GPU) and comma-separated size lists of the flags.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/cuda-common.cuh"

namespace lc::cuda_bench {

__global__ void fill_random(__nv_bfloat16 * p, size_t n, uint32_t seed, float a) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t x = uint32_t(i) * 0x9E3779B1u ^ uint32_t(i >> 32) * 0x85EBCA77u ^ seed * 0xC2B2AE3Du;
        x ^= x >> 16;
        x *= 0x7FEB352Du;
        x ^= x >> 15;
        x *= 0x846CA68Bu;
        x ^= x >> 16;
        p[i] = __float2bfloat16_rn((float(x >> 8) * (1.0f / 16777216.0f) * 2.f - 1.f) * a);
    }
}

// n bf16 values at p (device), uniform in [-a, a) from seed.
inline void fill(void * p, size_t n, uint32_t seed, float a, cudaStream_t st = nullptr) {
    fill_random<<<1024, 256, 0, st>>>(static_cast<__nv_bfloat16 *>(p), n, seed, a);
    LC_CUDA_CHECK_LAUNCH();
}

// "32768,131072" -> {32768, 131072}.
inline std::vector<int64_t> parse_list(const char * s) {
    std::vector<int64_t> v;
    for (const char * p = s; *p;) {
        v.push_back(std::strtoll(p, const_cast<char **>(&p), 10));
        if (*p == ',') ++p;
    }
    return v;
}

} // namespace lc::cuda_bench
