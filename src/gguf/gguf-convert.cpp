// GGUF weight conversion (gguf-convert.h): metadata copied key by key through gguf_writer, tensors dequantized
// row by row with the reference dequantizers and rounded to BF16.
#include "gguf/gguf-convert.h"

#include <sys/stat.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "backend/cpu/ref/dequant.h"
#include "core/fp16.h"

namespace lc {

namespace {

void copy_kv(const gguf_kv & kv, gguf_writer & w) {
    switch (kv.type) {
    case gguf_vtype::UINT8:
        return w.set_u8(kv.key, uint8_t(kv.u64));
    case gguf_vtype::INT8:
        return w.set_i8(kv.key, int8_t(kv.i64));
    case gguf_vtype::UINT16:
        return w.set_u16(kv.key, uint16_t(kv.u64));
    case gguf_vtype::INT16:
        return w.set_i16(kv.key, int16_t(kv.i64));
    case gguf_vtype::UINT32:
        return w.set_u32(kv.key, uint32_t(kv.u64));
    case gguf_vtype::INT32:
        return w.set_i32(kv.key, int32_t(kv.i64));
    case gguf_vtype::UINT64:
        return w.set_u64(kv.key, kv.u64);
    case gguf_vtype::INT64:
        return w.set_i64(kv.key, kv.i64);
    case gguf_vtype::FLOAT32:
        return w.set_f32(kv.key, float(kv.f64));
    case gguf_vtype::FLOAT64:
        return w.set_f64(kv.key, kv.f64);
    case gguf_vtype::BOOL:
        return w.set_bool(kv.key, kv.b);
    case gguf_vtype::STRING:
        return w.set_str(kv.key, std::string(kv.str));
    case gguf_vtype::ARRAY:
        if (kv.arr_type == gguf_vtype::STRING) {
            std::vector<std::string> v(kv.arr_str.begin(), kv.arr_str.end());
            return w.set_arr_str(kv.key, v);
        }
        return w.set_arr(kv.key, kv.arr_type, kv.arr_data, size_t(kv.arr_n));
    }
}

// Rows [0, n_rows) of a tensor dequantized to f32 and handed to out(row, values), on a few threads.
template <class F> void for_rows(const gguf_tensor_info & t, int64_t n_rows, F out) {
    const int64_t            n_in = t.ne[0];
    const size_t             rb   = dtype_row_size(t.type, n_in);
    const int                nth  = int(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1u, 8u));
    std::vector<std::thread> thr;
    for (int it = 0; it < nth; ++it)
        thr.emplace_back([&, it] {
            std::vector<float> row(static_cast<size_t>(n_in));
            for (int64_t r = it; r < n_rows; r += nth) {
                ref::dequantize_row(t.type, t.data + size_t(r) * rb, row.data(), n_in);
                out(r, row.data());
            }
        });
    for (auto & th : thr) th.join();
}

} // namespace

result<gguf_writer> gguf_convert(const gguf_file & in, dtype to) {
    if (to != dtype::BF16)
        return error(status_code::INVALID_ARGUMENT, "gguf convert: target type %s is not supported; the only one is BF16",
                     dtype_name(to));
    for (const gguf_tensor_info & t : in.tensors())
        if (!ref::dequantize_supported(t.type))
            return error(status_code::UNSUPPORTED, "gguf convert: %s: tensor '%s' has type %s, which has no dequantizer",
                         in.path().c_str(), t.name.c_str(), dtype_name(t.type));
    gguf_writer w;
    for (const gguf_kv & kv : in.kvs()) {
        if (kv.key == "general.alignment" && kv.type == gguf_vtype::UINT32)
            w.set_alignment(uint32_t(kv.u64));
        else
            copy_kv(kv, w);
    }
    w.set_u32("general.file_type", 32); // LLAMA_FTYPE_MOSTLY_BF16
    for (const gguf_tensor_info & t : in.tensors()) {
        const std::vector<int64_t> ne(t.ne, t.ne + t.n_dims);
        const int64_t              n_in = t.ne[0], n_rows = t.n_elements() / std::max<int64_t>(n_in, 1);
        if (t.n_dims >= 2) {
            std::vector<bf16_t> out(static_cast<size_t>(t.n_elements()));
            for_rows(t, n_rows, [&](int64_t r, const float * v) {
                for (int64_t i = 0; i < n_in; ++i) out[size_t(r * n_in + i)] = fp32_to_bf16(v[i]);
            });
            w.add_tensor(t.name, dtype::BF16, ne, out.data());
        } else if (t.type == dtype::F32) {
            w.add_tensor(t.name, dtype::F32, ne, t.data);
        } else {
            std::vector<float> out(static_cast<size_t>(t.n_elements()));
            for_rows(t, n_rows, [&](int64_t r, const float * v) { std::copy(v, v + n_in, out.data() + r * n_in); });
            w.add_tensor(t.name, dtype::F32, ne, out.data());
        }
    }
    return w;
}

status gguf_convert_file(const std::string & in_path, const std::string & out_path, dtype to) {
    struct stat a {}, b{};
    if (in_path == out_path ||
        (::stat(in_path.c_str(), &a) == 0 && ::stat(out_path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino))
        return error(status_code::INVALID_ARGUMENT, "gguf convert: input and output are the same file (%s)",
                     out_path.c_str());
    gguf_open_options opts;
    opts.allow_unsupported_types = true;
    LC_ASSIGN_OR_RETURN(std::unique_ptr<gguf_file> f, gguf_file::open(in_path, opts));
    LC_ASSIGN_OR_RETURN(gguf_writer w, gguf_convert(*f, to));
    return w.write(out_path);
}

} // namespace lc
