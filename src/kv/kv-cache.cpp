// Paged fp16 KV cache: address-space reservation, page free list, f32 -> fp16 writes (F16C, round to nearest
// even). See kv-cache.h for the contract.
#include "kv/kv-cache.h"

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <utility>

#include "core/log.h"

namespace lc {

namespace {

double gib(size_t n) {
    return double(n) / (1024.0 * 1024.0 * 1024.0);
}

// dst[i] = fp16(src[i]), round to nearest even (F16C immediate 0), exact for subnormals, inf and nan.
void row_to_fp16(fp16_t * dst, const float * src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

} // namespace

kv_cache::kv_cache(int n_layer, int n_head_kv, int head_dim, int64_t n_ctx_max, int n_seq_max, int64_t n_pages)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), n_ctx_max_(n_ctx_max), n_seq_max_(n_seq_max) {
    LC_ASSERT(n_layer > 0 && n_head_kv > 0 && head_dim > 0 && n_ctx_max >= 0 && n_seq_max > 0,
              "kv: bad shape n_layer=%d n_head_kv=%d head_dim=%d n_ctx_max=%lld n_seq_max=%d", n_layer, n_head_kv,
              head_dim, (long long)n_ctx_max, n_seq_max);
    n_pages_ = n_pages > 0 ? n_pages : int64_t(n_layer) * (pages_for(n_ctx_max) + (n_seq_max - 1));
    LC_ASSERT(n_pages_ <= INT32_MAX, "kv: %lld pages do not fit 32-bit page ids", (long long)n_pages_);
    page_elems_ = size_t(n_head_kv) * kv_page_tokens * size_t(head_dim);
    pages_.resize(size_t(n_layer) * size_t(n_seq_max));
    n_slots_.assign(size_t(n_layer) * size_t(n_seq_max), 0);

    const size_t n_bytes = 2 * pool_elems() * sizeof(fp16_t);
    if (n_bytes > 0) {
        void * p = mmap(nullptr, n_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            LC_LOG_E("kv: could not reserve %.2f GiB of address space for %lld pages of %d tokens", gib(n_bytes),
                     (long long)n_pages_, kv_page_tokens);
            n_pages_ = 0; // every reserve() of a non-empty sequence now reports RESOURCE_EXHAUSTED
        } else {
            base_           = static_cast<fp16_t *>(p);
            bytes_reserved_ = n_bytes;
        }
    }
    // Lowest id at the back so that pop_back() hands out low ids first and touched memory stays compact.
    free_.resize(size_t(n_pages_));
    for (int64_t i = 0; i < n_pages_; ++i) free_[size_t(i)] = int32_t(n_pages_ - 1 - i);
}

kv_cache::~kv_cache() {
    release();
}

void kv_cache::release() {
    if (base_) munmap(base_, bytes_reserved_);
    base_           = nullptr;
    bytes_reserved_ = 0;
}

kv_cache::kv_cache(kv_cache && o) noexcept {
    *this = std::move(o);
}

kv_cache & kv_cache::operator=(kv_cache && o) noexcept {
    if (this == &o) return *this;
    release();
    n_layer_        = o.n_layer_;
    n_head_kv_      = o.n_head_kv_;
    head_dim_       = o.head_dim_;
    n_ctx_max_      = o.n_ctx_max_;
    n_seq_max_      = o.n_seq_max_;
    n_pages_        = o.n_pages_;
    page_elems_     = o.page_elems_;
    bytes_reserved_ = std::exchange(o.bytes_reserved_, 0);
    base_           = std::exchange(o.base_, nullptr);
    free_           = std::move(o.free_);
    pages_          = std::move(o.pages_);
    n_slots_        = std::move(o.n_slots_);
    o.n_pages_      = 0;
    o.free_.clear();
    o.pages_.clear();
    o.n_slots_.clear();
    o.n_seq_max_ = 0;
    return *this;
}

status kv_cache::reserve(int seq, int64_t n_tokens) {
    if (seq < 0 || seq >= n_seq_max_) {
        return error(status_code::INVALID_ARGUMENT, "kv: sequence %d out of range; the cache holds %d sequences", seq,
                     n_seq_max_);
    }
    if (n_tokens < 0) return error(status_code::INVALID_ARGUMENT, "kv: reserve of %lld tokens", (long long)n_tokens);
    return grow_tables(seq, [&](int) { return n_tokens; });
}

status kv_cache::reserve_append(int seq, int64_t n_more) {
    if (seq < 0 || seq >= n_seq_max_) {
        return error(status_code::INVALID_ARGUMENT, "kv: sequence %d out of range; the cache holds %d sequences", seq,
                     n_seq_max_);
    }
    if (n_more < 0) return error(status_code::INVALID_ARGUMENT, "kv: reserve of %lld tokens", (long long)n_more);
    return grow_tables(seq, [&](int il) { return n_slots_[idx(il, seq)] + n_more; });
}

status kv_cache::grow_tables(int seq, const std::function<int64_t(int)> & slots_of_layer) {
    // Check every layer first so that an error changes nothing.
    int64_t n_need_all = 0;
    for (int il = 0; il < n_layer_; ++il) {
        const int64_t n_tokens = slots_of_layer(il);
        if (n_tokens > n_ctx_max_) {
            return error(status_code::OUT_OF_RANGE,
                         "kv: sequence %d needs %lld tokens but the cache holds at most %lld; raise the context size "
                         "(-c)",
                         seq, (long long)n_tokens, (long long)n_ctx_max_);
        }
        n_need_all += std::max<int64_t>(0, pages_for(n_tokens) - int64_t(pages_[idx(il, seq)].size()));
    }
    if (n_need_all == 0) return status::ok();
    if (!base_) {
        return error(status_code::RESOURCE_EXHAUSTED,
                     "kv: no memory for the cache (reserving %lld pages of %d tokens failed); lower -c",
                     (long long)n_pages_, kv_page_tokens);
    }
    if (n_need_all > int64_t(free_.size())) {
        return error(status_code::RESOURCE_EXHAUSTED,
                     "kv: sequence %d needs %lld more pages of %d tokens but %zu of %lld are free (%.1f MiB of KV "
                     "memory); finish or clear other sequences, or give the cache more memory",
                     seq, (long long)n_need_all, kv_page_tokens, free_.size(), (long long)n_pages_,
                     double(n_pages_) * double(page_bytes()) * 2.0 / (1024.0 * 1024.0));
    }
    for (int il = 0; il < n_layer_; ++il) {
        const int64_t          n_pages_need = pages_for(slots_of_layer(il));
        std::vector<int32_t> & table        = pages_[idx(il, seq)];
        while (int64_t(table.size()) < n_pages_need) {
            table.push_back(free_.back());
            free_.pop_back();
        }
    }
    return status::ok();
}

size_t kv_cache::row_offset(int il, int seq, int64_t slot, int h) const {
    const std::vector<int32_t> & table = pages_[idx(il, seq)];
    return size_t(table[size_t(slot / kv_page_tokens)]) * page_elems_ +
           size_t(h) * kv_page_tokens * size_t(head_dim_) + size_t(slot % kv_page_tokens) * size_t(head_dim_);
}

void kv_cache::write(int il, int seq, int64_t slot, int64_t n, const float * k, const float * v) {
    LC_ASSERT(il >= 0 && il < n_layer_, "kv: layer %d out of range (n_layer %d)", il, n_layer_);
    LC_ASSERT(seq >= 0 && seq < n_seq_max_, "kv: sequence %d out of range (n_seq_max %d)", seq, n_seq_max_);
    const std::vector<int32_t> & table = pages_[idx(il, seq)];
    LC_ASSERT(slot >= 0 && n >= 0 && slot + n <= int64_t(table.size()) * kv_page_tokens,
              "kv: write of slots [%lld, %lld) of layer %d, sequence %d beyond its %zu reserved pages",
              (long long)slot, (long long)(slot + n), il, seq, table.size());
    fp16_t *     kp  = k_pool();
    fp16_t *     vp  = v_pool();
    const size_t tok = size_t(n_head_kv_) * size_t(head_dim_);
    for (int64_t i = 0; i < n; ++i) {
        for (int h = 0; h < n_head_kv_; ++h) {
            const size_t dst = row_offset(il, seq, slot + i, h);
            row_to_fp16(kp + dst, k + size_t(i) * tok + size_t(h) * size_t(head_dim_), head_dim_);
            row_to_fp16(vp + dst, v + size_t(i) * tok + size_t(h) * size_t(head_dim_), head_dim_);
        }
    }
    int64_t & ns = n_slots_[idx(il, seq)];
    ns           = std::max(ns, slot + n);
}

kv_view kv_cache::view(int il, int seq) const {
    LC_ASSERT(il >= 0 && il < n_layer_, "kv: layer %d out of range (n_layer %d)", il, n_layer_);
    LC_ASSERT(seq >= 0 && seq < n_seq_max_, "kv: sequence %d out of range (n_seq_max %d)", seq, n_seq_max_);
    kv_view v;
    v.k_pool     = base_ ? k_pool() : nullptr;
    v.v_pool     = base_ ? v_pool() : nullptr;
    v.pages      = pages_[idx(il, seq)].data();
    v.n_kv       = n_slots_[idx(il, seq)];
    v.n_head_kv  = n_head_kv_;
    v.head_dim   = head_dim_;
    v.page_elems = page_elems_;
    return v;
}

int64_t kv_cache::n_slots(int il, int seq) const {
    LC_ASSERT(il >= 0 && il < n_layer_, "kv: layer %d out of range (n_layer %d)", il, n_layer_);
    LC_ASSERT(seq >= 0 && seq < n_seq_max_, "kv: sequence %d out of range (n_seq_max %d)", seq, n_seq_max_);
    return n_slots_[idx(il, seq)];
}

int64_t kv_cache::n_tokens(int seq) const {
    LC_ASSERT(seq >= 0 && seq < n_seq_max_, "kv: sequence %d out of range (n_seq_max %d)", seq, n_seq_max_);
    int64_t n = 0;
    for (int il = 0; il < n_layer_; ++il) n = std::max(n, n_slots_[idx(il, seq)]);
    return n;
}

void kv_cache::release_pages(std::vector<int32_t>::const_iterator first, std::vector<int32_t>::const_iterator last) {
    // Keep the free list sorted high to low so that low ids are handed out first again.
    const std::ptrdiff_t n_old = std::ptrdiff_t(free_.size());
    free_.insert(free_.end(), first, last);
    std::sort(free_.begin() + n_old, free_.end(), std::greater<int32_t>());
    std::inplace_merge(free_.begin(), free_.begin() + n_old, free_.end(), std::greater<int32_t>());
}

void kv_cache::shrink_table(int il, int seq, int64_t n) {
    std::vector<int32_t> & table = pages_[idx(il, seq)];
    const size_t           keep  = size_t(pages_for(n));
    if (table.size() <= keep) return;
    // Keep the free list sorted high to low so that low ids are handed out first again.
    release_pages(table.begin() + std::ptrdiff_t(keep), table.end());
    table.resize(keep);
}

void kv_cache::clear(int seq) {
    truncate(seq, 0);
}

void kv_cache::truncate(int seq, int64_t n) {
    LC_ASSERT(seq >= 0 && seq < n_seq_max_, "kv: sequence %d out of range (n_seq_max %d)", seq, n_seq_max_);
    LC_ASSERT(n >= 0, "kv: truncate to %lld slots", (long long)n);
    for (int il = 0; il < n_layer_; ++il) {
        int64_t & ns = n_slots_[idx(il, seq)];
        ns           = std::min(ns, n);
        shrink_table(il, seq, n);
    }
}

void kv_cache::keep_rows(int il, int seq, int h, const int32_t * keep, int64_t n_keep) {
    LC_ASSERT(il >= 0 && il < n_layer_ && seq >= 0 && seq < n_seq_max_ && h >= 0 && h < n_head_kv_,
              "kv: keep_rows of layer %d, sequence %d, KV head %d", il, seq, h);
    const int64_t ns = n_slots_[idx(il, seq)];
    LC_ASSERT(n_keep >= 0 && n_keep <= ns, "kv: keeping %lld of %lld slots", (long long)n_keep, (long long)ns);
    fp16_t *     kp  = k_pool();
    fp16_t *     vp  = v_pool();
    const size_t row = size_t(head_dim_) * sizeof(fp16_t);
    int32_t      prev = -1;
    for (int64_t i = 0; i < n_keep; ++i) {
        const int32_t s = keep[i];
        LC_ASSERT(s > prev && s < ns, "kv: keep list not ascending or out of range at %lld (%d)", (long long)i, s);
        prev = s;
        if (s == i) continue; // s >= i always: moving forward never overwrites a row still to be read
        const size_t src = row_offset(il, seq, s, h), dst = row_offset(il, seq, i, h);
        std::memcpy(kp + dst, kp + src, row);
        std::memcpy(vp + dst, vp + src, row);
    }
}

void kv_cache::finish_keep(int il, int seq, int64_t n_keep) {
    LC_ASSERT(il >= 0 && il < n_layer_ && seq >= 0 && seq < n_seq_max_, "kv: finish_keep of layer %d, sequence %d",
              il, seq);
    int64_t & ns = n_slots_[idx(il, seq)];
    LC_ASSERT(n_keep >= 0 && n_keep <= ns, "kv: keeping %lld of %lld slots", (long long)n_keep, (long long)ns);
    ns = n_keep;
    shrink_table(il, seq, n_keep);
}

void kv_cache::drop_front_pages(int il, int seq, int64_t n_pages) {
    LC_ASSERT(il >= 0 && il < n_layer_ && seq >= 0 && seq < n_seq_max_, "kv: drop_front_pages of layer %d, sequence %d",
              il, seq);
    int64_t & ns = n_slots_[idx(il, seq)];
    LC_ASSERT(n_pages >= 0 && n_pages * kv_page_tokens <= ns, "kv: dropping %lld pages of %lld slots",
              (long long)n_pages, (long long)ns);
    if (n_pages == 0) return;
    std::vector<int32_t> & table = pages_[idx(il, seq)];
    release_pages(table.begin(), table.begin() + std::ptrdiff_t(n_pages));
    table.erase(table.begin(), table.begin() + std::ptrdiff_t(n_pages));
    ns -= n_pages * kv_page_tokens;
}

fp16_t * kv_cache::k_row(int il, int seq, int64_t slot, int h) {
    LC_ASSERT(il >= 0 && il < n_layer_ && seq >= 0 && seq < n_seq_max_ && h >= 0 && h < n_head_kv_ && slot >= 0 &&
                  slot < n_slots_[idx(il, seq)],
              "kv: row %lld of layer %d, sequence %d, KV head %d", (long long)slot, il, seq, h);
    return k_pool() + row_offset(il, seq, slot, h);
}

fp16_t * kv_cache::v_row(int il, int seq, int64_t slot, int h) {
    LC_ASSERT(il >= 0 && il < n_layer_ && seq >= 0 && seq < n_seq_max_ && h >= 0 && h < n_head_kv_ && slot >= 0 &&
                  slot < n_slots_[idx(il, seq)],
              "kv: row %lld of layer %d, sequence %d, KV head %d", (long long)slot, il, seq, h);
    return v_pool() + row_offset(il, seq, slot, h);
}

size_t kv_cache::bytes_allocated() const {
    size_t n = 0;
    for (const std::vector<int32_t> & t : pages_) n += t.size();
    return n * page_bytes() * 2;
}

size_t kv_cache::bytes_used() const {
    int64_t n = 0;
    for (int64_t t : n_slots_) n += t;
    return size_t(n) * slot_bytes();
}

} // namespace lc
