// gguf_convert (gguf/gguf-convert.h) and `longctx gguf convert` on a tiny writer-made GGUF: every metadata key
// comes back with its type and value (general.file_type becomes 32), matrices come back in BF16 with values worked
// out by hand (quantized blocks whose values bf16 holds exactly, f32/f16 values that round to nearest even), a
// Q4_K matrix equals the reference dequantizer rounded by this file's own bit-level RNE, 1-D tensors come back F32;
// bad input gives one-line errors.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ref/dequant.h"
#include "core/fp16.h"
#include "gguf/gguf-convert.h"
#include "gguf/gguf-test-util.h"

using namespace lc;
using namespace lc::test;

namespace {

uint16_t bf16_bits(float f) { // round to nearest even, written out independently of core/fp16.h
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t lower = x & 0xffffu, upper = x >> 16;
    if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u))) return uint16_t(upper + 1);
    return uint16_t(upper);
}

float bf16_value(uint16_t b) {
    const uint32_t x = uint32_t(b) << 16;
    float          f;
    std::memcpy(&f, &x, 4);
    return f;
}

std::vector<float> read_bf16(const gguf_tensor_info & t) {
    std::vector<float> v(static_cast<size_t>(t.n_elements()));
    for (size_t i = 0; i < v.size(); ++i) {
        uint16_t b;
        std::memcpy(&b, t.data + 2 * i, 2);
        v[i] = bf16_value(b);
    }
    return v;
}

struct sample_file {
    gguf_writer        w;
    std::vector<float> q8_expect, q41_expect, f32_expect, f16_expect;
    std::vector<uint8_t> q4k; // one row of 256 values
};

sample_file make_file() {
    sample_file s;
    gguf_writer & w = s.w;
    w.set_str("general.architecture", "llama");
    w.set_u32("general.file_type", 3);
    w.set_alignment(64);
    w.set_u8("t.u8", 200);
    w.set_i8("t.i8", -100);
    w.set_u16("t.u16", 60000);
    w.set_i16("t.i16", -30000);
    w.set_i32("t.i32", -2000000000);
    w.set_u64("t.u64", 18000000000000000000ull);
    w.set_i64("t.i64", -9000000000000000000ll);
    w.set_f32("t.f32", 0.1f);
    w.set_f64("t.f64", 0.1);
    w.set_bool("t.bool", true);
    w.set_arr_str("t.strs", {"a", "", "hello world"});
    w.set_arr_f32("t.f32s", {1.5f, -2.25f});
    w.set_arr_i32("t.i32s", {7, -8, 9});
    const uint8_t bytes[3] = {1, 2, 255};
    w.set_arr("t.u8s", gguf_vtype::UINT8, bytes, 3);

    // Q8_0, 3 rows of 64: d = 0.5, q = (7 i + 3 r) mod 255 - 127: value 0.5 q, at most 8 significant bits.
    std::vector<block_q8_0> q8(6);
    for (int r = 0; r < 3; ++r)
        for (int b = 0; b < 2; ++b) {
            block_q8_0 & blk = q8[size_t(r * 2 + b)];
            blk.d            = fp32_to_fp16(0.5f);
            for (int j = 0; j < 32; ++j) {
                const int i = b * 32 + j, q = (7 * i + 3 * r) % 255 - 127;
                blk.qs[j]   = int8_t(q);
            }
        }
    for (int r = 0; r < 3; ++r)
        for (int i = 0; i < 64; ++i) s.q8_expect.push_back(0.5f * float((7 * i + 3 * r) % 255 - 127));
    w.add_tensor("blk.0.attn_q.weight", dtype::Q8_0, {64, 3}, q8.data());

    // Q4_1, 2 rows of 32: d = 0.25, m = -1: element i = 0.25 q_i - 1, q_i = (i + 5 r) mod 16; element i < 16 in
    // the low nibble of qs[i], element i + 16 in its high nibble.
    std::vector<block_q4_1> q41(2);
    for (int r = 0; r < 2; ++r) {
        q41[size_t(r)].d = fp32_to_fp16(0.25f);
        q41[size_t(r)].m = fp32_to_fp16(-1.0f);
        for (int i = 0; i < 16; ++i)
            q41[size_t(r)].qs[i] = uint8_t(((i + 5 * r) % 16) | (((i + 16 + 5 * r) % 16) << 4));
        for (int i = 0; i < 32; ++i) s.q41_expect.push_back(0.25f * float((i + 5 * r) % 16) - 1.0f);
    }
    w.add_tensor("blk.0.ffn_up.weight", dtype::Q4_1, {32, 2}, q41.data());

    // F32 matrix: values and their bf16 roundings worked out by hand (8 significant bits, ties to even).
    const std::vector<float> f32 = {1.00390625f,  // 1 + 2^-8: a tie, 1 is even          -> 1
                                    1.005859375f, // 1 + 3 2^-9: above the tie            -> 1 + 2^-7
                                    1.01171875f,  // 1 + 2^-7 + 2^-8: tie, odd below      -> 1 + 2^-6
                                    -2.0f,        // exact
                                    65504.0f,     // 0xffe0: 8 ones then 111              -> 65536
                                    7.0f,         // exact
                                    -0.0f,        // sign kept
                                    0.0f};
    s.f32_expect = {1.0f, 1.0078125f, 1.015625f, -2.0f, 65536.0f, 7.0f, -0.0f, 0.0f};
    w.add_tensor("output.weight", dtype::F32, {4, 2}, f32.data());

    // F16 matrix: 0.1 is 0x2e66 = 1.1001100110b x 2^-4 in fp16; bf16 keeps 1.1001100|110 -> rounds up to 1.1001101b
    // x 2^-4 = 0.10009765625. -1.5 and 0.25 and 2048 are exact.
    const std::vector<fp16_t> f16 = {fp32_to_fp16(0.1f), fp32_to_fp16(-1.5f), fp32_to_fp16(0.25f),
                                     fp32_to_fp16(2048.0f)};
    s.f16_expect                  = {0.10009765625f, -1.5f, 0.25f, 2048.0f};
    w.add_tensor("token_embd.weight", dtype::F16, {2, 2}, f16.data());

    // Q4_K, one row of 256 random bytes with sane scales (compared with the reference dequantizer).
    block_q4_K      k{};
    std::mt19937    g(11);
    k.d    = fp32_to_fp16(0.01f);
    k.dmin = fp32_to_fp16(0.003f);
    for (auto & b : k.scales) b = uint8_t(g());
    for (auto & b : k.qs) b = uint8_t(g());
    s.q4k.resize(sizeof(k));
    std::memcpy(s.q4k.data(), &k, sizeof(k));
    w.add_tensor("blk.0.ffn_down.weight", dtype::Q4_K, {256, 1}, s.q4k.data());

    // 1-D: an F32 norm (kept bit for bit) and an F16 bias (to F32).
    const std::vector<float> norm = {1.1f, -0.3f, 1e-30f, 3.0f};
    w.add_tensor("blk.0.attn_norm.weight", dtype::F32, {4}, norm.data());
    const std::vector<fp16_t> bias = {fp32_to_fp16(0.5f), fp32_to_fp16(-1.25f)};
    w.add_tensor("blk.0.attn_q.bias", dtype::F16, {2}, bias.data());
    return s;
}

TEST(GgufConvert, Bf16ValuesAndMetadata) {
    temp_dir    dir;
    sample_file s = make_file();
    ASSERT_TRUE(s.w.write(dir.file("in.gguf")));
    ASSERT_TRUE(gguf_convert_file(dir.file("in.gguf"), dir.file("out.gguf"), dtype::BF16));
    auto inr  = gguf_file::open(dir.file("in.gguf"));
    auto outr = gguf_file::open(dir.file("out.gguf"));
    ASSERT_TRUE(inr.is_ok() && outr.is_ok()) << outr.get_status().message();
    const gguf_file &in = **inr, &out = **outr;

    // metadata: same keys in the same order, same types and values; file_type 32; alignment 64
    ASSERT_EQ(in.kvs().size(), out.kvs().size());
    for (size_t i = 0; i < in.kvs().size(); ++i) {
        const gguf_kv &a = in.kvs()[i], &b = out.kvs()[i];
        EXPECT_EQ(a.key, b.key);
        EXPECT_EQ(a.type, b.type) << a.key;
        if (a.key == "general.file_type") {
            EXPECT_EQ(b.u64, 32u);
            continue;
        }
        EXPECT_EQ(a.u64, b.u64) << a.key;
        EXPECT_EQ(a.i64, b.i64) << a.key;
        EXPECT_EQ(a.f64, b.f64) << a.key;
        EXPECT_EQ(a.b, b.b) << a.key;
        EXPECT_EQ(a.str, b.str) << a.key;
        EXPECT_EQ(a.arr_type, b.arr_type) << a.key;
        ASSERT_EQ(a.arr_n, b.arr_n) << a.key;
        EXPECT_EQ(a.arr_str, b.arr_str) << a.key;
        if (a.type == gguf_vtype::ARRAY && a.arr_type != gguf_vtype::STRING)
            EXPECT_EQ(0, std::memcmp(a.arr_data, b.arr_data, a.arr_n * gguf_vtype_size(a.arr_type))) << a.key;
    }
    EXPECT_EQ(out.alignment(), 64u);

    // tensors: same names, order and shapes
    ASSERT_EQ(in.tensors().size(), out.tensors().size());
    for (size_t i = 0; i < in.tensors().size(); ++i) {
        const gguf_tensor_info &a = in.tensors()[i], &b = out.tensors()[i];
        EXPECT_EQ(a.name, b.name);
        EXPECT_EQ(a.n_dims, b.n_dims);
        for (int d = 0; d < 4; ++d) EXPECT_EQ(a.ne[d], b.ne[d]);
        EXPECT_EQ(b.type, b.n_dims >= 2 ? dtype::BF16 : dtype::F32) << b.name;
        EXPECT_EQ(b.offset % 64, 0u);
    }
    auto expect_bf16 = [&](const char * name, const std::vector<float> & want) {
        const gguf_tensor_info * t = out.find_tensor(name);
        ASSERT_NE(t, nullptr) << name;
        const std::vector<float> got = read_bf16(*t);
        ASSERT_EQ(got.size(), want.size()) << name;
        for (size_t i = 0; i < got.size(); ++i) {
            EXPECT_EQ(got[i], want[i]) << name << "[" << i << "]";
            EXPECT_EQ(std::signbit(got[i]), std::signbit(want[i])) << name << "[" << i << "]";
        }
    };
    expect_bf16("blk.0.attn_q.weight", s.q8_expect);
    expect_bf16("blk.0.ffn_up.weight", s.q41_expect);
    expect_bf16("output.weight", s.f32_expect);
    expect_bf16("token_embd.weight", s.f16_expect);
    std::vector<float> k(256);
    ref::dequantize_row(dtype::Q4_K, s.q4k.data(), k.data(), 256);
    std::vector<float> k_want;
    for (float v : k) k_want.push_back(bf16_value(bf16_bits(v)));
    expect_bf16("blk.0.ffn_down.weight", k_want);
    int n_inexact = 0; // the Q4_K values do need rounding: the check above is not vacuous
    for (size_t i = 0; i < k.size(); ++i) n_inexact += k[i] != k_want[i];
    EXPECT_GT(n_inexact, 100);

    const gguf_tensor_info * norm = out.find_tensor("blk.0.attn_norm.weight");
    ASSERT_NE(norm, nullptr);
    const float norm_want[4] = {1.1f, -0.3f, 1e-30f, 3.0f};
    EXPECT_EQ(0, std::memcmp(norm->data, norm_want, sizeof(norm_want)));
    const gguf_tensor_info * bias = out.find_tensor("blk.0.attn_q.bias");
    ASSERT_NE(bias, nullptr);
    const float bias_want[2] = {0.5f, -1.25f};
    EXPECT_EQ(0, std::memcmp(bias->data, bias_want, sizeof(bias_want)));
}

TEST(GgufConvert, Errors) {
    temp_dir    dir;
    sample_file s = make_file();
    ASSERT_TRUE(s.w.write(dir.file("in.gguf")));
    status st = gguf_convert_file(dir.file("in.gguf"), dir.file("out.gguf"), dtype::F16);
    EXPECT_EQ(st.code(), status_code::INVALID_ARGUMENT);
    EXPECT_NE(st.message().find("BF16"), std::string::npos) << st.message();
    st = gguf_convert_file(dir.file("in.gguf"), dir.file("in.gguf"), dtype::BF16);
    EXPECT_EQ(st.code(), status_code::INVALID_ARGUMENT) << st.message();
    st = gguf_convert_file(dir.file("missing.gguf"), dir.file("out.gguf"), dtype::BF16);
    EXPECT_EQ(st.code(), status_code::NOT_FOUND) << st.message();
    st = gguf_convert_file(dir.file("in.gguf"), dir.file("no-such-dir/out.gguf"), dtype::BF16);
    EXPECT_EQ(st.code(), status_code::IO_ERROR) << st.message();
    write_bytes(dir.file("bad.gguf"), {'G', 'G', 'U', 'F', 3, 0});
    st = gguf_convert_file(dir.file("bad.gguf"), dir.file("out.gguf"), dtype::BF16);
    EXPECT_FALSE(st.is_ok());
    EXPECT_EQ(st.message().find('\n'), std::string::npos) << st.message();
}

// The command line: exit codes and one-line messages (skips when the executable is not built).
TEST(GgufConvert, CommandLine) {
    const std::string exe = std::string(LC_BINARY_DIR) + "/longctx";
    if (!std::filesystem::exists(exe)) GTEST_SKIP() << exe << " not built";
    temp_dir    dir;
    sample_file s = make_file();
    ASSERT_TRUE(s.w.write(dir.file("in.gguf")));
    auto run = [&](const std::string & args, std::string * err) {
        const std::string e  = dir.file("err.txt");
        const int         st = std::system((exe + " gguf convert " + args + " >/dev/null 2>" + e).c_str());
        err->clear();
        if (FILE * f = std::fopen(e.c_str(), "rb")) {
            char   buf[4096];
            size_t n;
            while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) err->append(buf, n);
            std::fclose(f);
        }
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    };
    std::string err;
    EXPECT_EQ(run("-m " + dir.file("in.gguf") + " -o " + dir.file("out.gguf") + " --type bf16", &err), 0) << err;
    EXPECT_TRUE(gguf_file::open(dir.file("out.gguf")).is_ok());
    EXPECT_EQ(run("-m " + dir.file("in.gguf") + " -o " + dir.file("o2.gguf") + " --type q8_0", &err), 2);
    EXPECT_NE(err.find("unknown --type 'q8_0'"), std::string::npos) << err;
    EXPECT_EQ(run("-m " + dir.file("in.gguf") + " --type bf16", &err), 2);
    EXPECT_NE(err.find("-o OUT"), std::string::npos) << err;
    EXPECT_EQ(run("-m " + dir.file("nope.gguf") + " -o " + dir.file("o3.gguf") + " --type bf16", &err), 1);
    EXPECT_NE(err.find("nope.gguf"), std::string::npos) << err;
    EXPECT_EQ(err.find('\n'), err.size() - 1) << "one line: " << err;
}

} // namespace
