// GGUF reader: maps the file read-only and validates the header, every key/value and the tensor table
// before anything else looks at it. Every count and length is bounded by the bytes left in the file before
// it sizes an allocation, so a corrupt or hostile file fails with one line instead of a crash.
#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <limits>

#include "core/log.h"

namespace lc {

const char * gguf_vtype_name(gguf_vtype t) {
    switch (t) {
    case gguf_vtype::UINT8:
        return "UINT8";
    case gguf_vtype::INT8:
        return "INT8";
    case gguf_vtype::UINT16:
        return "UINT16";
    case gguf_vtype::INT16:
        return "INT16";
    case gguf_vtype::UINT32:
        return "UINT32";
    case gguf_vtype::INT32:
        return "INT32";
    case gguf_vtype::FLOAT32:
        return "FLOAT32";
    case gguf_vtype::BOOL:
        return "BOOL";
    case gguf_vtype::STRING:
        return "STRING";
    case gguf_vtype::ARRAY:
        return "ARRAY";
    case gguf_vtype::UINT64:
        return "UINT64";
    case gguf_vtype::INT64:
        return "INT64";
    case gguf_vtype::FLOAT64:
        return "FLOAT64";
    }
    return "unknown";
}

size_t gguf_vtype_size(gguf_vtype t) {
    switch (t) {
    case gguf_vtype::UINT8:
    case gguf_vtype::INT8:
    case gguf_vtype::BOOL:
        return 1;
    case gguf_vtype::UINT16:
    case gguf_vtype::INT16:
        return 2;
    case gguf_vtype::UINT32:
    case gguf_vtype::INT32:
    case gguf_vtype::FLOAT32:
        return 4;
    case gguf_vtype::UINT64:
    case gguf_vtype::INT64:
    case gguf_vtype::FLOAT64:
        return 8;
    case gguf_vtype::STRING:
    case gguf_vtype::ARRAY:
        return 0;
    }
    return 0;
}

namespace {

constexpr uint32_t k_magic           = 0x46554747u;           // "GGUF" read as a little-endian u32
constexpr uint64_t k_max_key_bytes   = 65535;                 // the GGUF spec's limit on key length
constexpr uint64_t k_min_kv_bytes    = 8 + 1 + 4 + 1;         // key length, 1-byte key, type, 1-byte value
constexpr uint64_t k_min_tinfo_bytes = 8 + 1 + 4 + 8 + 4 + 8; // name length, name, n_dims, ne[0], type, offset
constexpr uint64_t k_reserve_max     = 4096;                  // entries reserved up front; more grow on demand

bool is_valid_vtype(uint32_t t) {
    return t <= uint32_t(gguf_vtype::FLOAT64);
}

template <typename T> T load_le(const uint8_t * p) {
    T v;
    std::memcpy(&v, p, sizeof(T)); // x86-64 only: host order is little-endian
    return v;
}

// Where the parser is, for error messages: "header", "key 17 of 33 ('tokenizer.ggml.tokens')", ...
struct parse_where {
    const char * what  = "header";
    uint64_t     index = 0; // 1-based
    uint64_t     total = 0;
    std::string  name;
    std::string  str() const {
         if (total == 0) return what;
        std::string s = std::string(what) + " " + std::to_string(index) + " of " + std::to_string(total);
         if (!name.empty()) s += " ('" + name + "')";
        return s;
    }
};

// Bounds-checked cursor over the mapping.
struct cursor {
    const std::string & path;
    const uint8_t *     base;
    uint64_t            size;
    uint64_t            pos = 0;
    parse_where         where;

    uint64_t left() const { return size - pos; }
    // Every caller has checked need(n) first; a miss here is a bug in this file, not a bad input.
    void skip(uint64_t n) {
        LC_ASSERT(n <= left(), "gguf cursor: skip %llu past the end (offset %llu of %llu)", (unsigned long long)n,
                  (unsigned long long)pos, (unsigned long long)size);
        pos += n;
    }

    status truncated(uint64_t need) const {
        return error(status_code::INVALID_FILE,
                     "gguf: %s: truncated: %s needs %" PRIu64 " bytes at offset %" PRIu64 " but the file has %" PRIu64,
                     path.c_str(), where.str().c_str(), need, pos, size);
    }
    status need(uint64_t n) const { return n <= left() ? status::ok() : truncated(n); }

    template <typename T> status read(T & v) {
        LC_RETURN_IF_ERROR(need(sizeof(T)));
        v = load_le<T>(base + pos);
        skip(sizeof(T));
        return status::ok();
    }

    // u64 length + bytes; the view points into the mapping.
    status read_str(std::string_view & s, uint64_t max_len, const char * what_str) {
        uint64_t n = 0;
        LC_RETURN_IF_ERROR(read(n));
        if (n > max_len) {
            return error(status_code::INVALID_FILE, "gguf: %s: %s: %s length %" PRIu64 " exceeds the limit %" PRIu64,
                         path.c_str(), where.str().c_str(), what_str, n, max_len);
        }
        LC_RETURN_IF_ERROR(need(n));
        s = std::string_view(reinterpret_cast<const char *>(base + pos), size_t(n));
        skip(n);
        return status::ok();
    }
};

// Reads one scalar of type t into kv's widened fields.
status read_scalar(cursor & c, gguf_vtype t, gguf_kv & kv) {
    switch (t) {
    case gguf_vtype::UINT8: {
        uint8_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.u64 = v;
        kv.i64 = v;
        break;
    }
    case gguf_vtype::INT8: {
        int8_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.i64 = v;
        kv.u64 = uint64_t(int64_t(v));
        break;
    }
    case gguf_vtype::UINT16: {
        uint16_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.u64 = v;
        kv.i64 = v;
        break;
    }
    case gguf_vtype::INT16: {
        int16_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.i64 = v;
        kv.u64 = uint64_t(int64_t(v));
        break;
    }
    case gguf_vtype::UINT32: {
        uint32_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.u64 = v;
        kv.i64 = v;
        break;
    }
    case gguf_vtype::INT32: {
        int32_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.i64 = v;
        kv.u64 = uint64_t(int64_t(v));
        break;
    }
    case gguf_vtype::UINT64: {
        uint64_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.u64 = v;
        kv.i64 = int64_t(v);
        break;
    }
    case gguf_vtype::INT64: {
        int64_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.i64 = v;
        kv.u64 = uint64_t(v);
        break;
    }
    case gguf_vtype::FLOAT32: {
        float v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.f64 = v;
        break;
    }
    case gguf_vtype::FLOAT64: {
        double v{};
        LC_RETURN_IF_ERROR(c.read(v));
        kv.f64 = v;
        break;
    }
    case gguf_vtype::BOOL: {
        uint8_t v{};
        LC_RETURN_IF_ERROR(c.read(v));
        if (v > 1) {
            return error(status_code::INVALID_FILE, "gguf: %s: %s: bool value %u is neither 0 nor 1", c.path.c_str(),
                         c.where.str().c_str(), unsigned(v));
        }
        kv.b   = v != 0;
        kv.u64 = v;
        kv.i64 = v;
        break;
    }
    case gguf_vtype::STRING: {
        LC_RETURN_IF_ERROR(c.read_str(kv.str, UINT64_MAX, "string"));
        break;
    }
    case gguf_vtype::ARRAY:
        return error(status_code::INTERNAL, "gguf: read_scalar(ARRAY)");
    }
    return status::ok();
}

status read_array(cursor & c, gguf_kv & kv) {
    uint32_t et = 0;
    LC_RETURN_IF_ERROR(c.read(et));
    if (!is_valid_vtype(et)) {
        return error(status_code::INVALID_FILE, "gguf: %s: %s: array element type %u is unknown (0 to 12 are)",
                     c.path.c_str(), c.where.str().c_str(), et);
    }
    kv.arr_type = gguf_vtype(et);
    if (kv.arr_type == gguf_vtype::ARRAY) {
        return error(status_code::UNSUPPORTED, "gguf: %s: %s: arrays of arrays are not supported", c.path.c_str(),
                     c.where.str().c_str());
    }
    LC_RETURN_IF_ERROR(c.read(kv.arr_n));
    const uint64_t n = kv.arr_n;
    if (kv.arr_type == gguf_vtype::STRING) {
        // Each string takes at least its 8-byte length: bound n before reserving.
        if (n > c.left() / 8) {
            return error(status_code::INVALID_FILE,
                         "gguf: %s: truncated: %s: array of %" PRIu64 " strings needs at "
                         "least %" PRIu64 " bytes at offset %" PRIu64 " but the file has %" PRIu64,
                         c.path.c_str(), c.where.str().c_str(), n, n > UINT64_MAX / 8 ? UINT64_MAX : n * 8, c.pos,
                         c.size);
        }
        // Grow as strings are read, so memory follows the bytes actually present (16 per >= 8 read).
        kv.arr_str.reserve(size_t(std::min<uint64_t>(n, k_reserve_max)));
        for (uint64_t i = 0; i < n; ++i) {
            std::string_view s;
            LC_RETURN_IF_ERROR(c.read_str(s, UINT64_MAX, "string element"));
            kv.arr_str.push_back(s);
        }
        return status::ok();
    }
    const uint64_t es = gguf_vtype_size(kv.arr_type);
    if (n > c.left() / es) {
        return error(status_code::INVALID_FILE,
                     "gguf: %s: truncated: %s: array of %" PRIu64 " %s needs %" PRIu64 " bytes at offset %" PRIu64
                     " but the file has %" PRIu64,
                     c.path.c_str(), c.where.str().c_str(), n, gguf_vtype_name(kv.arr_type),
                     n > UINT64_MAX / es ? UINT64_MAX : n * es, c.pos, c.size);
    }
    kv.arr_data = c.base + c.pos;
    if (kv.arr_type == gguf_vtype::BOOL) {
        for (uint64_t i = 0; i < n; ++i) {
            if (kv.arr_data[i] > 1) {
                return error(status_code::INVALID_FILE,
                             "gguf: %s: %s: bool element %" PRIu64 " is %u, neither 0 "
                             "nor 1",
                             c.path.c_str(), c.where.str().c_str(), i, unsigned(kv.arr_data[i]));
            }
        }
    }
    c.skip(n * es);
    return status::ok();
}

struct file_map {
    int             fd   = -1;
    const uint8_t * map  = nullptr;
    uint64_t        size = 0;
    ~file_map() {
        if (map) munmap(const_cast<uint8_t *>(map), size_t(size));
        if (fd >= 0) close(fd);
    }
};

uint64_t align_up(uint64_t x, uint64_t a) {
    return (x + a - 1) / a * a;
} // REQUIRES: no overflow

} // namespace

gguf_file::~gguf_file() {
    if (map_) munmap(const_cast<uint8_t *>(map_), size_t(size_));
    if (fd_ >= 0) close(fd_);
}

result<std::unique_ptr<gguf_file>> gguf_file::open(const std::string & path, const gguf_open_options & opts) {
    const char * p = path.c_str();
    file_map     m;
    m.fd = ::open(p, O_RDONLY | O_CLOEXEC);
    if (m.fd < 0) {
        const int e = errno;
        return error(e == ENOENT ? status_code::NOT_FOUND : status_code::IO_ERROR, "gguf: %s: cannot open: %s", p,
                     std::strerror(e));
    }
    struct stat st {};
    if (fstat(m.fd, &st) != 0)
        return error(status_code::IO_ERROR, "gguf: %s: cannot stat: %s", p, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return error(status_code::INVALID_ARGUMENT, "gguf: %s: not a regular file", p);
    m.size = uint64_t(st.st_size);
    if (m.size < 4) {
        return error(status_code::INVALID_FILE,
                     "gguf: %s: truncated: magic needs 4 bytes at offset 0 but the file "
                     "has %" PRIu64,
                     p, m.size);
    }
    void * addr = mmap(nullptr, size_t(m.size), PROT_READ, MAP_PRIVATE, m.fd, 0);
    if (addr == MAP_FAILED) return error(status_code::IO_ERROR, "gguf: %s: cannot mmap: %s", p, std::strerror(errno));
    m.map = static_cast<const uint8_t *>(addr);

    cursor c{path, m.map, m.size, 0, {}};

    // Header.
    uint32_t magic = 0;
    LC_RETURN_IF_ERROR(c.read(magic));
    if (magic != k_magic) {
        return error(status_code::INVALID_FILE, "gguf: %s: bad magic 0x%08x (expected \"GGUF\")", p, magic);
    }
    uint32_t version = 0;
    LC_RETURN_IF_ERROR(c.read(version));
    if (version == 0x02000000u || version == 0x03000000u) {
        return error(status_code::UNSUPPORTED, "gguf: %s: big-endian GGUF files are not supported", p);
    }
    if (version != 2 && version != 3) {
        return error(status_code::UNSUPPORTED, "gguf: %s: version %u is not supported (2 and 3 are)", p, version);
    }
    uint64_t n_tensors = 0, n_kv = 0;
    LC_RETURN_IF_ERROR(c.read(n_tensors));
    LC_RETURN_IF_ERROR(c.read(n_kv));
    if (n_kv > c.left() / k_min_kv_bytes) {
        return error(status_code::INVALID_FILE,
                     "gguf: %s: n_kv %" PRIu64 " is more than the file of %" PRIu64 " bytes can hold (at most %" PRIu64
                     ")",
                     p, n_kv, m.size, c.left() / k_min_kv_bytes);
    }
    if (n_tensors > c.left() / k_min_tinfo_bytes) {
        return error(status_code::INVALID_FILE,
                     "gguf: %s: n_tensors %" PRIu64 " is more than the file of %" PRIu64
                     " bytes can hold (at most %" PRIu64 ")",
                     p, n_tensors, m.size, c.left() / k_min_tinfo_bytes);
    }

    std::unique_ptr<gguf_file> f(new gguf_file());
    f->path_    = path;
    f->version_ = version;
    f->size_    = m.size;

    // Key/values.
    // Entries are appended as they parse: a count that passed the bound above still cannot make us allocate
    // far more than the file holds (an entry struct is ~10x its minimum size on disk).
    f->kvs_.reserve(size_t(std::min<uint64_t>(n_kv, k_reserve_max)));
    for (uint64_t i = 0; i < n_kv; ++i) {
        gguf_kv & kv = f->kvs_.emplace_back();
        c.where      = parse_where{"key", i + 1, n_kv, {}};
        std::string_view key;
        LC_RETURN_IF_ERROR(c.read_str(key, k_max_key_bytes, "key"));
        if (key.empty())
            return error(status_code::INVALID_FILE, "gguf: %s: %s has an empty name", p, c.where.str().c_str());
        kv.key       = std::string(key);
        c.where.name = kv.key;
        if (!f->kv_index_.emplace(kv.key, size_t(i)).second) {
            return error(status_code::INVALID_FILE, "gguf: %s: %s: duplicate key", p, c.where.str().c_str());
        }
        uint32_t t = 0;
        LC_RETURN_IF_ERROR(c.read(t));
        if (!is_valid_vtype(t)) {
            return error(status_code::INVALID_FILE, "gguf: %s: %s: value type %u is unknown (0 to 12 are)", p,
                         c.where.str().c_str(), t);
        }
        kv.type = gguf_vtype(t);
        if (kv.type == gguf_vtype::ARRAY) {
            LC_RETURN_IF_ERROR(read_array(c, kv));
        } else {
            LC_RETURN_IF_ERROR(read_scalar(c, kv.type, kv));
        }
    }

    // general.alignment: an integer power of two.
    if (const gguf_kv * a = f->find("general.alignment")) {
        const bool is_int = a->type == gguf_vtype::UINT8 || a->type == gguf_vtype::UINT16 ||
                            a->type == gguf_vtype::UINT32 || a->type == gguf_vtype::UINT64 ||
                            a->type == gguf_vtype::INT8 || a->type == gguf_vtype::INT16 ||
                            a->type == gguf_vtype::INT32 || a->type == gguf_vtype::INT64;
        if (!is_int) {
            return error(status_code::INVALID_FILE, "gguf: %s: key 'general.alignment' has type %s (expected UINT32)",
                         p, gguf_vtype_name(a->type));
        }
        if (a->i64 <= 0 || a->u64 > (uint64_t(1) << 31) || (a->u64 & (a->u64 - 1)) != 0) {
            return error(status_code::INVALID_FILE,
                         "gguf: %s: general.alignment %" PRId64 " is not a power of two "
                         "between 1 and 2^31",
                         p, a->i64);
        }
        f->alignment_ = a->u64;
    }

    // Tensor infos.
    f->tensors_.reserve(size_t(std::min<uint64_t>(n_tensors, k_reserve_max)));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        gguf_tensor_info & ti = f->tensors_.emplace_back();
        c.where               = parse_where{"tensor", i + 1, n_tensors, {}};
        std::string_view name;
        LC_RETURN_IF_ERROR(c.read_str(name, k_max_key_bytes, "tensor name"));
        if (name.empty())
            return error(status_code::INVALID_FILE, "gguf: %s: %s has an empty name", p, c.where.str().c_str());
        ti.name         = std::string(name);
        c.where.name    = ti.name;
        const char * tn = ti.name.c_str();
        if (!f->tensor_index_.emplace(ti.name, size_t(i)).second) {
            return error(status_code::INVALID_FILE, "gguf: %s: tensor '%s': duplicate tensor name", p, tn);
        }
        uint32_t n_dims = 0;
        LC_RETURN_IF_ERROR(c.read(n_dims));
        if (n_dims < 1 || n_dims > 4) {
            return error(status_code::INVALID_FILE, "gguf: %s: tensor '%s' has %u dimensions (1 to 4 are supported)", p,
                         tn, n_dims);
        }
        ti.n_dims = int(n_dims);
        for (uint32_t d = 0; d < n_dims; ++d) {
            uint64_t ne = 0;
            LC_RETURN_IF_ERROR(c.read(ne));
            if (ne == 0 || ne > uint64_t(INT64_MAX)) {
                return error(status_code::INVALID_FILE, "gguf: %s: tensor '%s' has ne[%u] = %" PRId64 " (must be > 0)",
                             p, tn, d, int64_t(ne));
            }
            ti.ne[d] = int64_t(ne);
        }
        uint32_t type = 0;
        LC_RETURN_IF_ERROR(c.read(type));
        LC_RETURN_IF_ERROR(c.read(ti.offset));

        const dtype_traits tr = dtype_info(type);
        if (!tr.known) {
            return error(status_code::UNSUPPORTED,
                         "gguf: %s: tensor '%s' has type id %u, unknown to this build; this "
                         "build supports %.*s",
                         p, tn, type, int(dtype_supported_list().size()), dtype_supported_list().data());
        }
        ti.type = dtype(type);
        if (!opts.allow_unsupported_types && !dtype_is_supported(ti.type)) {
            return error(status_code::UNSUPPORTED, "gguf: %s: tensor '%s' has type %s; this build supports %.*s", p, tn,
                         tr.name, int(dtype_supported_list().size()), dtype_supported_list().data());
        }
        if (ti.ne[0] % tr.block_size != 0) {
            return error(status_code::INVALID_FILE,
                         "gguf: %s: tensor '%s' of type %s has ne[0] = %" PRId64 ", not a "
                         "multiple of the block size %" PRId64,
                         p, tn, tr.name, ti.ne[0], tr.block_size);
        }
        // Element count and byte size, checked for overflow.
        int64_t n_el = 1;
        for (int d = 0; d < 4; ++d) {
            if (__builtin_mul_overflow(n_el, ti.ne[d], &n_el)) {
                return error(status_code::INVALID_FILE,
                             "gguf: %s: tensor '%s' shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                             "] has more than 2^63 elements",
                             p, tn, ti.ne[0], ti.ne[1], ti.ne[2], ti.ne[3]);
            }
        }
        uint64_t nb  = uint64_t(ti.ne[0] / tr.block_size) * tr.type_size; // ne[0]/bs * ts < 2^63 * 292 / 32
        bool     ovf = false;
        for (int d = 1; d < 4; ++d) ovf |= __builtin_mul_overflow(nb, uint64_t(ti.ne[d]), &nb);
        if (ovf) {
            return error(status_code::INVALID_FILE, "gguf: %s: tensor '%s' size in bytes overflows 64 bits", p, tn);
        }
        ti.n_bytes = nb;
        if (ti.offset % f->alignment_ != 0) {
            return error(status_code::INVALID_FILE,
                         "gguf: %s: tensor '%s' offset %" PRIu64 " is not a multiple of "
                         "general.alignment %" PRIu64,
                         p, tn, ti.offset, f->alignment_);
        }
    }

    // Data section.
    c.where = parse_where{"data section", 0, 0, {}};
    if (c.pos > UINT64_MAX - f->alignment_) return error(status_code::INVALID_FILE, "gguf: %s: header too large", p);
    f->data_offset_ = align_up(c.pos, f->alignment_);
    for (gguf_tensor_info & ti : f->tensors_) {
        const uint64_t avail = f->data_offset_ <= m.size ? m.size - f->data_offset_ : 0;
        if (ti.offset > avail || ti.n_bytes > avail - ti.offset) {
            return error(status_code::INVALID_FILE,
                         "gguf: %s: tensor '%s' data out of bounds: %" PRIu64 " bytes at "
                         "data offset %" PRIu64 " (file offset %" PRIu64 ") but the file has %" PRIu64,
                         p, ti.name.c_str(), ti.n_bytes, ti.offset, f->data_offset_ + ti.offset, m.size);
        }
        ti.data = m.map + f->data_offset_ + ti.offset;
    }
    // No two tensors may share bytes.
    std::vector<const gguf_tensor_info *> by_off;
    by_off.reserve(f->tensors_.size());
    for (const gguf_tensor_info & ti : f->tensors_) by_off.push_back(&ti);
    std::sort(by_off.begin(), by_off.end(),
              [](const gguf_tensor_info * a, const gguf_tensor_info * b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_off.size(); ++i) {
        if (by_off[i - 1]->offset + by_off[i - 1]->n_bytes > by_off[i]->offset) {
            return error(status_code::INVALID_FILE, "gguf: %s: tensors '%s' and '%s' overlap at data offset %" PRIu64,
                         p, by_off[i - 1]->name.c_str(), by_off[i]->name.c_str(), by_off[i]->offset);
        }
    }

    f->map_ = m.map;
    f->fd_  = m.fd;
    m.map   = nullptr;
    m.fd    = -1;
    return f;
}

const gguf_kv * gguf_file::find(std::string_view key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second];
}

const gguf_tensor_info * gguf_file::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// ---- typed getters ----

namespace {

bool is_signed_int(gguf_vtype t) {
    return t == gguf_vtype::INT8 || t == gguf_vtype::INT16 || t == gguf_vtype::INT32 || t == gguf_vtype::INT64;
}
bool is_unsigned_int(gguf_vtype t) {
    return t == gguf_vtype::UINT8 || t == gguf_vtype::UINT16 || t == gguf_vtype::UINT32 || t == gguf_vtype::UINT64;
}
bool is_int(gguf_vtype t) {
    return is_signed_int(t) || is_unsigned_int(t);
}

// Reads element i of a numeric array as a signed or unsigned 64-bit integer. REQUIRES: is_int(t).
void array_int(gguf_vtype t, const uint8_t * data, uint64_t i, int64_t & s, uint64_t & u) {
    switch (t) {
    case gguf_vtype::UINT8:
        u = load_le<uint8_t>(data + i);
        s = int64_t(u);
        break;
    case gguf_vtype::UINT16:
        u = load_le<uint16_t>(data + 2 * i);
        s = int64_t(u);
        break;
    case gguf_vtype::UINT32:
        u = load_le<uint32_t>(data + 4 * i);
        s = int64_t(u);
        break;
    case gguf_vtype::UINT64:
        u = load_le<uint64_t>(data + 8 * i);
        s = int64_t(u);
        break;
    case gguf_vtype::INT8:
        s = load_le<int8_t>(data + i);
        u = uint64_t(s);
        break;
    case gguf_vtype::INT16:
        s = load_le<int16_t>(data + 2 * i);
        u = uint64_t(s);
        break;
    case gguf_vtype::INT32:
        s = load_le<int32_t>(data + 4 * i);
        u = uint64_t(s);
        break;
    case gguf_vtype::INT64:
        s = load_le<int64_t>(data + 8 * i);
        u = uint64_t(s);
        break;
    default:
        s = 0;
        u = 0;
        break;
    }
}

} // namespace

#define LC_GGUF_FIND_OR_NOT_FOUND(kv, key)                                                                             \
    const gguf_kv * kv = find(key);                                                                                    \
    if (!kv) {                                                                                                         \
        return error(status_code::NOT_FOUND, "gguf: %s: missing required key '%.*s'", path_.c_str(),                   \
                     int((key).size()), (key).data());                                                                 \
    }

static status gguf_file_type_error(const std::string & path, const gguf_kv & kv, const char * expected) {
    if (kv.type == gguf_vtype::ARRAY) {
        return error(status_code::INVALID_FILE, "gguf: %s: key '%s' has type ARRAY of %s (expected %s)", path.c_str(),
                     kv.key.c_str(), gguf_vtype_name(kv.arr_type), expected);
    }
    return error(status_code::INVALID_FILE, "gguf: %s: key '%s' has type %s (expected %s)", path.c_str(),
                 kv.key.c_str(), gguf_vtype_name(kv.type), expected);
}

result<uint32_t> gguf_file::get_u32(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (!is_int(kv->type)) return gguf_file_type_error(path_, *kv, "an integer");
    if ((is_signed_int(kv->type) && kv->i64 < 0) || kv->u64 > UINT32_MAX) {
        return error(status_code::INVALID_FILE, "gguf: %s: key '%s' value %s%" PRIu64 " does not fit in 0..%u",
                     path_.c_str(), kv->key.c_str(), is_signed_int(kv->type) && kv->i64 < 0 ? "-" : "",
                     is_signed_int(kv->type) && kv->i64 < 0 ? uint64_t(0) - kv->u64 : kv->u64, UINT32_MAX);
    }
    return uint32_t(kv->u64);
}

result<int64_t> gguf_file::get_i64(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (!is_int(kv->type)) return gguf_file_type_error(path_, *kv, "an integer");
    if (kv->type == gguf_vtype::UINT64 && kv->u64 > uint64_t(INT64_MAX)) {
        return error(status_code::INVALID_FILE, "gguf: %s: key '%s' value %" PRIu64 " does not fit in INT64",
                     path_.c_str(), kv->key.c_str(), kv->u64);
    }
    return kv->i64;
}

result<float> gguf_file::get_f32(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (kv->type != gguf_vtype::FLOAT32 && kv->type != gguf_vtype::FLOAT64) {
        return gguf_file_type_error(path_, *kv, "FLOAT32");
    }
    return float(kv->f64);
}

result<bool> gguf_file::get_bool(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (kv->type != gguf_vtype::BOOL) return gguf_file_type_error(path_, *kv, "BOOL");
    return kv->b;
}

result<std::string> gguf_file::get_str(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (kv->type != gguf_vtype::STRING) return gguf_file_type_error(path_, *kv, "STRING");
    return std::string(kv->str);
}

result<std::vector<std::string_view>> gguf_file::get_arr_str(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (kv->type != gguf_vtype::ARRAY || kv->arr_type != gguf_vtype::STRING) {
        return gguf_file_type_error(path_, *kv, "ARRAY of STRING");
    }
    return kv->arr_str;
}

result<std::vector<float>> gguf_file::get_arr_f32(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (kv->type != gguf_vtype::ARRAY || (kv->arr_type != gguf_vtype::FLOAT32 && kv->arr_type != gguf_vtype::FLOAT64)) {
        return gguf_file_type_error(path_, *kv, "ARRAY of FLOAT32");
    }
    std::vector<float> out(size_t(kv->arr_n));
    for (uint64_t i = 0; i < kv->arr_n; ++i) {
        out[i] = kv->arr_type == gguf_vtype::FLOAT32 ? load_le<float>(kv->arr_data + 4 * i)
                                                     : float(load_le<double>(kv->arr_data + 8 * i));
    }
    return out;
}

result<std::vector<int32_t>> gguf_file::get_arr_i32(std::string_view key) const {
    LC_GGUF_FIND_OR_NOT_FOUND(kv, key);
    if (kv->type != gguf_vtype::ARRAY || !is_int(kv->arr_type))
        return gguf_file_type_error(path_, *kv, "ARRAY of INT32");
    std::vector<int32_t> out(size_t(kv->arr_n));
    for (uint64_t i = 0; i < kv->arr_n; ++i) {
        int64_t  s = 0;
        uint64_t u = 0;
        array_int(kv->arr_type, kv->arr_data, i, s, u);
        const bool neg = is_signed_int(kv->arr_type) && s < 0;
        if ((neg && s < INT32_MIN) || (!neg && u > uint64_t(INT32_MAX))) {
            return error(status_code::INVALID_FILE, "gguf: %s: key '%s' element %" PRIu64 " does not fit in INT32",
                         path_.c_str(), kv->key.c_str(), i);
        }
        out[i] = int32_t(s);
    }
    return out;
}

result<uint32_t> gguf_file::get_u32_or(std::string_view key, uint32_t def) const {
    return find(key) ? get_u32(key) : result<uint32_t>(def);
}
result<float> gguf_file::get_f32_or(std::string_view key, float def) const {
    return find(key) ? get_f32(key) : result<float>(def);
}
result<bool> gguf_file::get_bool_or(std::string_view key, bool def) const {
    return find(key) ? get_bool(key) : result<bool>(def);
}
result<std::string> gguf_file::get_str_or(std::string_view key, std::string def) const {
    return find(key) ? get_str(key) : result<std::string>(std::move(def));
}

#undef LC_GGUF_FIND_OR_NOT_FOUND

namespace {

std::string shape_str(int n_dims, const int64_t * ne) {
    std::string s = "[";
    for (int d = 0; d < n_dims; ++d) {
        if (d) s += ", ";
        s += std::to_string(ne[d]);
    }
    return s + "]";
}

} // namespace

result<const gguf_tensor_info *> gguf_file::require_tensor(std::string_view name, int n_dims,
                                                           const int64_t * ne) const {
    const gguf_tensor_info * t = find_tensor(name);
    if (!t) {
        return error(status_code::NOT_FOUND, "gguf: %s: missing required tensor '%.*s'", path_.c_str(),
                     int(name.size()), name.data());
    }
    // Trailing dimensions of size 1 are equivalent: [n, 1] matches [n].
    bool ok = true;
    for (int d = 0; d < 4; ++d) {
        const int64_t want = d < n_dims ? ne[d] : 1;
        ok &= t->ne[d] == want;
    }
    if (!ok) {
        return error(status_code::INVALID_FILE, "gguf: %s: tensor '%s' has shape %s (expected %s)", path_.c_str(),
                     t->name.c_str(), shape_str(t->n_dims, t->ne).c_str(), shape_str(n_dims, ne).c_str());
    }
    return t;
}

// ---- writer ----

namespace {

template <typename T> void put(std::vector<uint8_t> & b, T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
}

void put_str(std::vector<uint8_t> & b, std::string_view s) {
    put<uint64_t>(b, s.size());
    b.insert(b.end(), s.begin(), s.end());
}

} // namespace

void gguf_writer::set_raw(const std::string & key, std::vector<uint8_t> bytes) {
    for (kv_entry & e : kvs_) {
        if (e.key == key) {
            e.bytes = std::move(bytes);
            return;
        }
    }
    kvs_.push_back({key, std::move(bytes)});
}

template <typename T> static std::vector<uint8_t> scalar_bytes(gguf_vtype t, T v) {
    std::vector<uint8_t> b;
    put<uint32_t>(b, uint32_t(t));
    put<T>(b, v);
    return b;
}

void gguf_writer::set_u8(const std::string & key, uint8_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::UINT8, v));
}
void gguf_writer::set_i8(const std::string & key, int8_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::INT8, v));
}
void gguf_writer::set_u16(const std::string & key, uint16_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::UINT16, v));
}
void gguf_writer::set_i16(const std::string & key, int16_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::INT16, v));
}
void gguf_writer::set_u32(const std::string & key, uint32_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::UINT32, v));
}
void gguf_writer::set_i32(const std::string & key, int32_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::INT32, v));
}
void gguf_writer::set_u64(const std::string & key, uint64_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::UINT64, v));
}
void gguf_writer::set_i64(const std::string & key, int64_t v) {
    set_raw(key, scalar_bytes(gguf_vtype::INT64, v));
}
void gguf_writer::set_f32(const std::string & key, float v) {
    set_raw(key, scalar_bytes(gguf_vtype::FLOAT32, v));
}
void gguf_writer::set_f64(const std::string & key, double v) {
    set_raw(key, scalar_bytes(gguf_vtype::FLOAT64, v));
}
void gguf_writer::set_bool(const std::string & key, bool v) {
    set_raw(key, scalar_bytes(gguf_vtype::BOOL, uint8_t(v ? 1 : 0)));
}

void gguf_writer::set_str(const std::string & key, const std::string & v) {
    std::vector<uint8_t> b;
    put<uint32_t>(b, uint32_t(gguf_vtype::STRING));
    put_str(b, v);
    set_raw(key, std::move(b));
}

void gguf_writer::set_arr_str(const std::string & key, const std::vector<std::string> & v) {
    std::vector<uint8_t> b;
    put<uint32_t>(b, uint32_t(gguf_vtype::ARRAY));
    put<uint32_t>(b, uint32_t(gguf_vtype::STRING));
    put<uint64_t>(b, v.size());
    for (const std::string & s : v) put_str(b, s);
    set_raw(key, std::move(b));
}

void gguf_writer::set_arr(const std::string & key, gguf_vtype elem, const void * data, size_t n) {
    const size_t es = gguf_vtype_size(elem);
    LC_ASSERT(es > 0, "gguf_writer::set_arr: element type %s is not numeric", gguf_vtype_name(elem));
    std::vector<uint8_t> b;
    put<uint32_t>(b, uint32_t(gguf_vtype::ARRAY));
    put<uint32_t>(b, uint32_t(elem));
    put<uint64_t>(b, n);
    const uint8_t * p = static_cast<const uint8_t *>(data);
    if (n) b.insert(b.end(), p, p + n * es);
    set_raw(key, std::move(b));
}

void gguf_writer::set_arr_f32(const std::string & key, const std::vector<float> & v) {
    set_arr(key, gguf_vtype::FLOAT32, v.data(), v.size());
}
void gguf_writer::set_arr_i32(const std::string & key, const std::vector<int32_t> & v) {
    set_arr(key, gguf_vtype::INT32, v.data(), v.size());
}

void gguf_writer::set_alignment(uint32_t alignment) {
    LC_ASSERT(alignment > 0 && (alignment & (alignment - 1)) == 0, "alignment %u is not a power of two", alignment);
    alignment_ = alignment;
    set_u32("general.alignment", alignment);
}

void gguf_writer::add_tensor(const std::string & name, dtype type, const std::vector<int64_t> & ne, const void * data) {
    const dtype_traits tr = dtype_info(type);
    LC_ASSERT(tr.known, "gguf_writer::add_tensor('%s'): unknown type", name.c_str());
    LC_ASSERT(!ne.empty() && ne.size() <= 4, "gguf_writer::add_tensor('%s'): %zu dims", name.c_str(), ne.size());
    LC_ASSERT(ne[0] % tr.block_size == 0, "gguf_writer::add_tensor('%s'): ne[0] %lld not a multiple of %lld",
              name.c_str(), (long long)ne[0], (long long)tr.block_size);
    for (const tensor_entry & t : tensors_) LC_ASSERT(t.name != name, "duplicate tensor '%s'", name.c_str());
    size_t n_bytes = dtype_row_size(type, ne[0]);
    for (size_t d = 1; d < ne.size(); ++d) n_bytes *= size_t(ne[d]);
    const uint8_t * p = static_cast<const uint8_t *>(data);
    tensors_.push_back({name, type, ne, std::vector<uint8_t>(p, p + n_bytes)});
}

std::vector<uint8_t> gguf_writer::to_bytes() const {
    std::vector<uint8_t> b;
    put<uint32_t>(b, k_magic);
    put<uint32_t>(b, 3);
    put<uint64_t>(b, tensors_.size());
    put<uint64_t>(b, kvs_.size());
    for (const kv_entry & e : kvs_) {
        put_str(b, e.key);
        b.insert(b.end(), e.bytes.begin(), e.bytes.end());
    }
    uint64_t off = 0;
    for (const tensor_entry & t : tensors_) {
        put_str(b, t.name);
        put<uint32_t>(b, uint32_t(t.ne.size()));
        for (int64_t n : t.ne) put<uint64_t>(b, uint64_t(n));
        put<uint32_t>(b, uint32_t(t.type));
        put<uint64_t>(b, off);
        off = align_up(off + t.data.size(), alignment_);
    }
    b.resize(size_t(align_up(b.size(), alignment_)), 0);
    for (const tensor_entry & t : tensors_) {
        b.insert(b.end(), t.data.begin(), t.data.end());
        b.resize(size_t(align_up(b.size(), alignment_)), 0);
    }
    return b;
}

status gguf_writer::write(const std::string & path) const {
    const std::vector<uint8_t> b = to_bytes();
    FILE *                     f = std::fopen(path.c_str(), "wb");
    if (!f) return error(status_code::IO_ERROR, "gguf: %s: cannot create: %s", path.c_str(), std::strerror(errno));
    const size_t n  = std::fwrite(b.data(), 1, b.size(), f);
    const int    rc = std::fclose(f);
    if (n != b.size() || rc != 0) {
        return error(status_code::IO_ERROR, "gguf: %s: write failed: %s", path.c_str(), std::strerror(errno));
    }
    return status::ok();
}

} // namespace lc
