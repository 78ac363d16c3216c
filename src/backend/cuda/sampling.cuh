// Token sampling on the GPU: the chain of runtime/sampling.h (top-k, top-p, min-p, temperature, draw) over one
// row of device logits, with the uniform number of the draw supplied by the host sampler's RNG, so that a seed
// picks the same tokens as on the CPU. Only the token id leaves the device; every launch is graph-capturable.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace lc::cuda {

// The sampler's settings for one draw, read by the kernels from device memory at run time (a captured graph
// serves every setting). Fill it on the host with make_sample_params() and copy it to the device.
struct sample_params {
    double  u         = 0.0;  // uniform in [0, 1): sampler::next_uniform() of the host sampler
    double  log_min_p = 0.0;  // std::log(double(min_p)) from the host (the CPU's exact threshold); unused at 0
    float   temp      = 1.0f; // > 0 (greedy is argmax_rows)
    float   top_p     = 1.0f; // (0, 1]
    float   min_p     = 0.0f; // [0, 1]
    int32_t top_k     = 0;    // 0: off
};
sample_params make_sample_params(float temp, int32_t top_k, float top_p, float min_p, double u);

// Device bytes sample_row() needs for a vocabulary of n_vocab (sort buffers and CUB's temporary storage).
size_t sample_workspace_bytes(int n_vocab);

// *out = the token the CPU sampler (sampler::sample with the same settings and the same uniform draw) returns
// for logits[0..n_vocab), up to float rounding of its sums and of exp/log (a draw within ~1e-15 of a CDF
// boundary, or a top-p sum within that of top_p, may fall on the other side). Steps, on the survivors of each:
//   stable descending radix sort of the cleaned logits (NaN -> -inf, -0 -> +0; ties keep the lower id first),
//   top-k = the first k, top-p = the shortest sorted prefix whose exp(l - max) sum reaches top_p of the total,
//   min-p = l - max >= log(min_p), weights exp((l - max) / temp), then the draw walks the candidates in the CPU's
//   order (sorted with top-k; by id without; by id and then the sorted edge bucket of the CPU's top-p histogram)
//   and returns the first whose running weight sum exceeds u times the total.
// logits, params, workspace, out: device pointers. top_k: params->top_k as the host set it; it picks the kernels
// (sample_row_path), which read every setting from *params at run time, so a graph captured with one top_k serves
// every params->top_k of the same path (REQUIRES: sample_row_path of the two is the same).
// REQUIRES: n_vocab > 0, workspace_bytes >= sample_workspace_bytes(n_vocab), params->temp > 0.
void sample_row(const float * logits, int n_vocab, const sample_params * params, int32_t top_k, void * workspace,
                size_t workspace_bytes, int32_t * out, cudaStream_t stream);

// The kernels sample_row() runs for a top_k: 1 when top-k is on and n_tiles * top_k <= 8192 (n_tiles = n_vocab /
// 4096 rounded up: top_k <= 682 at 49152 tokens, <= 215 at 151936), which sorts only each 4096-token tile's top k
// and then their survivors; 0 otherwise (a device radix sort of the whole row).
int sample_row_path(int n_vocab, int32_t top_k);

} // namespace lc::cuda
