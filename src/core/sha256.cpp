// SHA-256 per FIPS 180-4 (sec. 4.1.2 functions, 4.2.2 constants, 5.1.1 padding, 6.2.2 computation), with a
// second block loop on the x86 SHA extensions (SHA256RNDS2 does two rounds, SHA256MSG1/2 the schedule).
#include "core/sha256.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <cpuid.h>
#include <fcntl.h>
#include <immintrin.h>
#include <sys/stat.h>
#include <unistd.h>

namespace lc {

namespace {

// First 32 bits of the fractional parts of the cube roots of the first 64 primes (FIPS 180-4 sec. 4.2.2).
alignas(16) const uint32_t k_round[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

// Initial hash value H(0) (sec. 5.3.3).
const uint32_t k_init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

inline uint32_t rotr(uint32_t x, int n) {
    return (x >> n) | (x << (32 - n));
}
inline uint32_t load_be32(const uint8_t * p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

bool detect_hw() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool sha = (b >> 29) & 1;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool sse41 = (c >> 19) & 1, ssse3 = (c >> 9) & 1;
    return sha && sse41 && ssse3;
}

const bool g_have_hw = detect_hw();

void blocks(uint32_t state[8], const uint8_t * data, size_t n_blocks) {
    if (n_blocks == 0) return;
    if (g_have_hw) {
        sha256_blocks_hw(state, data, n_blocks);
    } else {
        sha256_blocks_scalar(state, data, n_blocks);
    }
}

} // namespace

void sha256_blocks_scalar(uint32_t state[8], const uint8_t * data, size_t n_blocks) {
    uint32_t w[64];
    for (size_t ib = 0; ib < n_blocks; ++ib, data += 64) {
        for (int t = 0; t < 16; ++t) w[t] = load_be32(data + 4 * t);
        for (int t = 16; t < 64; ++t) {
            const uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
            const uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
            w[t]              = w[t - 16] + s0 + w[t - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int t = 0; t < 64; ++t) {
            const uint32_t S1  = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
            const uint32_t ch  = (e & f) ^ (~e & g);
            const uint32_t t1  = h + S1 + ch + k_round[t] + w[t];
            const uint32_t S0  = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
            const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
            const uint32_t t2  = S0 + maj;
            h                  = g;
            g                  = f;
            f                  = e;
            e                  = d + t1;
            d                  = c;
            c                  = b;
            b                  = a;
            a                  = t1 + t2;
        }
        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
    }
}

bool sha256_hw_available() {
    return g_have_hw;
}

// The SHA extensions keep the state as two vectors, ABEF and CDGH (a in the high lane). Each SHA256RNDS2
// takes CDGH, ABEF and two (W+K) words in the low lanes, and returns the new ABEF; the old ABEF becomes the
// new CDGH. The schedule for words 4g..4g+3 is MSG2(MSG1(W[g-4], W[g-3]) + W[t-7 lanes], W[g-1]).
__attribute__((target("sha,sse4.1,ssse3"))) void sha256_blocks_hw(uint32_t state[8], const uint8_t * data,
                                                                  size_t n_blocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);

    __m128i dcba = _mm_loadu_si128((const __m128i *)&state[0]); // lanes 0..3 = a b c d
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&state[4]); // lanes 0..3 = e f g h
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);               // lanes: b a d c
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);               // lanes: h g f e
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);              // lanes: f e b a
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);           // lanes: h g d c

    for (size_t ib = 0; ib < n_blocks; ++ib, data += 64) {
        const __m128i abef_save = abef;
        const __m128i cdgh_save = cdgh;
        __m128i       w[4];
        for (int g = 0; g < 16; ++g) {
            __m128i & cur = w[g & 3];
            if (g < 4) {
                cur = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), bswap);
            } else {
                const __m128i & w1 = w[(g + 1) & 3]; // W[g-3]
                const __m128i & w2 = w[(g + 2) & 3]; // W[g-2]
                const __m128i & w3 = w[(g + 3) & 3]; // W[g-1]
                __m128i         x  = _mm_sha256msg1_epu32(cur, w1);
                x                  = _mm_add_epi32(x, _mm_alignr_epi8(w3, w2, 4));
                cur                = _mm_sha256msg2_epu32(x, w3);
            }
            __m128i wk = _mm_add_epi32(cur, _mm_load_si128((const __m128i *)&k_round[4 * g]));
            cdgh       = _mm_sha256rnds2_epu32(cdgh, abef, wk);
            wk         = _mm_shuffle_epi32(wk, 0x0E);
            abef       = _mm_sha256rnds2_epu32(abef, cdgh, wk);
        }
        abef = _mm_add_epi32(abef, abef_save);
        cdgh = _mm_add_epi32(cdgh, cdgh_save);
    }

    const __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    const __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    dcba               = _mm_blend_epi16(feba, dchg, 0xF0);
    hgfe               = _mm_alignr_epi8(dchg, feba, 8);
    _mm_storeu_si128((__m128i *)&state[0], dcba);
    _mm_storeu_si128((__m128i *)&state[4], hgfe);
}

void sha256::reset() {
    std::memcpy(state_, k_init, sizeof(state_));
    n_buf_   = 0;
    n_total_ = 0;
}

void sha256::update(const void * data, size_t n_bytes) {
    const uint8_t * p = static_cast<const uint8_t *>(data);
    n_total_ += n_bytes;
    if (n_buf_ > 0) {
        const size_t n = std::min(n_bytes, 64 - n_buf_);
        std::memcpy(buf_ + n_buf_, p, n);
        n_buf_ += n;
        p += n;
        n_bytes -= n;
        if (n_buf_ < 64) return;
        blocks(state_, buf_, 1);
        n_buf_ = 0;
    }
    const size_t n_full = n_bytes / 64;
    blocks(state_, p, n_full);
    p += 64 * n_full;
    n_bytes -= 64 * n_full;
    std::memcpy(buf_, p, n_bytes);
    n_buf_ = n_bytes;
}

sha256::digest sha256::final() {
    // Padding (sec. 5.1.1): a 1 bit, zeros up to 56 mod 64, then the message length in bits, big-endian.
    const uint64_t n_bits = n_total_ * 8;
    buf_[n_buf_++]        = 0x80;
    if (n_buf_ > 56) {
        std::memset(buf_ + n_buf_, 0, 64 - n_buf_);
        blocks(state_, buf_, 1);
        n_buf_ = 0;
    }
    std::memset(buf_ + n_buf_, 0, 56 - n_buf_);
    for (int i = 0; i < 8; ++i) buf_[56 + i] = uint8_t(n_bits >> (56 - 8 * i));
    blocks(state_, buf_, 1);
    n_buf_ = 0;

    digest d;
    for (int i = 0; i < 8; ++i) {
        d[4 * i + 0] = uint8_t(state_[i] >> 24);
        d[4 * i + 1] = uint8_t(state_[i] >> 16);
        d[4 * i + 2] = uint8_t(state_[i] >> 8);
        d[4 * i + 3] = uint8_t(state_[i]);
    }
    return d;
}

std::string sha256::final_hex() {
    return sha256_to_hex(final());
}

std::string sha256_to_hex(const sha256::digest & d) {
    static const char digits[] = "0123456789abcdef";
    std::string       s(64, '0');
    for (size_t i = 0; i < d.size(); ++i) {
        s[2 * i]     = digits[d[i] >> 4];
        s[2 * i + 1] = digits[d[i] & 15];
    }
    return s;
}

std::string sha256_hex(const void * data, size_t n_bytes) {
    sha256 h;
    h.update(data, n_bytes);
    return h.final_hex();
}

result<std::string> sha256_file_hex(const std::string & path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        return error(e == ENOENT ? status_code::NOT_FOUND : status_code::IO_ERROR, "sha256: cannot open %s: %s",
                     path.c_str(), std::strerror(e));
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    std::vector<uint8_t> buf(size_t(4) << 20);
    sha256               h;
    for (;;) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            const int e = errno;
            ::close(fd);
            return error(status_code::IO_ERROR, "sha256: read error on %s: %s", path.c_str(), std::strerror(e));
        }
        if (n == 0) break;
        h.update(buf.data(), size_t(n));
    }
    ::close(fd);
    return h.final_hex();
}

std::string token_ids_sha256(const std::vector<int32_t> & ids) {
    std::vector<uint8_t> b(ids.size() * 4);
    for (size_t i = 0; i < ids.size(); ++i) {
        const uint32_t v = uint32_t(ids[i]);
        b[4 * i + 0]     = uint8_t(v);
        b[4 * i + 1]     = uint8_t(v >> 8);
        b[4 * i + 2]     = uint8_t(v >> 16);
        b[4 * i + 3]     = uint8_t(v >> 24);
    }
    return sha256_hex(b.data(), b.size());
}

} // namespace lc
