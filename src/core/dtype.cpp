// dtype traits table.
#include "core/dtype.h"

namespace lc {

dtype_traits dtype_info(uint32_t id) {
    switch (dtype(id)) {
    case dtype::F32:
        return {"F32", 1, 4, true};
    case dtype::F16:
        return {"F16", 1, 2, true};
    case dtype::BF16:
        return {"BF16", 1, 2, true};
    case dtype::Q4_0:
        return {"Q4_0", QK4_0, sizeof(block_q4_0), true};
    case dtype::Q4_1:
        return {"Q4_1", QK4_1, sizeof(block_q4_1), true};
    case dtype::Q5_0:
        return {"Q5_0", QK5_0, sizeof(block_q5_0), true};
    case dtype::Q5_1:
        return {"Q5_1", QK5_1, sizeof(block_q5_1), true};
    case dtype::Q8_0:
        return {"Q8_0", QK8_0, sizeof(block_q8_0), true};
    case dtype::Q8_1:
        return {"Q8_1", QK8_1, sizeof(block_q8_1), true};
    case dtype::Q2_K:
        return {"Q2_K", QK_K, sizeof(block_q2_K), true};
    case dtype::Q3_K:
        return {"Q3_K", QK_K, sizeof(block_q3_K), true};
    case dtype::Q4_K:
        return {"Q4_K", QK_K, sizeof(block_q4_K), true};
    case dtype::Q5_K:
        return {"Q5_K", QK_K, sizeof(block_q5_K), true};
    case dtype::Q6_K:
        return {"Q6_K", QK_K, sizeof(block_q6_K), true};
    case dtype::Q8_K:
        return {"Q8_K", QK_K, sizeof(block_q8_K), true};
    }
    return {"unknown", 1, 0, false};
}

const char * dtype_name(dtype t) {
    return dtype_info(t).name;
}

bool dtype_is_supported(dtype t) {
    switch (t) {
    case dtype::F32:
    case dtype::F16:
    case dtype::BF16:
    case dtype::Q8_0:
    case dtype::Q4_0:
    case dtype::Q4_1:
    case dtype::Q5_0:
    case dtype::Q4_K:
    case dtype::Q5_K:
    case dtype::Q6_K:
        return true;
    default:
        return false;
    }
}

std::string_view dtype_supported_list() {
    return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K";
}

size_t dtype_row_size(dtype t, int64_t n) {
    const dtype_traits tr = dtype_info(t);
    return size_t(n / tr.block_size) * tr.type_size;
}

} // namespace lc
