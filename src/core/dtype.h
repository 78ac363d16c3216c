// Tensor element types, numbered as in GGUF (ggml_type), with their quantization block layouts.
// Block structs are byte-exact images of the GGUF on-disk format (little-endian).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/fp16.h"

namespace lc {

enum class dtype : uint32_t {
    F32  = 0,
    F16  = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
};

struct dtype_traits {
    const char * name;       // "Q4_K"
    int64_t      block_size; // elements per block (1 for F32/F16/BF16)
    size_t       type_size;  // bytes per block
    bool         known;      // false for ids this build does not know
};

// Traits of any GGUF type id; unknown ids return known=false with name "unknown".
dtype_traits        dtype_info(uint32_t id);
inline dtype_traits dtype_info(dtype t) {
    return dtype_info(uint32_t(t));
}
const char * dtype_name(dtype t);
// Types whose tensors the engine can load and dequantize (the list the GGUF reader validates against).
bool             dtype_is_supported(dtype t);
std::string_view dtype_supported_list(); // "F32, F16, BF16, Q8_0, ..." for error messages
// Bytes of one row of n elements; REQUIRES: n % block_size == 0.
size_t dtype_row_size(dtype t, int64_t n);

constexpr int QK4_0        = 32;
constexpr int QK4_1        = 32;
constexpr int QK5_0        = 32;
constexpr int QK5_1        = 32;
constexpr int QK8_0        = 32;
constexpr int QK8_1        = 32;
constexpr int QK_K         = 256;
constexpr int K_SCALE_SIZE = 12;

#pragma pack(push, 1)
struct block_q4_0 {
    fp16_t  d;
    uint8_t qs[QK4_0 / 2]; // nibbles: element i in low nibble of qs[i], element i+16 in high nibble
};
struct block_q4_1 {
    fp16_t  d, m;
    uint8_t qs[QK4_1 / 2];
};
struct block_q5_0 {
    fp16_t  d;
    uint8_t qh[4]; // 5th bits, little-endian u32: bit i for element i
    uint8_t qs[QK5_0 / 2];
};
struct block_q5_1 {
    fp16_t  d, m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
};
struct block_q8_0 {
    fp16_t d;
    int8_t qs[QK8_0];
};
struct block_q8_1 {
    fp16_t d; // scale
    fp16_t s; // d * sum(qs)
    int8_t qs[QK8_1];
};
struct block_q2_K {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    fp16_t  d, dmin;
};
struct block_q3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    fp16_t  d;
};
struct block_q4_K {
    fp16_t  d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
};
struct block_q5_K {
    fp16_t  d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t  scales[QK_K / 16];
    fp16_t  d;
};
struct block_q8_K {
    float   d;
    int8_t  qs[QK_K];
    int16_t bsums[QK_K / 16];
};
#pragma pack(pop)

static_assert(sizeof(block_q4_0) == 18);
static_assert(sizeof(block_q4_1) == 20);
static_assert(sizeof(block_q5_0) == 22);
static_assert(sizeof(block_q5_1) == 24);
static_assert(sizeof(block_q8_0) == 34);
static_assert(sizeof(block_q8_1) == 36);
static_assert(sizeof(block_q2_K) == 84);
static_assert(sizeof(block_q3_K) == 110);
static_assert(sizeof(block_q4_K) == 144);
static_assert(sizeof(block_q5_K) == 176);
static_assert(sizeof(block_q6_K) == 210);
static_assert(sizeof(block_q8_K) == 292);

} // namespace lc
