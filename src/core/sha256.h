// SHA-256 (FIPS 180-4): a streaming hasher and a file helper, used to verify model files fetched into the
// cache. Uses the x86 SHA extensions when the CPU has them (checked at run time), a scalar loop otherwise.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "longctx/status.h"

namespace lc {

// Usage: sha256 h; h.update(p, n); ...; std::string hex = h.final_hex();
// After final()/final_hex() the object holds the padded state; call reset() before hashing again.
// Thread-safety: one object per thread; distinct objects are independent.
class sha256 {
  public:
    using digest = std::array<uint8_t, 32>;

    sha256() { reset(); }

    void        reset();
    void        update(const void * data, size_t n_bytes);
    digest      final();
    std::string final_hex(); // 64 lowercase hex characters

  private:
    uint32_t state_[8];
    uint8_t  buf_[64];
    size_t   n_buf_   = 0; // bytes pending in buf_
    uint64_t n_total_ = 0; // bytes hashed so far
};

std::string sha256_to_hex(const sha256::digest & d);
std::string sha256_hex(const void * data, size_t n_bytes);
// sha256 of token ids as little-endian int32 (the identity of a prompt in result files and sidecars).
std::string token_ids_sha256(const std::vector<int32_t> & ids);

// Hashes a whole file (reads it in 4 MiB chunks); fails with NOT_FOUND / IO_ERROR and the path in the message.
result<std::string> sha256_file_hex(const std::string & path);

// Block functions, exposed so that tests can check the hardware path against the scalar one.
// state: 8 words (H0..H7); data: n_blocks * 64 bytes.
void sha256_blocks_scalar(uint32_t state[8], const uint8_t * data, size_t n_blocks);
// x86 SHA extensions present (SHA, SSSE3, SSE4.1 by CPUID).
bool sha256_hw_available();
void sha256_blocks_hw(uint32_t state[8], const uint8_t * data, size_t n_blocks); // REQUIRES: sha256_hw_available()

} // namespace lc
