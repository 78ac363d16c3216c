// `longctx gguf info MODEL`: prints a GGUF file's header, every metadata key with its type and value, the
// tensor table and per-type totals, after the same validation the engine applies when loading.
// `longctx gguf convert -m IN -o OUT --type bf16`: rewrites the weights in BF16 (gguf/gguf-convert.h).
#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <string_view>

#include "cli/commands.h"
#include "gguf/gguf-convert.h"
#include "gguf/gguf.h"

namespace lc::cli {

namespace {

constexpr size_t k_max_str_chars = 64; // longer strings are shortened
constexpr size_t k_max_arr_shown = 8;  // array elements shown

void print_help(FILE * f) {
    std::fprintf(f,
                 "usage: longctx gguf info MODEL\n"
                 "       longctx gguf convert -m IN -o OUT --type bf16\n"
                 "\n"
                 "Prints a GGUF file's version, alignment and size, every metadata key with its type and value\n"
                 "(arrays: element type, length and the first %zu elements; strings over %zu bytes shortened),\n"
                 "the tensor table (name, type, shape, bytes, offset) and totals per tensor type.\n"
                 "The file is validated as when loading a model; tensor types this build cannot compute with are\n"
                 "listed and marked.\n"
                 "\n"
                 "\n"
                 "convert writes a copy of IN with every matrix (tensors of 2+ dimensions) in BF16: dequantized by\n"
                 "the reference dequantizers and rounded to nearest even, the weights the CUDA backend computes\n"
                 "with, so that the CPU path can run the same weights. Norms and biases stay F32; all metadata is\n"
                 "copied (general.file_type becomes 32, MOSTLY_BF16).\n"
                 "\n"
                 "options:\n"
                 "  -m, --model MODEL   the file (same as the positional argument; env LONGCTX_ARG_MODEL)\n"
                 "  -o, --output OUT    convert: the file to write\n"
                 "  --type TYPE         convert: the target type; bf16 only\n"
                 "  -h, --help          this text\n",
                 k_max_arr_shown, k_max_str_chars);
}

int usage_error(const char * fmt, const char * arg) {
    std::fprintf(stderr, "longctx gguf: ");
    std::fprintf(stderr, fmt, arg);
    std::fprintf(stderr, " (see longctx gguf --help)\n");
    return 2;
}

// A string as a quoted literal, control bytes escaped, cut at a UTF-8 character boundary after `max` bytes.
std::string quote(std::string_view s, size_t max) {
    size_t n = s.size();
    if (n > max) {
        n = max;
        while (n > 0 && (uint8_t(s[n]) & 0xc0) == 0x80) --n; // do not split a multi-byte character
    }
    std::string out = "\"";
    for (size_t i = 0; i < n; ++i) {
        const unsigned char ch = uint8_t(s[i]);
        switch (ch) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                char buf[8];
                std::snprintf(buf, sizeof(buf), "\\x%02x", ch);
                out += buf;
            } else {
                out += char(ch);
            }
        }
    }
    out += "\"";
    if (n < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
    return out;
}

// The shortest %g form that reads back to the same value: 1e-05 rather than 9.99999975e-06 for a float.
std::string shortest_float(double v, bool is_f32) {
    char buf[40];
    for (int prec = 6; prec <= 17; ++prec) {
        std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (is_f32 ? std::strtof(buf, nullptr) == float(v) : std::strtod(buf, nullptr) == v) break;
    }
    return buf;
}

std::string scalar_str(const gguf_kv & kv) {
    char buf[64];
    switch (kv.type) {
    case gguf_vtype::UINT8:
    case gguf_vtype::UINT16:
    case gguf_vtype::UINT32:
    case gguf_vtype::UINT64:
        std::snprintf(buf, sizeof(buf), "%" PRIu64, kv.u64);
        break;
    case gguf_vtype::INT8:
    case gguf_vtype::INT16:
    case gguf_vtype::INT32:
    case gguf_vtype::INT64:
        std::snprintf(buf, sizeof(buf), "%" PRId64, kv.i64);
        break;
    case gguf_vtype::FLOAT32:
        return shortest_float(kv.f64, true);
    case gguf_vtype::FLOAT64:
        return shortest_float(kv.f64, false);
    case gguf_vtype::BOOL:
        return kv.b ? "true" : "false";
    case gguf_vtype::STRING:
        return quote(kv.str, k_max_str_chars);
    case gguf_vtype::ARRAY:
        return "";
    }
    return buf;
}

std::string array_elem_str(const gguf_kv & kv, uint64_t i) {
    if (kv.arr_type == gguf_vtype::STRING) return quote(kv.arr_str[i], 24);
    gguf_kv e;
    e.type             = kv.arr_type;
    const size_t    es = gguf_vtype_size(kv.arr_type);
    const uint8_t * p  = kv.arr_data + i * es;
    switch (kv.arr_type) {
    case gguf_vtype::UINT8:
        e.u64 = p[0];
        break;
    case gguf_vtype::BOOL:
        e.b = p[0] != 0;
        break;
    case gguf_vtype::INT8:
        e.i64 = int8_t(p[0]);
        break;
    case gguf_vtype::UINT16: {
        uint16_t v;
        std::memcpy(&v, p, 2);
        e.u64 = v;
        break;
    }
    case gguf_vtype::INT16: {
        int16_t v;
        std::memcpy(&v, p, 2);
        e.i64 = v;
        break;
    }
    case gguf_vtype::UINT32: {
        uint32_t v;
        std::memcpy(&v, p, 4);
        e.u64 = v;
        break;
    }
    case gguf_vtype::INT32: {
        int32_t v;
        std::memcpy(&v, p, 4);
        e.i64 = v;
        break;
    }
    case gguf_vtype::UINT64: {
        uint64_t v;
        std::memcpy(&v, p, 8);
        e.u64 = v;
        break;
    }
    case gguf_vtype::INT64: {
        int64_t v;
        std::memcpy(&v, p, 8);
        e.i64 = v;
        break;
    }
    case gguf_vtype::FLOAT32: {
        float v;
        std::memcpy(&v, p, 4);
        e.f64 = v;
        break;
    }
    case gguf_vtype::FLOAT64: {
        double v;
        std::memcpy(&v, p, 8);
        e.f64 = v;
        break;
    }
    default:
        break;
    }
    return scalar_str(e);
}

std::string human_bytes(uint64_t n) {
    char buf[32];
    if (n < 1024) {
        std::snprintf(buf, sizeof(buf), "%" PRIu64 " B", n);
    } else if (n < (uint64_t(1) << 20)) {
        std::snprintf(buf, sizeof(buf), "%.1f KiB", double(n) / 1024.0);
    } else if (n < (uint64_t(1) << 30)) {
        std::snprintf(buf, sizeof(buf), "%.1f MiB", double(n) / double(1 << 20));
    } else {
        std::snprintf(buf, sizeof(buf), "%.2f GiB", double(n) / double(1 << 30));
    }
    return buf;
}

std::string shape_str(const gguf_tensor_info & t) {
    std::string s = "[";
    for (int d = 0; d < t.n_dims; ++d) {
        if (d) s += ", ";
        s += std::to_string(t.ne[d]);
    }
    return s + "]";
}

int info(const std::string & model) {
    gguf_open_options opts;
    opts.allow_unsupported_types = true;
    auto r                       = gguf_file::open(model, opts);
    if (!r) {
        std::fprintf(stderr, "longctx %s\n", r.get_status().message().c_str());
        return 1;
    }
    const gguf_file & f = **r;

    std::printf("file:        %s\n", f.path().c_str());
    std::printf("version:     %u\n", f.version());
    std::printf("alignment:   %" PRIu64 "\n", f.alignment());
    std::printf("size:        %" PRIu64 " bytes (%s)\n", f.file_size(), human_bytes(f.file_size()).c_str());
    std::printf("data offset: %" PRIu64 "\n", f.data_offset());

    size_t w_key = 3;
    for (const gguf_kv & kv : f.kvs()) w_key = std::max(w_key, kv.key.size());
    std::printf("\nmetadata: %zu keys\n", f.kvs().size());
    for (const gguf_kv & kv : f.kvs()) {
        if (kv.type != gguf_vtype::ARRAY) {
            std::printf("  %-*s  %-8s %s\n", int(w_key), kv.key.c_str(), gguf_vtype_name(kv.type),
                        scalar_str(kv).c_str());
            continue;
        }
        std::string    v = "[";
        const uint64_t n = std::min<uint64_t>(kv.arr_n, k_max_arr_shown);
        for (uint64_t i = 0; i < n; ++i) {
            if (i) v += ", ";
            v += array_elem_str(kv, i);
        }
        if (n < kv.arr_n) v += ", ...";
        v += "]";
        std::printf("  %-*s  %-8s %s[%" PRIu64 "] %s\n", int(w_key), kv.key.c_str(), "ARRAY",
                    gguf_vtype_name(kv.arr_type), kv.arr_n, v.c_str());
    }

    size_t w_name = 4, w_shape = 5;
    for (const gguf_tensor_info & t : f.tensors()) {
        w_name  = std::max(w_name, t.name.size());
        w_shape = std::max(w_shape, shape_str(t).size());
    }
    std::printf("\ntensors: %zu\n", f.tensors().size());
    std::printf("  %5s  %-*s  %-5s  %-*s  %12s  %12s\n", "#", int(w_name), "name", "type", int(w_shape), "shape",
                "bytes", "offset");
    struct per_type {
        uint64_t n_tensors = 0, n_elements = 0, n_bytes = 0;
    };
    std::map<uint32_t, per_type> totals;
    per_type                     all;
    size_t                       idx = 0;
    for (const gguf_tensor_info & t : f.tensors()) {
        std::printf("  %5zu  %-*s  %-5s  %-*s  %12" PRIu64 "  %12" PRIu64 "\n", ++idx, int(w_name), t.name.c_str(),
                    dtype_name(t.type), int(w_shape), shape_str(t).c_str(), t.n_bytes, t.offset);
        per_type & p = totals[uint32_t(t.type)];
        for (per_type * q : {&p, &all}) {
            q->n_tensors += 1;
            q->n_elements += uint64_t(t.n_elements());
            q->n_bytes += t.n_bytes;
        }
    }

    std::printf("\ntypes:\n");
    std::printf("  %-5s  %8s  %14s  %14s  %10s\n", "type", "tensors", "elements", "bytes", "size");
    for (const auto & [id, p] : totals) {
        const dtype t = dtype(id);
        std::printf("  %-5s  %8" PRIu64 "  %14" PRIu64 "  %14" PRIu64 "  %10s%s\n", dtype_name(t), p.n_tensors,
                    p.n_elements, p.n_bytes, human_bytes(p.n_bytes).c_str(),
                    dtype_is_supported(t) ? "" : "  (not supported by this build)");
    }
    std::printf("  %-5s  %8" PRIu64 "  %14" PRIu64 "  %14" PRIu64 "  %10s\n", "total", all.n_tensors, all.n_elements,
                all.n_bytes, human_bytes(all.n_bytes).c_str());
    return 0;
}

} // namespace

int cmd_gguf(const args_t & args) {
    if (args.empty()) {
        print_help(stderr);
        return 2;
    }
    if (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
        print_help(stdout);
        return 0;
    }
    if (args[0] != "info" && args[0] != "convert")
        return usage_error("unknown subcommand '%s'; the subcommands are 'info' and 'convert'", args[0].c_str());
    const bool  convert = args[0] == "convert";
    std::string model, output, type;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string & a = args[i];
        if (a == "-h" || a == "--help") {
            print_help(stdout);
            return 0;
        }
        if (a == "-m" || a == "--model") {
            if (i + 1 >= args.size()) return usage_error("%s needs a file name", a.c_str());
            if (!model.empty()) return usage_error("more than one model given ('%s')", args[i + 1].c_str());
            model = args[++i];
        } else if (convert && (a == "-o" || a == "--output")) {
            if (i + 1 >= args.size()) return usage_error("%s needs a file name", a.c_str());
            output = args[++i];
        } else if (convert && a == "--type") {
            if (i + 1 >= args.size()) return usage_error("%s needs a type (bf16)", a.c_str());
            type = args[++i];
        } else if (a.size() > 1 && a[0] == '-') {
            return usage_error("unknown option '%s'", a.c_str());
        } else {
            if (!model.empty()) return usage_error("more than one model given ('%s')", a.c_str());
            model = a;
        }
    }
    if (model.empty()) {
        const char * env = std::getenv("LONGCTX_ARG_MODEL");
        if (env && *env) model = env;
    }
    if (model.empty()) return usage_error("%s", convert ? "convert needs an input file (-m IN)" : "info needs a MODEL file");
    if (!convert) return info(model);
    if (output.empty()) return usage_error("%s", "convert needs an output file (-o OUT)");
    if (type.empty()) return usage_error("%s", "convert needs a target type (--type bf16)");
    std::string t = type;
    std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (t != "bf16") return usage_error("unknown --type '%s'; the only one is bf16", type.c_str());
    const status st = gguf_convert_file(model, output, dtype::BF16);
    if (!st.is_ok()) {
        std::fprintf(stderr, "longctx %s\n", st.message().c_str());
        return 1;
    }
    std::fprintf(stderr, "longctx gguf convert: wrote %s (BF16 matrices)\n", output.c_str());
    return 0;
}

} // namespace lc::cli
