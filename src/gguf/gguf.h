// GGUF v2/v3 reader (mmap, strict validation) and writer (test fixtures, calibration sidecars).
// Format: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, key/values, tensor infos, padding to
// general.alignment (default 32), tensor data. All integers little-endian.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "longctx/status.h"

namespace lc {

enum class gguf_vtype : uint32_t {
    UINT8   = 0,
    INT8    = 1,
    UINT16  = 2,
    INT16   = 3,
    UINT32  = 4,
    INT32   = 5,
    FLOAT32 = 6,
    BOOL    = 7,
    STRING  = 8,
    ARRAY   = 9,
    UINT64  = 10,
    INT64   = 11,
    FLOAT64 = 12,
};

const char * gguf_vtype_name(gguf_vtype t);
size_t       gguf_vtype_size(gguf_vtype t); // bytes of one scalar; 0 for STRING and ARRAY

// One metadata value. Scalars are stored widened; strings and arrays point into the mapping.
struct gguf_kv {
    std::string key;
    gguf_vtype  type = gguf_vtype::UINT8;
    // scalar payloads (the field matching `type` is set; integers are also mirrored to i64/u64)
    int64_t          i64 = 0;
    uint64_t         u64 = 0;
    double           f64 = 0.0;
    bool             b   = false;
    std::string_view str; // STRING
    // ARRAY
    gguf_vtype                    arr_type = gguf_vtype::UINT8;
    uint64_t                      arr_n    = 0;
    const uint8_t *               arr_data = nullptr; // raw element bytes for numeric arrays
    std::vector<std::string_view> arr_str;            // STRING arrays, decoded
};

struct gguf_tensor_info {
    std::string     name;
    dtype           type    = dtype::F32;
    int             n_dims  = 0;
    int64_t         ne[4]   = {1, 1, 1, 1}; // ne[0] is the contiguous (row) dimension, as in ggml
    uint64_t        offset  = 0;            // relative to the start of the data section
    uint64_t        n_bytes = 0;
    const uint8_t * data    = nullptr; // into the mapping
    int64_t         n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

struct gguf_open_options {
    // Accept tensors of types this build knows but cannot compute with (Q5_1, Q2_K, ...), e.g. to inspect
    // a file. Tensors of unknown type ids are always rejected: their sizes cannot be checked.
    bool allow_unsupported_types = false;
};

// Thread-safety: immutable after open(); all methods may run concurrently.
class gguf_file {
  public:
    // Opens, maps (read-only, MAP_PRIVATE) and validates the whole header and tensor table. Every failure is
    // a one-line status naming the file, the key or tensor and the limit that was broken; keys and tensors
    // are numbered from 1 in messages ("key 17 of 33 ('tokenizer.ggml.tokens')").
    // Codes: NOT_FOUND (no such file), IO_ERROR, INVALID_FILE (malformed), UNSUPPORTED (version 1,
    // big-endian, tensor types this build cannot use, arrays of arrays).
    static result<std::unique_ptr<gguf_file>> open(const std::string & path, const gguf_open_options & opts = {});
    ~gguf_file();
    gguf_file(const gguf_file &)             = delete;
    gguf_file & operator=(const gguf_file &) = delete;

    const std::string & path() const { return path_; }
    uint32_t            version() const { return version_; }
    uint64_t            file_size() const { return size_; }
    uint64_t            alignment() const { return alignment_; }
    uint64_t            data_offset() const { return data_offset_; }
    const uint8_t *     mapping() const { return map_; } // file_size() bytes, read-only

    const std::vector<gguf_kv> &          kvs() const { return kvs_; }
    const std::vector<gguf_tensor_info> & tensors() const { return tensors_; }
    const gguf_kv *                       find(std::string_view key) const;         // nullptr if absent
    const gguf_tensor_info *              find_tensor(std::string_view name) const; // nullptr if absent

    // Typed getters: NOT_FOUND when absent ("gguf: FILE: missing required key 'llama.block_count'"),
    // INVALID_FILE when the type does not match. Integer getters accept any integer type whose value fits.
    result<uint32_t>                      get_u32(std::string_view key) const;
    result<int64_t>                       get_i64(std::string_view key) const;
    result<float>                         get_f32(std::string_view key) const;
    result<bool>                          get_bool(std::string_view key) const;
    result<std::string>                   get_str(std::string_view key) const;
    result<std::vector<std::string_view>> get_arr_str(std::string_view key) const;
    result<std::vector<float>>            get_arr_f32(std::string_view key) const;
    result<std::vector<int32_t>>          get_arr_i32(std::string_view key) const;
    // Optional variants: the default when absent, an error only for a present key of the wrong type.
    result<uint32_t>    get_u32_or(std::string_view key, uint32_t def) const;
    result<float>       get_f32_or(std::string_view key, float def) const;
    result<bool>        get_bool_or(std::string_view key, bool def) const;
    result<std::string> get_str_or(std::string_view key, std::string def) const;

    // Required tensor with expected type set and shape; NOT_FOUND / INVALID_FILE otherwise.
    result<const gguf_tensor_info *> require_tensor(std::string_view name, int n_dims, const int64_t * ne) const;

  private:
    gguf_file() = default;
    std::string                                path_;
    uint32_t                                   version_     = 0;
    uint64_t                                   size_        = 0;
    uint64_t                                   alignment_   = 32;
    uint64_t                                   data_offset_ = 0;
    const uint8_t *                            map_         = nullptr;
    int                                        fd_          = -1;
    std::vector<gguf_kv>                       kvs_;
    std::vector<gguf_tensor_info>              tensors_;
    std::map<std::string, size_t, std::less<>> kv_index_;     // key -> index into kvs_
    std::map<std::string, size_t, std::less<>> tensor_index_; // name -> index into tensors_
};

// Builds GGUF v3 files in memory: used by tests (tiny random models, vocab-only files, corrupt files)
// and by calibration sidecars. Setting a key twice replaces its value (keys keep their first position).
// Tensor data is laid out in the order added, each tensor at a multiple of the alignment (32 by default).
class gguf_writer {
  public:
    void set_u8(const std::string & key, uint8_t v);
    void set_i8(const std::string & key, int8_t v);
    void set_u16(const std::string & key, uint16_t v);
    void set_i16(const std::string & key, int16_t v);
    void set_u32(const std::string & key, uint32_t v);
    void set_i32(const std::string & key, int32_t v);
    void set_u64(const std::string & key, uint64_t v);
    void set_i64(const std::string & key, int64_t v);
    void set_f32(const std::string & key, float v);
    void set_f64(const std::string & key, double v);
    void set_bool(const std::string & key, bool v);
    void set_str(const std::string & key, const std::string & v);
    void set_arr_str(const std::string & key, const std::vector<std::string> & v);
    void set_arr_f32(const std::string & key, const std::vector<float> & v);
    void set_arr_i32(const std::string & key, const std::vector<int32_t> & v);
    // Array of n numeric (or BOOL) elements of type elem, copied from data in little-endian layout.
    void set_arr(const std::string & key, gguf_vtype elem, const void * data, size_t n);
    // Sets the data alignment and writes it as general.alignment; REQUIRES: a power of two.
    void set_alignment(uint32_t alignment);
    // data must hold dtype_row_size(type, ne[0]) * ne[1] * ne[2] * ne[3] bytes.
    void add_tensor(const std::string & name, dtype type, const std::vector<int64_t> & ne, const void * data);

    std::vector<uint8_t> to_bytes() const; // whole file image
    status               write(const std::string & path) const;

  private:
    void set_raw(const std::string & key, std::vector<uint8_t> bytes);
    struct kv_entry {
        std::string          key;
        std::vector<uint8_t> bytes; // type tag + payload, already serialised
    };
    struct tensor_entry {
        std::string          name;
        dtype                type;
        std::vector<int64_t> ne;
        std::vector<uint8_t> data;
    };
    std::vector<kv_entry>     kvs_;
    std::vector<tensor_entry> tensors_;
    uint32_t                  alignment_ = 32;
};

} // namespace lc
