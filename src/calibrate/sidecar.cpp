// Reading and writing the calibration sidecar (see sidecar.h). Keys are kept in one table below.
#include "calibrate/sidecar.h"

#include <cmath>
#include <cstdio>

#include "gguf/gguf.h"

namespace lc {

namespace {

constexpr const char * k_arch       = "longctx-sidecar";
constexpr const char * k_model_name = "longctx.model.name";
constexpr const char * k_n_layer    = "longctx.model.block_count";
constexpr const char * k_n_head     = "longctx.model.head_count";
constexpr const char * k_mi_pattern = "longctx.minference.pattern";  // i32 [n_layer * n_head], head_pattern
constexpr const char * k_mi_a       = "longctx.minference.budget_a"; // i32, v / n_init / k_b
constexpr const char * k_mi_b       = "longctx.minference.budget_b"; // i32, s / n_local / 0
constexpr const char * k_mi_score   = "longctx.minference.score";    // f32
constexpr const char * k_mi_src     = "longctx.minference.calib.source";
constexpr const char * k_mi_sha     = "longctx.minference.calib.sha256";
constexpr const char * k_mi_ntok    = "longctx.minference.calib.n_tokens";
constexpr const char * k_mi_density = "longctx.minference.expected_density";
constexpr const char * k_lk_n_kv    = "longctx.loki.head_count_kv";
constexpr const char * k_lk_dim     = "longctx.loki.head_dim";
constexpr const char * k_lk_fitted  = "longctx.loki.fitted";    // i32 [n_layer], 1 where the layer has a basis
constexpr const char * k_lk_basis   = "longctx.loki.basis";     // f32 [n_layer][n_head_kv][head_dim][head_dim]
constexpr const char * k_lk_curve   = "longctx.loki.explained"; // f32 [n_layer][n_head_kv][head_dim], cumulative
constexpr const char * k_lk_pre     = "longctx.loki.pre_rope";
constexpr const char * k_lk_src     = "longctx.loki.calib.source";
constexpr const char * k_lk_sha     = "longctx.loki.calib.sha256";
constexpr const char * k_lk_nkeys   = "longctx.loki.calib.n_keys";

result<sidecar_loki> read_loki(const gguf_file & f, const std::string & path, int n_layer) {
    sidecar_loki l;
    LC_ASSIGN_OR_RETURN(uint32_t nkv, f.get_u32(k_lk_n_kv));
    LC_ASSIGN_OR_RETURN(uint32_t dim, f.get_u32(k_lk_dim));
    if (nkv == 0 || nkv > 4096 || dim == 0 || dim > 4096)
        return error(status_code::INVALID_ARGUMENT, "sidecar '%s': bad loki shape %u KV heads x %u dims", path.c_str(),
                     nkv, dim);
    l.n_head_kv = int(nkv);
    l.head_dim  = int(dim);
    LC_ASSIGN_OR_RETURN(l.fitted, f.get_arr_i32(k_lk_fitted));
    LC_ASSIGN_OR_RETURN(l.basis, f.get_arr_f32(k_lk_basis));
    LC_ASSIGN_OR_RETURN(l.curve, f.get_arr_f32(k_lk_curve));
    const size_t n_curve = size_t(n_layer) * nkv * dim;
    if (l.fitted.size() != size_t(n_layer) || l.curve.size() != n_curve || l.basis.size() != n_curve * dim)
        return error(status_code::INVALID_ARGUMENT,
                     "sidecar '%s': loki arrays must have %d, %zu and %zu entries (fitted, explained, basis) but have "
                     "%zu, %zu and %zu",
                     path.c_str(), n_layer, n_curve, n_curve * dim, l.fitted.size(), l.curve.size(), l.basis.size());
    for (int32_t x : l.fitted)
        if (x != 0 && x != 1)
            return error(status_code::INVALID_ARGUMENT, "sidecar '%s': loki.fitted entries must be 0 or 1",
                         path.c_str());
    for (float x : l.basis)
        if (!std::isfinite(x))
            return error(status_code::INVALID_ARGUMENT, "sidecar '%s': loki basis has a non-finite entry",
                         path.c_str());
    LC_ASSIGN_OR_RETURN(l.pre_rope, f.get_bool_or(k_lk_pre, false));
    LC_ASSIGN_OR_RETURN(l.calib_source, f.get_str_or(k_lk_src, ""));
    LC_ASSIGN_OR_RETURN(l.calib_sha256, f.get_str_or(k_lk_sha, ""));
    if (f.find(k_lk_nkeys)) {
        LC_ASSIGN_OR_RETURN(l.calib_n_keys, f.get_i64(k_lk_nkeys));
    }
    return l;
}

} // namespace

std::string sidecar_path_for(const std::string & model_path) {
    std::string base = model_path;
    if (base.size() > 5 && base.compare(base.size() - 5, 5, ".gguf") == 0) base.resize(base.size() - 5);
    return base + ".longctx.gguf";
}

result<sidecar> sidecar_read(const std::string & path, int n_layer, int n_head) {
    LC_ASSIGN_OR_RETURN(auto f, gguf_file::open(path));
    sidecar s;
    LC_ASSIGN_OR_RETURN(std::string arch, f->get_str("general.architecture"));
    if (arch != k_arch)
        return error(status_code::INVALID_ARGUMENT, "sidecar '%s': general.architecture is '%s', not '%s'",
                     path.c_str(), arch.c_str(), k_arch);
    LC_ASSIGN_OR_RETURN(s.model_name, f->get_str_or(k_model_name, ""));
    LC_ASSIGN_OR_RETURN(uint32_t nl, f->get_u32(k_n_layer));
    LC_ASSIGN_OR_RETURN(uint32_t nh, f->get_u32(k_n_head));
    if (int(nl) != n_layer || int(nh) != n_head)
        return error(status_code::INVALID_ARGUMENT,
                     "sidecar '%s' was made for %u layers x %u heads but the model has %d x %d; recalibrate",
                     path.c_str(), nl, nh, n_layer, n_head);
    s.n_layer = n_layer;
    s.n_head  = n_head;
    if (f->find(k_mi_pattern)) {
        const size_t n = size_t(n_layer) * n_head;
        LC_ASSIGN_OR_RETURN(auto pat, f->get_arr_i32(k_mi_pattern));
        LC_ASSIGN_OR_RETURN(auto a, f->get_arr_i32(k_mi_a));
        LC_ASSIGN_OR_RETURN(auto b, f->get_arr_i32(k_mi_b));
        LC_ASSIGN_OR_RETURN(auto sc, f->get_arr_f32(k_mi_score));
        if (pat.size() != n || a.size() != n || b.size() != n || sc.size() != n)
            return error(status_code::INVALID_ARGUMENT, "sidecar '%s': minference arrays must have %zu entries",
                         path.c_str(), n);
        sidecar_minference m;
        m.config        = minference_config_uniform(n_layer, n_head, head_pattern::VSLASH);
        m.config.source = "sidecar " + path;
        for (size_t i = 0; i < n; ++i) {
            if (pat[i] < 0 || pat[i] > int32_t(head_pattern::BLOCK) || a[i] < 0 || b[i] < 0)
                return error(status_code::INVALID_ARGUMENT, "sidecar '%s': bad minference entry %zu (%d, %d, %d)",
                             path.c_str(), i, pat[i], a[i], b[i]);
            m.config.heads[i] = {head_pattern(pat[i]), a[i], b[i], sc[i]};
        }
        LC_ASSIGN_OR_RETURN(m.calib_source, f->get_str_or(k_mi_src, ""));
        LC_ASSIGN_OR_RETURN(m.calib_sha256, f->get_str_or(k_mi_sha, ""));
        if (f->find(k_mi_ntok)) {
            LC_ASSIGN_OR_RETURN(m.calib_n_tokens, f->get_i64(k_mi_ntok));
        }
        LC_ASSIGN_OR_RETURN(m.expected_density, f->get_f32_or(k_mi_density, 0.0f));
        s.minference = std::move(m);
    }
    if (f->find(k_lk_basis)) {
        LC_ASSIGN_OR_RETURN(auto l, read_loki(*f, path, n_layer));
        s.loki = std::move(l);
    }
    return s;
}

status sidecar_loki_check(const sidecar_loki & l, const std::string & path, int n_layer, int n_head_kv, int head_dim) {
    if (l.n_head_kv != n_head_kv || l.head_dim != head_dim || l.fitted.size() != size_t(n_layer))
        return error(status_code::INVALID_ARGUMENT,
                     "sidecar '%s': the Loki bases were made for %zu layers x %d KV heads x %d dims but the model has "
                     "%d x %d x %d; recalibrate (longctx calibrate loki)",
                     path.c_str(), l.fitted.size(), l.n_head_kv, l.head_dim, n_layer, n_head_kv, head_dim);
    return status::ok();
}

status sidecar_write(const std::string & path, const sidecar & s) {
    gguf_writer w;
    w.set_str("general.architecture", k_arch);
    w.set_str(k_model_name, s.model_name);
    w.set_u32(k_n_layer, uint32_t(s.n_layer));
    w.set_u32(k_n_head, uint32_t(s.n_head));
    if (s.minference) {
        const sidecar_minference & m = *s.minference;
        std::vector<int32_t>       pat, a, b;
        std::vector<float>         sc;
        for (const head_budget & h : m.config.heads) {
            pat.push_back(int32_t(h.pattern));
            a.push_back(int32_t(h.a));
            b.push_back(int32_t(h.b));
            sc.push_back(h.score);
        }
        w.set_arr_i32(k_mi_pattern, pat);
        w.set_arr_i32(k_mi_a, a);
        w.set_arr_i32(k_mi_b, b);
        w.set_arr_f32(k_mi_score, sc);
        w.set_str(k_mi_src, m.calib_source);
        w.set_str(k_mi_sha, m.calib_sha256);
        w.set_i64(k_mi_ntok, m.calib_n_tokens);
        w.set_f32(k_mi_density, m.expected_density);
    }
    if (s.loki) {
        const sidecar_loki & l = *s.loki;
        w.set_u32(k_lk_n_kv, uint32_t(l.n_head_kv));
        w.set_u32(k_lk_dim, uint32_t(l.head_dim));
        w.set_arr_i32(k_lk_fitted, l.fitted);
        w.set_arr_f32(k_lk_basis, l.basis);
        w.set_arr_f32(k_lk_curve, l.curve);
        w.set_bool(k_lk_pre, l.pre_rope);
        w.set_str(k_lk_src, l.calib_source);
        w.set_str(k_lk_sha, l.calib_sha256);
        w.set_i64(k_lk_nkeys, l.calib_n_keys);
    }
    const std::string tmp = path + ".tmp";
    LC_RETURN_IF_ERROR(w.write(tmp));
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        return error(status_code::IO_ERROR, "sidecar: cannot rename '%s' to '%s'", tmp.c_str(), path.c_str());
    }
    return status::ok();
}

} // namespace lc
