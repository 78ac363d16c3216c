// Shared by the GGUF tests: a temporary directory, a byte-level GGUF builder for files the writer refuses
// to make (bad magic, truncations, bad counts), a small valid sample file and the real model's path.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace lc::test {

class temp_dir {
  public:
    temp_dir() {
        const char * base = std::getenv("TMPDIR");
        std::string  tmpl = std::string(base && *base ? base : "/tmp") + "/longctx-gguf-test-XXXXXX";
        char *       p    = mkdtemp(tmpl.data());
        if (!p) std::abort();
        path_ = p;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    temp_dir(const temp_dir &)                      = delete;
    temp_dir &          operator=(const temp_dir &) = delete;
    const std::string & path() const { return path_; }
    std::string         file(const std::string & name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

// Replaces the file (unlink, then create): rewriting in place through O_TRUNC makes ext4 flush on close,
// which turns the fuzz tests' thousands of small writes into seconds of disk waits.
inline void write_bytes(const std::string & path, const std::vector<uint8_t> & b) {
    ::unlink(path.c_str());
    FILE * f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (!b.empty() && std::fwrite(b.data(), 1, b.size(), f) != b.size()) std::abort();
    std::fclose(f);
}

// Little-endian GGUF pieces, appended in order.
struct raw_gguf {
    std::vector<uint8_t> bytes;

    template <typename T> raw_gguf & put(T v) {
        uint8_t tmp[sizeof(T)];
        std::memcpy(tmp, &v, sizeof(T));
        bytes.insert(bytes.end(), tmp, tmp + sizeof(T));
        return *this;
    }
    raw_gguf & u8(uint8_t v) { return put(v); }
    raw_gguf & u32(uint32_t v) { return put(v); }
    raw_gguf & u64(uint64_t v) { return put(v); }
    raw_gguf & raw(const std::vector<uint8_t> & v) {
        bytes.insert(bytes.end(), v.begin(), v.end());
        return *this;
    }
    raw_gguf & str(const std::string & s) {
        u64(s.size());
        bytes.insert(bytes.end(), s.begin(), s.end());
        return *this;
    }
    raw_gguf & header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
        return u32(0x46554747u).u32(version).u64(n_tensors).u64(n_kv);
    }
    raw_gguf & kv_u32(const std::string & key, uint32_t v) { return str(key).u32(uint32_t(gguf_vtype::UINT32)).u32(v); }
    raw_gguf & tensor(const std::string & name, uint32_t n_dims, const std::vector<uint64_t> & ne, uint32_t type,
                      uint64_t offset) {
        str(name).u32(n_dims);
        for (uint64_t n : ne) u64(n);
        return u32(type).u64(offset);
    }
    raw_gguf & pad(size_t alignment) {
        bytes.resize((bytes.size() + alignment - 1) / alignment * alignment, 0);
        return *this;
    }
};

// A small valid file: one key of most kinds and tensors of two types.
inline gguf_writer make_sample() {
    gguf_writer w;
    w.set_str("general.architecture", "llama");
    w.set_u32("llama.block_count", 2);
    w.set_f32("llama.rope.freq_base", 10000.0f);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_i64("x.i64", -5);
    w.set_arr_str("tokenizer.ggml.tokens", {"<s>", "a", "b"});
    w.set_arr_i32("tokenizer.ggml.token_type", {3, 1, 1});
    std::vector<float> emb(64 * 3);
    for (size_t i = 0; i < emb.size(); ++i) emb[i] = float(i) * 0.25f;
    w.add_tensor("token_embd.weight", dtype::F32, {64, 3}, emb.data());
    std::vector<uint8_t> q(sizeof(block_q4_1) * 2 * 5, 0x5A);
    w.add_tensor("blk.0.attn_q.weight", dtype::Q4_1, {64, 5}, q.data());
    std::vector<uint8_t> n(4 * 16, 0x11);
    w.add_tensor("blk.0.attn_norm.weight", dtype::F32, {16}, n.data());
    return w;
}

// $LONGCTX_CACHE/models (default ~/.cache/longctx/models)/SmolLM2-135M-Instruct.Q4_1.gguf
inline std::string model_path() {
    const char * cache = std::getenv("LONGCTX_CACHE");
    std::string  dir;
    if (cache && *cache) {
        dir = cache;
    } else {
        const char * home = std::getenv("HOME");
        dir               = std::string(home ? home : "") + "/.cache/longctx";
    }
    return dir + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

} // namespace lc::test
