// Robustness of the GGUF reader against damaged files: every truncation of a small valid file and a few
// thousand seeded random corruptions of its header must give an error or a consistent file, never a crash,
// and every view the reader hands out must lie inside the mapping. Run it under ASan/UBSan too.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "gguf/gguf-test-util.h"

using namespace lc;
using namespace lc::test;

namespace {

bool inside(const gguf_file & f, const void * p, uint64_t n) {
    const uint8_t * b = f.mapping();
    const uint8_t * q = static_cast<const uint8_t *>(p);
    return q >= b && uint64_t(q - b) <= f.file_size() && n <= f.file_size() - uint64_t(q - b);
}

// Everything open() returned must be consistent and in bounds; touches every byte it points to.
void check_consistent(const gguf_file & f, const std::string & what) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(f.version() == 2 || f.version() == 3);
    ASSERT_TRUE(f.alignment() > 0 && (f.alignment() & (f.alignment() - 1)) == 0);
    uint64_t sum = 0;
    for (const gguf_kv & kv : f.kvs()) {
        ASSERT_FALSE(kv.key.empty());
        ASSERT_EQ(f.find(kv.key), &kv);
        if (kv.type == gguf_vtype::STRING) {
            ASSERT_TRUE(inside(f, kv.str.data(), kv.str.size()));
            for (char c : kv.str) sum += uint8_t(c);
        }
        if (kv.type == gguf_vtype::ARRAY) {
            ASSERT_NE(kv.arr_type, gguf_vtype::ARRAY);
            if (kv.arr_type == gguf_vtype::STRING) {
                ASSERT_EQ(kv.arr_str.size(), kv.arr_n);
                for (std::string_view s : kv.arr_str) ASSERT_TRUE(inside(f, s.data(), s.size()));
            } else {
                const uint64_t nb = kv.arr_n * gguf_vtype_size(kv.arr_type);
                ASSERT_TRUE(inside(f, kv.arr_data, nb));
                for (uint64_t i = 0; i < nb; ++i) sum += kv.arr_data[i];
            }
        }
    }
    for (const gguf_tensor_info & t : f.tensors()) {
        ASSERT_GE(t.n_dims, 1);
        ASSERT_LE(t.n_dims, 4);
        for (int d = 0; d < 4; ++d) ASSERT_GT(t.ne[d], 0);
        ASSERT_TRUE(dtype_is_supported(t.type));
        ASSERT_EQ(t.offset % f.alignment(), 0u);
        ASSERT_EQ(t.data, f.mapping() + f.data_offset() + t.offset);
        ASSERT_TRUE(inside(f, t.data, t.n_bytes));
        ASSERT_EQ(f.find_tensor(t.name), &t);
        for (uint64_t i = 0; i < t.n_bytes; ++i) sum += t.data[i];
    }
    (void)sum;
}

// open() on bytes: returns true when the file opened.
bool try_open(const temp_dir & dir, const std::vector<uint8_t> & bytes, const std::string & what) {
    const std::string path = dir.file("fuzz.gguf");
    write_bytes(path, bytes);
    auto r = gguf_file::open(path);
    if (!r) {
        const std::string & m = r.get_status().message();
        EXPECT_EQ(m.rfind("gguf: " + path + ": ", 0), 0u) << what << ": " << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << what << ": " << m;
        return false;
    }
    check_consistent(**r, what);
    return true;
}

// Values that tend to hit edge cases when written over a count, length, type or offset, including
// lengths just under the file size that only an element-size-aware bound rejects.
std::vector<uint64_t> interesting_values(uint64_t fs) {
    return {0,          1,          2,     3,          4,      7,     8,           12,          13,          31,
            32,         33,         255,   256,        65535,  65536, 0x7fffffffu, 0x80000000u, 0xffffffffu, 1ull << 32,
            1ull << 62, 1ull << 63, ~0ull, ~0ull - 31, fs - 1, fs,    fs + 1,      fs / 2,      fs / 4,      fs / 8};
}

} // namespace

TEST(gguf_fuzz, every_truncation) {
    temp_dir                   dir;
    const std::vector<uint8_t> full = make_sample().to_bytes();
    ASSERT_TRUE(try_open(dir, full, "full"));
    // The sample is under 2 KiB: try every length. Only lengths that keep all tensor data may open.
    uint64_t end = 0;
    {
        write_bytes(dir.file("full.gguf"), full);
        auto r = gguf_file::open(dir.file("full.gguf"));
        ASSERT_TRUE(r);
        for (const auto & t : (*r)->tensors()) end = std::max(end, (*r)->data_offset() + t.offset + t.n_bytes);
    }
    ASSERT_LT(full.size(), 4096u);
    for (size_t n = 0; n < full.size(); ++n) {
        std::vector<uint8_t> cut(full.begin(), full.begin() + long(n));
        const bool           ok = try_open(dir, cut, "truncated to " + std::to_string(n));
        EXPECT_EQ(ok, n >= end) << "truncated to " << n;
    }
}

TEST(gguf_fuzz, random_header_corruption) {
    temp_dir                   dir;
    const std::vector<uint8_t> full = make_sample().to_bytes();
    size_t                     header_end;
    {
        write_bytes(dir.file("full.gguf"), full);
        auto r = gguf_file::open(dir.file("full.gguf"));
        ASSERT_TRUE(r);
        header_end = size_t((*r)->data_offset());
    }
    const std::vector<uint64_t> interesting = interesting_values(full.size());
    std::mt19937_64             rng(20240607);
    int                         n_ok = 0, n_err = 0;
    const int                   n_iter = 4000;
    for (int it = 0; it < n_iter; ++it) {
        std::vector<uint8_t> b       = full;
        const int            n_edits = 1 + int(rng() % 3);
        std::string          what    = "iteration " + std::to_string(it) + ":";
        for (int e = 0; e < n_edits; ++e) {
            const size_t pos  = size_t(rng() % header_end);
            const int    kind = int(rng() % 3);
            if (kind == 0) { // flip one bit
                b[pos] ^= uint8_t(1u << (rng() % 8));
            } else if (kind == 1) { // random byte
                b[pos] = uint8_t(rng());
            } else { // an interesting 4- or 8-byte value
                const uint64_t v     = interesting[rng() % interesting.size()];
                const size_t   width = rng() % 2 ? 8 : 4;
                for (size_t i = 0; i < width && pos + i < b.size(); ++i) b[pos + i] = uint8_t(v >> (8 * i));
            }
            what += " " + std::to_string(kind) + "@" + std::to_string(pos);
        }
        if (try_open(dir, b, what)) {
            ++n_ok;
        } else {
            ++n_err;
        }
        if (::testing::Test::HasFailure()) break;
    }
    std::printf("random corruptions: %d opened, %d rejected\n", n_ok, n_err);
    EXPECT_GT(n_err, n_iter / 2); // most damage to the header must be caught
}

// Systematic: every interesting value, as a 4- and an 8-byte little-endian integer, written at every
// position of the header. Hits every count, length, type and offset field with every edge value.
TEST(gguf_fuzz, every_field_overwrite) {
    temp_dir                   dir;
    const std::vector<uint8_t> full = make_sample().to_bytes();
    size_t                     header_end;
    {
        write_bytes(dir.file("full.gguf"), full);
        auto r = gguf_file::open(dir.file("full.gguf"));
        ASSERT_TRUE(r);
        header_end = size_t((*r)->data_offset());
    }
    const std::vector<uint64_t> interesting = interesting_values(full.size());
    int                         n_ok = 0, n_err = 0;
    for (size_t pos = 0; pos < header_end; ++pos) {
        for (uint64_t v : interesting) {
            for (size_t width : {size_t(4), size_t(8)}) {
                std::vector<uint8_t> b = full;
                for (size_t i = 0; i < width && pos + i < b.size(); ++i) b[pos + i] = uint8_t(v >> (8 * i));
                const bool ok = try_open(
                    dir, b, std::to_string(v) + " (" + std::to_string(width) + " bytes) at " + std::to_string(pos));
                (ok ? n_ok : n_err) += 1;
                if (::testing::Test::HasFailure()) return;
            }
        }
    }
    std::printf("field overwrites: %d opened, %d rejected\n", n_ok, n_err);
}
