// SHA-256 against the FIPS 180-2 / NIST example messages (digests as published; cross-checked with Python's
// hashlib), streaming in odd chunk sizes, the hardware path against the scalar one, and the file helper.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/sha256.h"

namespace {

struct vector_case {
    std::string  msg;
    const char * hex;
};

std::vector<vector_case> fips_cases() {
    return {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", // 448 bits
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqr"
         "s"
         "tu", // 896 bits
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
        {std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
}

} // namespace

TEST(sha256, fips_vectors_one_shot) {
    for (const auto & c : fips_cases()) {
        EXPECT_EQ(lc::sha256_hex(c.msg.data(), c.msg.size()), c.hex) << "length " << c.msg.size();
    }
}

TEST(sha256, fips_vectors_streaming_odd_chunks) {
    for (const auto & c : fips_cases()) {
        for (size_t chunk : {1, 3, 55, 56, 63, 64, 65, 127, 1000}) {
            lc::sha256 h;
            for (size_t off = 0; off < c.msg.size(); off += chunk) {
                h.update(c.msg.data() + off, std::min(chunk, c.msg.size() - off));
            }
            EXPECT_EQ(h.final_hex(), c.hex) << "length " << c.msg.size() << " chunk " << chunk;
        }
    }
}

TEST(sha256, reset_reuses_object) {
    lc::sha256 h;
    h.update("xyz", 3);
    (void)h.final();
    h.reset();
    h.update("abc", 3);
    EXPECT_EQ(h.final_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// The scalar block loop on its own, on the padded one-block message "abc" (FIPS 180-2 appendix B.1).
TEST(sha256, scalar_block_abc) {
    uint8_t block[64] = {'a', 'b', 'c', 0x80};
    block[63]         = 24; // message length in bits
    uint32_t st[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    lc::sha256_blocks_scalar(st, block, 1);
    const uint32_t expect[8] = {0xba7816bf, 0x8f01cfea, 0x414140de, 0x5dae2223,
                                0xb00361a3, 0x96177a9c, 0xb410ff61, 0xf20015ad};
    for (int i = 0; i < 8; ++i) EXPECT_EQ(st[i], expect[i]) << "word " << i;
}

TEST(sha256, hardware_matches_scalar) {
    if (!lc::sha256_hw_available()) GTEST_SKIP() << "CPU has no SHA extensions; only the scalar path runs";
    std::mt19937_64      rng(1234);
    std::vector<uint8_t> data(64 * 1000);
    for (auto & b : data) b = uint8_t(rng());
    for (size_t n_blocks : {1, 2, 7, 1000}) {
        uint32_t s_ref[8] = {1, 2, 3, 4, 5, 6, 7, 8}, s_hw[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        lc::sha256_blocks_scalar(s_ref, data.data(), n_blocks);
        lc::sha256_blocks_hw(s_hw, data.data(), n_blocks);
        for (int i = 0; i < 8; ++i) EXPECT_EQ(s_hw[i], s_ref[i]) << "word " << i << " n_blocks " << n_blocks;
    }
}

TEST(sha256, file_helper) {
    const std::string path = std::string(testing::TempDir()) + "lc-sha256-test.bin";
    {
        std::FILE * f = std::fopen(path.c_str(), "wb");
        ASSERT_NE(f, nullptr);
        const std::string a(1000000, 'a');
        std::fwrite(a.data(), 1, a.size(), f);
        std::fclose(f);
    }
    auto r = lc::sha256_file_hex(path);
    ASSERT_TRUE(r.is_ok()) << r.get_status().message();
    EXPECT_EQ(*r, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    std::remove(path.c_str());

    auto missing = lc::sha256_file_hex(path);
    ASSERT_FALSE(missing.is_ok());
    EXPECT_EQ(missing.get_status().code(), lc::status_code::NOT_FOUND);
    EXPECT_NE(missing.get_status().message().find(path), std::string::npos);
}

TEST(sha256, throughput) {
    std::vector<uint8_t> data(size_t(64) << 20, 0x5a);
    const auto           t0 = std::chrono::steady_clock::now();
    const std::string    hx = lc::sha256_hex(data.data(), data.size());
    const double         s  = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("sha256: 64 MiB in %.3f s (%.0f MiB/s, %s path)\n", s, 64 / s,
                lc::sha256_hw_available() ? "SHA-NI" : "scalar");
    EXPECT_EQ(hx.size(), 64u);
}
