// GGUF reader and writer: round trips of every value and tensor type, one hand-made bad file per validation
// rule (the message must name the file, key or tensor and the limit), typed getters, and the real model.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gguf/gguf-test-util.h"

using namespace lc;
using namespace lc::test;

TEST(gguf_roundtrip, every_value_type) {
    temp_dir    dir;
    gguf_writer w;
    w.set_u8("t.u8", 250);
    w.set_i8("t.i8", -7);
    w.set_u16("t.u16", 65000);
    w.set_i16("t.i16", -30000);
    w.set_u32("t.u32", 4000000000u);
    w.set_i32("t.i32", -2000000000);
    w.set_u64("t.u64", 18000000000000000000ull);
    w.set_i64("t.i64", -9000000000000000000ll);
    w.set_f32("t.f32", 1.5e-5f);
    w.set_f64("t.f64", -2.718281828459045);
    w.set_bool("t.bool_t", true);
    w.set_bool("t.bool_f", false);
    w.set_str("t.str", "h\xC3\xA9llo\nworld");
    w.set_str("t.empty", "");
    w.set_arr_str("t.arr_str", {"", "x", "longer string"});
    w.set_arr_f32("t.arr_f32", {1.0f, -0.5f, 3e8f});
    w.set_arr_i32("t.arr_i32", {-1, 0, 2147483647});
    const uint8_t  a_u8[3]   = {0, 128, 255};
    const int8_t   a_i8[2]   = {-128, 127};
    const uint16_t a_u16[2]  = {1, 65535};
    const int16_t  a_i16[2]  = {-32768, 5};
    const uint32_t a_u32[2]  = {7, 4294967295u};
    const uint64_t a_u64[1]  = {1ull << 40};
    const int64_t  a_i64[2]  = {-(1ll << 40), 3};
    const double   a_f64[2]  = {0.1, -1e300};
    const uint8_t  a_bool[3] = {1, 0, 1};
    w.set_arr("t.arr_u8", gguf_vtype::UINT8, a_u8, 3);
    w.set_arr("t.arr_i8", gguf_vtype::INT8, a_i8, 2);
    w.set_arr("t.arr_u16", gguf_vtype::UINT16, a_u16, 2);
    w.set_arr("t.arr_i16", gguf_vtype::INT16, a_i16, 2);
    w.set_arr("t.arr_u32", gguf_vtype::UINT32, a_u32, 2);
    w.set_arr("t.arr_u64", gguf_vtype::UINT64, a_u64, 1);
    w.set_arr("t.arr_i64", gguf_vtype::INT64, a_i64, 2);
    w.set_arr("t.arr_f64", gguf_vtype::FLOAT64, a_f64, 2);
    w.set_arr("t.arr_bool", gguf_vtype::BOOL, a_bool, 3);
    w.set_arr("t.arr_empty", gguf_vtype::INT32, nullptr, 0);
    w.set_u32("t.replaced", 1);
    w.set_u32("t.replaced", 2); // replaces, keeps one key

    const std::string path = dir.file("values.gguf");
    ASSERT_TRUE(w.write(path));
    auto r = gguf_file::open(path);
    ASSERT_TRUE(r) << r.get_status().message();
    const gguf_file & f = **r;
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), 32u);
    EXPECT_EQ(f.kvs().size(), 28u);
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_EQ(f.kvs()[0].key, "t.u8"); // file order is kept

    EXPECT_EQ(f.find("t.u8")->type, gguf_vtype::UINT8);
    EXPECT_EQ(f.find("t.u8")->u64, 250u);
    EXPECT_EQ(f.find("t.i8")->i64, -7);
    EXPECT_EQ(f.find("t.u16")->u64, 65000u);
    EXPECT_EQ(f.find("t.i16")->i64, -30000);
    EXPECT_EQ(f.find("t.u32")->u64, 4000000000u);
    EXPECT_EQ(f.find("t.i32")->i64, -2000000000);
    EXPECT_EQ(f.find("t.u64")->u64, 18000000000000000000ull);
    EXPECT_EQ(f.find("t.i64")->i64, -9000000000000000000ll);
    EXPECT_EQ(f.find("t.f32")->f64, double(1.5e-5f));
    EXPECT_EQ(f.find("t.f64")->f64, -2.718281828459045);
    EXPECT_TRUE(f.find("t.bool_t")->b);
    EXPECT_FALSE(f.find("t.bool_f")->b);
    EXPECT_EQ(f.find("t.str")->str, "h\xC3\xA9llo\nworld");
    EXPECT_EQ(f.find("t.empty")->str, "");
    EXPECT_EQ(f.find("t.replaced")->u64, 2u);
    EXPECT_EQ(f.find("t.missing"), nullptr);

    // typed getters
    EXPECT_EQ(*f.get_u32("t.u32"), 4000000000u);
    EXPECT_EQ(*f.get_u32("t.u8"), 250u); // any integer type whose value fits
    EXPECT_EQ(*f.get_i64("t.i8"), -7);
    EXPECT_EQ(*f.get_i64("t.i64"), -9000000000000000000ll);
    EXPECT_EQ(*f.get_f32("t.f32"), 1.5e-5f);
    EXPECT_EQ(*f.get_bool("t.bool_t"), true);
    EXPECT_EQ(*f.get_str("t.str"), "h\xC3\xA9llo\nworld");
    EXPECT_EQ(*f.get_arr_str("t.arr_str"), (std::vector<std::string_view>{"", "x", "longer string"}));
    EXPECT_EQ(*f.get_arr_f32("t.arr_f32"), (std::vector<float>{1.0f, -0.5f, 3e8f}));
    EXPECT_EQ(*f.get_arr_i32("t.arr_i32"), (std::vector<int32_t>{-1, 0, 2147483647}));
    EXPECT_EQ(*f.get_arr_i32("t.arr_u8"), (std::vector<int32_t>{0, 128, 255}));
    EXPECT_EQ(*f.get_arr_i32("t.arr_i16"), (std::vector<int32_t>{-32768, 5}));
    EXPECT_TRUE(f.get_arr_i32("t.arr_empty")->empty());

    // raw numeric arrays
    const gguf_kv * a = f.find("t.arr_u16");
    ASSERT_EQ(a->type, gguf_vtype::ARRAY);
    EXPECT_EQ(a->arr_type, gguf_vtype::UINT16);
    ASSERT_EQ(a->arr_n, 2u);
    EXPECT_EQ(std::memcmp(a->arr_data, a_u16, sizeof(a_u16)), 0);
    EXPECT_EQ(std::memcmp(f.find("t.arr_u64")->arr_data, a_u64, sizeof(a_u64)), 0);
    EXPECT_EQ(std::memcmp(f.find("t.arr_i64")->arr_data, a_i64, sizeof(a_i64)), 0);
    EXPECT_EQ(std::memcmp(f.find("t.arr_f64")->arr_data, a_f64, sizeof(a_f64)), 0);
    EXPECT_EQ(std::memcmp(f.find("t.arr_i8")->arr_data, a_i8, sizeof(a_i8)), 0);
    EXPECT_EQ(std::memcmp(f.find("t.arr_u32")->arr_data, a_u32, sizeof(a_u32)), 0);
    EXPECT_EQ(std::memcmp(f.find("t.arr_bool")->arr_data, a_bool, sizeof(a_bool)), 0);
    EXPECT_EQ(f.find("t.arr_bool")->arr_type, gguf_vtype::BOOL);
    EXPECT_EQ(f.find("t.arr_f64")->arr_type, gguf_vtype::FLOAT64);
}

TEST(gguf_getters, errors_and_defaults) {
    temp_dir    dir;
    gguf_writer w;
    w.set_i32("neg", -1);
    w.set_u64("big", 1ull << 40);
    w.set_u64("huge", 1ull << 63);
    w.set_str("s", "text");
    w.set_f32("f", 0.5f);
    w.set_arr_i32("ai", {1});
    const uint32_t big[1] = {4000000000u};
    w.set_arr("au", gguf_vtype::UINT32, big, 1);
    const std::string path = dir.file("getters.gguf");
    ASSERT_TRUE(w.write(path));
    auto r = gguf_file::open(path);
    ASSERT_TRUE(r) << r.get_status().message();
    const gguf_file & f = **r;

    auto missing = f.get_u32("llama.block_count");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.get_status().code(), status_code::NOT_FOUND);
    EXPECT_EQ(missing.get_status().message(), "gguf: " + path + ": missing required key 'llama.block_count'");
    EXPECT_EQ(f.get_str("nope").get_status().code(), status_code::NOT_FOUND);
    EXPECT_EQ(f.get_arr_f32("nope").get_status().code(), status_code::NOT_FOUND);

    auto neg = f.get_u32("neg");
    ASSERT_FALSE(neg);
    EXPECT_EQ(neg.get_status().code(), status_code::INVALID_FILE);
    EXPECT_NE(neg.get_status().message().find("'neg' value -1 does not fit"), std::string::npos)
        << neg.get_status().message();
    EXPECT_FALSE(f.get_u32("big"));
    EXPECT_EQ(*f.get_i64("big"), int64_t(1) << 40);
    EXPECT_FALSE(f.get_i64("huge"));

    auto wrong = f.get_u32("s");
    ASSERT_FALSE(wrong);
    EXPECT_EQ(wrong.get_status().code(), status_code::INVALID_FILE);
    EXPECT_EQ(wrong.get_status().message(), "gguf: " + path + ": key 's' has type STRING (expected an integer)");
    EXPECT_FALSE(f.get_str("f"));
    EXPECT_FALSE(f.get_f32("s"));
    EXPECT_FALSE(f.get_bool("s"));
    auto arr_wrong = f.get_arr_str("ai");
    ASSERT_FALSE(arr_wrong);
    EXPECT_NE(arr_wrong.get_status().message().find("has type ARRAY of INT32 (expected ARRAY of STRING)"),
              std::string::npos);
    EXPECT_FALSE(f.get_arr_i32("au")); // 4e9 does not fit in INT32
    EXPECT_FALSE(f.get_arr_f32("ai"));

    EXPECT_EQ(*f.get_u32_or("absent", 7), 7u);
    EXPECT_EQ(*f.get_f32_or("absent", 0.25f), 0.25f);
    EXPECT_EQ(*f.get_f32_or("f", 0.25f), 0.5f);
    EXPECT_EQ(*f.get_bool_or("absent", true), true);
    EXPECT_EQ(*f.get_str_or("absent", "def"), "def");
    EXPECT_EQ(*f.get_str_or("s", "def"), "text");
    EXPECT_FALSE(f.get_u32_or("s", 7)); // present with the wrong type is an error
    EXPECT_FALSE(f.get_str_or("f", "x"));
}

TEST(gguf_roundtrip, tensors_of_every_supported_type) {
    temp_dir    dir;
    gguf_writer w;
    struct spec {
        const char *         name;
        dtype                type;
        std::vector<int64_t> ne;
    };
    const std::vector<spec> specs = {
        {"f32", dtype::F32, {7}},        {"f16", dtype::F16, {3, 5}},          {"bf16", dtype::BF16, {9, 1, 2}},
        {"q8_0", dtype::Q8_0, {64, 3}},  {"q4_0", dtype::Q4_0, {32, 2, 2, 2}}, {"q4_1", dtype::Q4_1, {96, 1}},
        {"q5_0", dtype::Q5_0, {32, 3}},  {"q4_k", dtype::Q4_K, {256, 2}},      {"q5_k", dtype::Q5_K, {512}},
        {"q6_k", dtype::Q6_K, {256, 3}},
    };
    std::vector<std::vector<uint8_t>> datas;
    uint32_t                          seed = 1;
    for (const spec & s : specs) {
        size_t nb = dtype_row_size(s.type, s.ne[0]);
        for (size_t d = 1; d < s.ne.size(); ++d) nb *= size_t(s.ne[d]);
        std::vector<uint8_t> data(nb);
        for (uint8_t & b : data) b = uint8_t((seed = seed * 1103515245u + 12345u) >> 16);
        w.add_tensor(s.name, s.type, s.ne, data.data());
        datas.push_back(std::move(data));
    }
    const std::vector<uint8_t> bytes = w.to_bytes();
    EXPECT_EQ(bytes.size() % 32, 0u);
    const std::string path = dir.file("tensors.gguf");
    ASSERT_TRUE(w.write(path));
    auto r = gguf_file::open(path);
    ASSERT_TRUE(r) << r.get_status().message();
    const gguf_file & f = **r;
    EXPECT_EQ(f.file_size(), bytes.size());
    EXPECT_EQ(f.data_offset() % 32, 0u);
    ASSERT_EQ(f.tensors().size(), specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
        const gguf_tensor_info & t = f.tensors()[i];
        SCOPED_TRACE(t.name);
        EXPECT_EQ(t.name, specs[i].name);
        EXPECT_EQ(t.type, specs[i].type);
        EXPECT_EQ(t.n_dims, int(specs[i].ne.size()));
        for (int d = 0; d < 4; ++d) EXPECT_EQ(t.ne[d], d < t.n_dims ? specs[i].ne[size_t(d)] : 1);
        EXPECT_EQ(t.offset % 32, 0u);
        EXPECT_EQ(t.n_bytes, datas[i].size());
        EXPECT_EQ(t.data, f.mapping() + f.data_offset() + t.offset);
        EXPECT_EQ(std::memcmp(t.data, datas[i].data(), datas[i].size()), 0);
        EXPECT_EQ(f.find_tensor(specs[i].name), &t);
    }
    EXPECT_EQ(f.find_tensor("nope"), nullptr);

    const int64_t ne_ok[2] = {64, 3}, ne_bad[2] = {64, 4}, ne_1d[1] = {7};
    EXPECT_TRUE(f.require_tensor("q8_0", 2, ne_ok));
    EXPECT_TRUE(f.require_tensor("f32", 1, ne_1d));
    const int64_t ne_f32_2d[2] = {7, 1}; // trailing 1s are equivalent
    EXPECT_TRUE(f.require_tensor("f32", 2, ne_f32_2d));
    auto bad = f.require_tensor("q8_0", 2, ne_bad);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.get_status().message(), "gguf: " + path + ": tensor 'q8_0' has shape [64, 3] (expected [64, 4])");
    auto absent = f.require_tensor("output.weight", 2, ne_ok);
    ASSERT_FALSE(absent);
    EXPECT_EQ(absent.get_status().code(), status_code::NOT_FOUND);
    EXPECT_EQ(absent.get_status().message(), "gguf: " + path + ": missing required tensor 'output.weight'");
}

TEST(gguf_roundtrip, alignment_and_version_2) {
    temp_dir    dir;
    gguf_writer w = make_sample();
    w.set_alignment(64);
    std::vector<uint8_t> bytes = w.to_bytes();
    const std::string    path  = dir.file("a64.gguf");
    write_bytes(path, bytes);
    auto r = gguf_file::open(path);
    ASSERT_TRUE(r) << r.get_status().message();
    EXPECT_EQ((*r)->alignment(), 64u);
    EXPECT_EQ((*r)->data_offset() % 64, 0u);
    for (const auto & t : (*r)->tensors()) EXPECT_EQ(t.offset % 64, 0u);

    // Version 2 has the same layout for everything this reader handles.
    bytes[4] = 2;
    write_bytes(path, bytes);
    auto r2 = gguf_file::open(path);
    ASSERT_TRUE(r2) << r2.get_status().message();
    EXPECT_EQ((*r2)->version(), 2u);

    // A file with keys but no tensors (vocab-only) and no padding after the header.
    gguf_writer v;
    v.set_str("tokenizer.ggml.model", "gpt2");
    const std::vector<uint8_t> vb = v.to_bytes();
    std::vector<uint8_t>       unpadded(vb.begin(), vb.begin() + 24 + 8 + 20 + 4 + 8 + 4);
    const std::string          vpath = dir.file("vocab.gguf");
    write_bytes(vpath, unpadded);
    auto r3 = gguf_file::open(vpath);
    ASSERT_TRUE(r3) << r3.get_status().message();
    EXPECT_EQ(*(*r3)->get_str("tokenizer.ggml.model"), "gpt2");
}

// ---- validation: one hand-made bad file per rule ----

class gguf_bad : public ::testing::Test {
  protected:
    temp_dir dir;

    // Writes bytes and opens them; returns the error (fails the test if the file opened).
    status open_bad(const std::vector<uint8_t> & bytes, const gguf_open_options & opts = {}) {
        const std::string path = dir.file("bad.gguf");
        write_bytes(path, bytes);
        auto r = gguf_file::open(path, opts);
        EXPECT_FALSE(r) << "opened a bad file";
        if (r) return status::ok();
        const std::string & m = r.get_status().message();
        EXPECT_EQ(m.rfind("gguf: " + path + ": ", 0), 0u) << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << m;
        return r.get_status();
    }
    std::string p() const { return dir.file("bad.gguf"); }
};

TEST_F(gguf_bad, missing_file_and_not_a_file) {
    auto r = gguf_file::open(dir.file("absent.gguf"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.get_status().code(), status_code::NOT_FOUND);
    EXPECT_NE(r.get_status().message().find("absent.gguf: cannot open"), std::string::npos);
    auto d = gguf_file::open(dir.path());
    ASSERT_FALSE(d);
    EXPECT_NE(d.get_status().message().find("not a regular file"), std::string::npos);
}

TEST_F(gguf_bad, magic) {
    raw_gguf b;
    b.u32(0x46554747u + 1).u32(3).u64(0).u64(0);
    EXPECT_EQ(open_bad(b.bytes).message(), "gguf: " + p() + ": bad magic 0x46554748 (expected \"GGUF\")");
    EXPECT_EQ(open_bad({}).message(),
              "gguf: " + p() + ": truncated: magic needs 4 bytes at offset 0 but the file has 0");
    EXPECT_EQ(open_bad({'G', 'G', 'U'}).message(),
              "gguf: " + p() + ": truncated: magic needs 4 bytes at offset 0 but the file has 3");
}

TEST_F(gguf_bad, version) {
    raw_gguf b;
    b.header(1, 0, 0);
    status st = open_bad(b.bytes);
    EXPECT_EQ(st.code(), status_code::UNSUPPORTED);
    EXPECT_EQ(st.message(), "gguf: " + p() + ": version 1 is not supported (2 and 3 are)");
    raw_gguf c;
    c.header(4, 0, 0);
    EXPECT_EQ(open_bad(c.bytes).message(), "gguf: " + p() + ": version 4 is not supported (2 and 3 are)");
    raw_gguf be;
    be.header(0x03000000u, 0, 0);
    EXPECT_EQ(open_bad(be.bytes).message(), "gguf: " + p() + ": big-endian GGUF files are not supported");
    raw_gguf t;
    t.u32(0x46554747u).u32(3).u64(0); // n_kv missing
    EXPECT_EQ(open_bad(t.bytes).message(),
              "gguf: " + p() + ": truncated: header needs 8 bytes at offset 16 but the file has 16");
}

TEST_F(gguf_bad, counts_bounded_by_file_size) {
    raw_gguf b;
    b.header(3, 0, 1ull << 62);
    EXPECT_EQ(open_bad(b.bytes).message(),
              "gguf: " + p() + ": n_kv 4611686018427387904 is more than the file of 24 bytes can hold (at most 0)");
    raw_gguf c;
    c.header(3, ~0ull, 0);
    EXPECT_NE(open_bad(c.bytes).message().find("n_tensors 18446744073709551615 is more than the file of 24 bytes"),
              std::string::npos);
}

TEST_F(gguf_bad, truncated_string_value) {
    raw_gguf b;
    b.header(3, 0, 2);
    b.kv_u32("a.first", 1);
    b.str("tokenizer.chat_template").u32(uint32_t(gguf_vtype::STRING)).u64(1048576);
    const uint64_t off = b.bytes.size();
    b.raw(std::vector<uint8_t>(100, 'x'));
    EXPECT_EQ(open_bad(b.bytes).message(),
              "gguf: " + p() + ": truncated: key 2 of 2 ('tokenizer.chat_template') needs 1048576 bytes at offset " +
                  std::to_string(off) + " but the file has " + std::to_string(b.bytes.size()));
}

TEST_F(gguf_bad, truncated_key_name_and_arrays) {
    raw_gguf b;
    b.header(3, 0, 1);
    b.u64(1000).raw({'a', 'b'});
    b.raw(std::vector<uint8_t>(20, 0));
    EXPECT_EQ(open_bad(b.bytes).message(),
              "gguf: " + p() + ": truncated: key 1 of 1 needs 1000 bytes at offset 32 but the file has 54");

    raw_gguf k;
    k.header(3, 0, 1);
    k.u64(70000);
    k.raw(std::vector<uint8_t>(70000, 'k'));
    EXPECT_EQ(open_bad(k.bytes).message(), "gguf: " + p() + ": key 1 of 1: key length 70000 exceeds the limit 65535");

    raw_gguf a;
    a.header(3, 0, 1);
    a.str("tokenizer.ggml.token_type").u32(uint32_t(gguf_vtype::ARRAY)).u32(uint32_t(gguf_vtype::INT32));
    a.u64(1ull << 62).u32(0);
    status st = open_bad(a.bytes);
    EXPECT_NE(st.message().find("truncated: key 1 of 1 ('tokenizer.ggml.token_type'): array of 4611686018427387904 "
                                "INT32 needs 18446744073709551615 bytes"),
              std::string::npos)
        << st.message();

    raw_gguf s;
    s.header(3, 0, 1);
    s.str("tokenizer.ggml.tokens").u32(uint32_t(gguf_vtype::ARRAY)).u32(uint32_t(gguf_vtype::STRING));
    s.u64(1000000).str("a").str("b");
    st = open_bad(s.bytes);
    EXPECT_NE(st.message().find("truncated: key 1 of 1 ('tokenizer.ggml.tokens'): array of 1000000 strings needs at "
                                "least 8000000 bytes"),
              std::string::npos)
        << st.message();

    raw_gguf e;
    e.header(3, 0, 1);
    e.str("tokenizer.ggml.tokens").u32(uint32_t(gguf_vtype::ARRAY)).u32(uint32_t(gguf_vtype::STRING));
    e.u64(3).str("a").str("b").u64(50).raw({'c'});
    st = open_bad(e.bytes);
    EXPECT_NE(st.message().find("truncated: key 1 of 1 ('tokenizer.ggml.tokens') needs 50 bytes"), std::string::npos)
        << st.message();
}

TEST_F(gguf_bad, value_types) {
    raw_gguf b;
    b.header(3, 0, 1);
    b.str("x.weird").u32(13).u32(0);
    EXPECT_EQ(open_bad(b.bytes).message(),
              "gguf: " + p() + ": key 1 of 1 ('x.weird'): value type 13 is unknown (0 to 12 are)");

    raw_gguf a;
    a.header(3, 0, 1);
    a.str("x.arr").u32(uint32_t(gguf_vtype::ARRAY)).u32(99).u64(0);
    EXPECT_EQ(open_bad(a.bytes).message(),
              "gguf: " + p() + ": key 1 of 1 ('x.arr'): array element type 99 is unknown (0 to 12 are)");

    raw_gguf n;
    n.header(3, 0, 1);
    n.str("x.nested").u32(uint32_t(gguf_vtype::ARRAY)).u32(uint32_t(gguf_vtype::ARRAY)).u64(1);
    n.u32(uint32_t(gguf_vtype::UINT8)).u64(1).u8(5);
    status st = open_bad(n.bytes);
    EXPECT_EQ(st.code(), status_code::UNSUPPORTED);
    EXPECT_EQ(st.message(), "gguf: " + p() + ": key 1 of 1 ('x.nested'): arrays of arrays are not supported");

    raw_gguf bo;
    bo.header(3, 0, 1);
    bo.str("x.flag").u32(uint32_t(gguf_vtype::BOOL)).u8(2);
    EXPECT_EQ(open_bad(bo.bytes).message(),
              "gguf: " + p() + ": key 1 of 1 ('x.flag'): bool value 2 is neither 0 nor 1");

    raw_gguf ba;
    ba.header(3, 0, 1);
    ba.str("x.flags").u32(uint32_t(gguf_vtype::ARRAY)).u32(uint32_t(gguf_vtype::BOOL)).u64(3).u8(1).u8(0).u8(7);
    EXPECT_EQ(open_bad(ba.bytes).message(),
              "gguf: " + p() + ": key 1 of 1 ('x.flags'): bool element 2 is 7, neither 0 nor 1");
}

TEST_F(gguf_bad, duplicate_and_empty_keys) {
    raw_gguf b;
    b.header(3, 0, 3);
    b.kv_u32("llama.block_count", 1).kv_u32("llama.context_length", 2).kv_u32("llama.block_count", 3);
    EXPECT_EQ(open_bad(b.bytes).message(), "gguf: " + p() + ": key 3 of 3 ('llama.block_count'): duplicate key");
    raw_gguf e;
    e.header(3, 0, 1);
    e.kv_u32("", 1);
    EXPECT_EQ(open_bad(e.bytes).message(), "gguf: " + p() + ": key 1 of 1 has an empty name");
}

TEST_F(gguf_bad, alignment) {
    raw_gguf b;
    b.header(3, 0, 1).kv_u32("general.alignment", 48);
    EXPECT_EQ(open_bad(b.bytes).message(),
              "gguf: " + p() + ": general.alignment 48 is not a power of two between 1 and 2^31");
    raw_gguf z;
    z.header(3, 0, 1).kv_u32("general.alignment", 0);
    EXPECT_NE(open_bad(z.bytes).message().find("general.alignment 0 is not a power of two"), std::string::npos);
    raw_gguf s;
    s.header(3, 0, 1);
    s.str("general.alignment").u32(uint32_t(gguf_vtype::STRING)).str("32");
    EXPECT_EQ(open_bad(s.bytes).message(),
              "gguf: " + p() + ": key 'general.alignment' has type STRING (expected UINT32)");
}

// Tensor-table cases: a header with no keys and one tensor described by the arguments, then `data` bytes of
// padding and data.
namespace {
std::vector<uint8_t> one_tensor(const std::string & name, uint32_t n_dims, std::vector<uint64_t> ne, uint32_t type,
                                uint64_t offset, size_t n_data) {
    raw_gguf b;
    b.header(3, 1, 0);
    b.tensor(name, n_dims, ne, type, offset);
    b.pad(32);
    b.raw(std::vector<uint8_t>(n_data, 0));
    return b.bytes;
}
} // namespace

TEST_F(gguf_bad, tensor_types) {
    status st = open_bad(one_tensor("blk.3.attn_q.weight", 2, {32, 4}, uint32_t(dtype::Q5_1), 0, 4 * 24));
    EXPECT_EQ(st.code(), status_code::UNSUPPORTED);
    EXPECT_EQ(st.message(), "gguf: " + p() + ": tensor 'blk.3.attn_q.weight' has type Q5_1; this build supports " +
                                std::string(dtype_supported_list()));
    // The same file opens when unsupported (but known) types are allowed, as `longctx gguf info` does.
    gguf_open_options opts;
    opts.allow_unsupported_types = true;
    write_bytes(p(), one_tensor("blk.3.attn_q.weight", 2, {32, 4}, uint32_t(dtype::Q5_1), 0, 4 * 24));
    auto r = gguf_file::open(p(), opts);
    ASSERT_TRUE(r) << r.get_status().message();
    EXPECT_EQ((*r)->tensors()[0].type, dtype::Q5_1);
    EXPECT_EQ((*r)->tensors()[0].n_bytes, 96u);

    st = open_bad(one_tensor("w", 1, {32}, 99, 0, 64), opts);
    EXPECT_EQ(st.code(), status_code::UNSUPPORTED);
    EXPECT_EQ(st.message(), "gguf: " + p() +
                                ": tensor 'w' has type id 99, unknown to this build; this build supports " +
                                std::string(dtype_supported_list()));
}

TEST_F(gguf_bad, tensor_shapes) {
    EXPECT_EQ(open_bad(one_tensor("w", 0, {}, 0, 0, 64)).message(),
              "gguf: " + p() + ": tensor 'w' has 0 dimensions (1 to 4 are supported)");
    EXPECT_EQ(open_bad(one_tensor("w", 5, {1, 1, 1, 1, 1}, 0, 0, 64)).message(),
              "gguf: " + p() + ": tensor 'w' has 5 dimensions (1 to 4 are supported)");
    EXPECT_EQ(open_bad(one_tensor("w", 2, {4, 0}, 0, 0, 64)).message(),
              "gguf: " + p() + ": tensor 'w' has ne[1] = 0 (must be > 0)");
    EXPECT_EQ(open_bad(one_tensor("w", 1, {~0ull}, 0, 0, 64)).message(),
              "gguf: " + p() + ": tensor 'w' has ne[0] = -1 (must be > 0)");
    EXPECT_EQ(open_bad(one_tensor("w", 2, {48, 2}, uint32_t(dtype::Q8_0), 0, 256)).message(),
              "gguf: " + p() + ": tensor 'w' of type Q8_0 has ne[0] = 48, not a multiple of the block size 32");
    EXPECT_EQ(open_bad(one_tensor("w", 3, {1ull << 32, 1ull << 31, 4}, 0, 0, 64)).message(),
              "gguf: " + p() + ": tensor 'w' shape [4294967296, 2147483648, 4, 1] has more than 2^63 elements");
    // 2^62 F32 elements: the element count fits, the byte size does not.
    EXPECT_EQ(open_bad(one_tensor("w", 2, {1ull << 31, 1ull << 31}, 0, 0, 64)).message(),
              "gguf: " + p() + ": tensor 'w' size in bytes overflows 64 bits");
}

TEST_F(gguf_bad, tensor_data) {
    EXPECT_EQ(open_bad(one_tensor("output.weight", 1, {8}, 0, 16, 64)).message(),
              "gguf: " + p() + ": tensor 'output.weight' offset 16 is not a multiple of general.alignment 32");
    // header 24 + tensor info (8 + 13 + 4 + 16 + 4 + 8 = 53) = 77 -> data at 96; 64 bytes of data.
    EXPECT_EQ(open_bad(one_tensor("output.weight", 2, {8, 4}, 0, 32, 64)).message(),
              "gguf: " + p() +
                  ": tensor 'output.weight' data out of bounds: 128 bytes at data offset 32 (file offset "
                  "128) but the file has 160");
    EXPECT_NE(open_bad(one_tensor("w", 1, {8}, 0, 1ull << 63, 64)).message().find("tensor 'w' data out of bounds"),
              std::string::npos);
    // No data section at all.
    raw_gguf b;
    b.header(3, 1, 0).tensor("w", 1, {8}, 0, 0);
    EXPECT_NE(open_bad(b.bytes).message().find("tensor 'w' data out of bounds: 32 bytes at data offset 0 (file offset "
                                               "64) but the file has 57"),
              std::string::npos);
}

TEST_F(gguf_bad, duplicate_and_overlapping_tensors) {
    raw_gguf b;
    b.header(3, 2, 0).tensor("w", 1, {8}, 0, 0).tensor("w", 1, {8}, 0, 32).pad(32);
    b.raw(std::vector<uint8_t>(64, 0));
    EXPECT_EQ(open_bad(b.bytes).message(), "gguf: " + p() + ": tensor 'w': duplicate tensor name");

    raw_gguf o;
    o.header(3, 2, 0).tensor("a", 1, {16}, 0, 0).tensor("b", 1, {8}, 0, 32).pad(32);
    o.raw(std::vector<uint8_t>(96, 0));
    EXPECT_EQ(open_bad(o.bytes).message(), "gguf: " + p() + ": tensors 'a' and 'b' overlap at data offset 32");

    raw_gguf t;
    t.header(3, 2, 0).tensor("a", 1, {8}, 0, 0).u64(5000).raw(std::vector<uint8_t>(40, 'b'));
    // 24 + 33 (tensor 1) + 8 (name length) = 65; 65 + 40 = 105 bytes
    EXPECT_EQ(open_bad(t.bytes).message(),
              "gguf: " + p() + ": truncated: tensor 2 of 2 needs 5000 bytes at offset 65 but the file has 105");
    raw_gguf e;
    e.header(3, 1, 0).tensor("", 1, {8}, 0, 0).pad(32).raw(std::vector<uint8_t>(32, 0));
    EXPECT_EQ(open_bad(e.bytes).message(), "gguf: " + p() + ": tensor 1 of 1 has an empty name");
}

// ---- the real model ----

TEST(gguf_model, smollm2) {
    const std::string path = model_path();
    auto              r    = gguf_file::open(path);
    if (!r && r.get_status().code() == status_code::NOT_FOUND) GTEST_SKIP() << "model not found: " << path;
    ASSERT_TRUE(r) << r.get_status().message();
    const gguf_file & f = **r;
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.tensors().size(), 272u);
    EXPECT_EQ(f.kvs().size(), 33u);
    EXPECT_EQ(*f.get_u32("llama.block_count"), 30u);
    EXPECT_EQ(*f.get_str("general.architecture"), "llama");
    EXPECT_EQ(*f.get_str("tokenizer.ggml.pre"), "smollm");
    EXPECT_EQ(f.get_arr_str("tokenizer.ggml.tokens")->size(), 49152u);
    EXPECT_EQ(f.get_arr_i32("tokenizer.ggml.token_type")->size(), 49152u);
    EXPECT_EQ(*f.get_u32("llama.embedding_length"), 576u);
    EXPECT_EQ(*f.get_f32("llama.rope.freq_base"), 100000.0f);
    const int64_t ne[2] = {576, 49152};
    auto          emb   = f.require_tensor("token_embd.weight", 2, ne);
    ASSERT_TRUE(emb) << emb.get_status().message();
    EXPECT_EQ((*emb)->type, dtype::Q8_0);
    uint64_t end = 0;
    for (const auto & t : f.tensors()) end = std::max(end, t.offset + t.n_bytes);
    EXPECT_LE(f.data_offset() + end, f.file_size());
}
