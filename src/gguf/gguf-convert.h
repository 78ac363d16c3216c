// Converting a GGUF file's weights to another tensor type (`longctx gguf convert`): so far to BF16, the weights the
// CUDA backend computes with, so that the CPU path can run the very same weights (backend/cuda/cuda-model.h).
#pragma once

#include <string>

#include "gguf/gguf.h"

namespace lc {

// A copy of `in` with every metadata key (in order, values unchanged but general.file_type, which becomes 32,
// "MOSTLY_BF16") and every tensor (in order, same names and shapes): tensors of two or more dimensions in BF16,
// each row dequantized by ref::dequantize_row and rounded to nearest even by fp32_to_bf16 (exactly the CUDA
// backend's upload); 1-D tensors (norms, biases) in F32 (kept as they are when F32, else dequantized).
// Errors: INVALID_ARGUMENT for a target other than BF16, UNSUPPORTED for a tensor type without a dequantizer.
result<gguf_writer> gguf_convert(const gguf_file & in, dtype to);

// gguf_convert() from the file in_path to the file out_path. Errors: those of gguf_file::open (the input may hold
// types the engine cannot compute with, as long as they dequantize), of gguf_convert, INVALID_ARGUMENT when both
// paths name the same file, IO_ERROR when out_path cannot be written.
status gguf_convert_file(const std::string & in_path, const std::string & out_path, dtype to);

} // namespace lc
