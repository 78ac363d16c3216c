// The decode-method factory and the always-dense part shared by the methods (see decode-method.h); the
// selection pieces are in select.cpp.
#include "attn/decode/decode-method.h"

#include <algorithm>

#include "attn/decode/loki.h"
#include "attn/decode/magicpig.h"
#include "attn/decode/quest.h"
#include "attn/decode/topk.h"
#include "model/model.h"

namespace lc {

result<std::unique_ptr<decode_method>> decode_method_create(const model & m, const attn_config & c) {
    switch (c.decode) {
    case decode_kind::DENSE:
        return std::unique_ptr<decode_method>();
    case decode_kind::TOPK:
        return topk_decode_create(m.hparams(), c);
    case decode_kind::QUEST:
        return quest_decode_create(m.hparams(), c);
    case decode_kind::LOKI:
        return loki_decode_create(m, c);
    case decode_kind::MAGICPIG:
        return magicpig_decode_create(m.hparams(), c);
    }
    return error(status_code::INVALID_ARGUMENT, "unknown decode method %d", int(c.decode));
}

void decode_dense_part(int64_t n_kv, int n_sink, int n_local, std::vector<key_range> & out) {
    out.clear();
    const int64_t s  = std::min<int64_t>(std::max(n_sink, 0), n_kv);
    const int64_t l0 = std::max<int64_t>(n_kv - std::max(n_local, 0), 0);
    if (l0 <= s) {
        if (n_kv > 0 && (s > 0 || l0 < n_kv)) out.push_back({0, int32_t(n_kv)});
        return;
    }
    if (s > 0) out.push_back({0, int32_t(s)});
    if (l0 < n_kv) out.push_back({int32_t(l0), int32_t(n_kv)});
}

int64_t decode_head_keys(const decode_head_plan & h) {
    int64_t n = int64_t(h.idx.size());
    for (const key_range & r : h.dense) n += r.end - r.begin;
    return n;
}

} // namespace lc
