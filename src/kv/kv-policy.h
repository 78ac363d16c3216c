// KV-cache policies (ARCHITECTURE.md sec. 2; METHODS.md sec. 1.2, 1.3, 5): what the cache keeps. The context
// calls its policy when a prompt has been prefilled and after every decode step; a policy may evict tokens
// (freeing or compacting pages) and merge evicted tokens into kept ones. "full" keeps everything.
// Thread-safety: called by the owning context's thread only.
#pragma once

#include <cstdint>
#include <memory>

#include "kv/kv-cache.h"
#include "longctx/status.h"

namespace lc {

class kv_policy {
  public:
    virtual ~kv_policy()              = default;
    virtual const char * name() const = 0;
    // (optional) The policy scores tokens by accumulated attention: the attention kernels must then report
    // per-head column sums of the attention probabilities (prefill) and per-step rows (decode).
    virtual bool needs_attn_stats() const { return false; }
    // (optional) The prompt of sequence seq is in the cache: n_tokens positions.
    virtual status on_prefill_end(kv_cache & kv, int seq, int64_t n_tokens) { return status::ok(); }
    // (optional) One decode step appended position n_tokens - 1.
    virtual status on_decode_step(kv_cache & kv, int seq, int64_t n_tokens) { return status::ok(); }
};

// Keeps every token: the dense baseline.
class kv_policy_full final : public kv_policy {
  public:
    const char * name() const override { return "full"; }
};

} // namespace lc
