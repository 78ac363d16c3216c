// Per-head MInference configurations: defaults, names and the MInference JSON import (see head-config.h).
#include "attn/minference/head-config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace lc {

const char * head_pattern_name(head_pattern p) {
    switch (p) {
    case head_pattern::DENSE:
        return "dense";
    case head_pattern::A_SHAPE:
        return "a-shape";
    case head_pattern::VSLASH:
        return "vslash";
    case head_pattern::BLOCK:
        return "block";
    }
    return "?";
}

result<head_pattern> head_pattern_parse(const std::string & s) {
    if (s == "dense") return head_pattern::DENSE;
    if (s == "a-shape" || s == "a_shape" || s == "stream_llm") return head_pattern::A_SHAPE;
    if (s == "vslash" || s == "vertical_and_slash") return head_pattern::VSLASH;
    if (s == "block" || s == "block_sparse") return head_pattern::BLOCK;
    return error(status_code::INVALID_ARGUMENT,
                 "pattern '%s' is not one of vertical_and_slash, stream_llm (a-shape), block_sparse, dense", s.c_str());
}

head_budget head_budget_default(head_pattern p) {
    switch (p) {
    case head_pattern::DENSE:
        return {p, 0, 0, 0.0f};
    case head_pattern::A_SHAPE:
        return {p, 128, 3968, 0.0f};
    case head_pattern::VSLASH:
        return {p, 1000, 6096, 0.0f};
    case head_pattern::BLOCK:
        return {p, 100, 0, 0.0f};
    }
    return {};
}

minference_config minference_config_uniform(int n_layer, int n_head, const head_budget & b) {
    minference_config c;
    c.n_layer = n_layer;
    c.n_head  = n_head;
    c.heads.assign(size_t(n_layer) * n_head, b);
    c.source = std::string("uniform (") + head_pattern_name(b.pattern) + ")";
    return c;
}

minference_config minference_config_uniform(int n_layer, int n_head, head_pattern p) {
    minference_config c = minference_config_uniform(n_layer, n_head, head_budget_default(p));
    c.source            = std::string("defaults (") + head_pattern_name(p) + ")";
    return c;
}

result<minference_config> minference_config_import_json(const std::string & path, int n_layer, int n_head) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return error(status_code::NOT_FOUND, "minference: cannot open '%s'", path.c_str());
    std::stringstream ss;
    ss << in.rdbuf();
    minference_config c = minference_config_uniform(n_layer, n_head, head_pattern::VSLASH);
    c.source            = "json " + path;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(ss.str());
    } catch (const std::exception & e) {
        return error(status_code::INVALID_ARGUMENT, "minference: '%s' is not valid JSON: %s", path.c_str(), e.what());
    }
    if (!j.is_array())
        return error(status_code::INVALID_ARGUMENT,
                     "minference: '%s' must be a list with one object per layer ({\"head\": [pattern, v, s, score]})",
                     path.c_str());
    if (j.size() > size_t(n_layer))
        return error(status_code::INVALID_ARGUMENT, "minference: '%s' has %zu layers but the model has %d",
                     path.c_str(), j.size(), n_layer);
    for (size_t il = 0; il < j.size(); ++il) {
        const nlohmann::json & layer = j[il];
        if (!layer.is_object())
            return error(status_code::INVALID_ARGUMENT, "minference: '%s' layer %zu is not an object", path.c_str(),
                         il);
        for (auto it = layer.begin(); it != layer.end(); ++it) {
            const std::string & key = it.key();
            char *              end = nullptr;
            const long          h   = std::strtol(key.c_str(), &end, 10);
            if (key.empty() || *end != '\0' || h < 0 || h >= n_head)
                return error(status_code::INVALID_ARGUMENT,
                             "minference: '%s' layer %zu names head '%s'; the model has heads 0..%d", path.c_str(), il,
                             key.c_str(), n_head - 1);
            const nlohmann::json & e = it.value();
            if (!e.is_array() || e.size() < 3 || !e[0].is_string() || !e[1].is_number() || !e[2].is_number())
                return error(status_code::INVALID_ARGUMENT,
                             "minference: '%s' layer %zu head %ld must be [pattern, v, s, score]", path.c_str(), il, h);
            LC_ASSIGN_OR_RETURN(head_pattern p, head_pattern_parse(e[0].get<std::string>()));
            const double v = e[1].get<double>(), s = e[2].get<double>();
            if (v < 0 || s < 0 || v > 1e9 || s > 1e9)
                return error(status_code::INVALID_ARGUMENT, "minference: '%s' layer %zu head %ld: budgets %g, %g",
                             path.c_str(), il, h, v, s);
            head_budget & hb = c.at(int(il), int(h));
            hb.pattern       = p;
            hb.a             = int64_t(v);
            hb.b             = int64_t(s);
            // MInference's block-sparse kernel ignores the config's sizes and keeps 100 blocks.
            if (p == head_pattern::BLOCK) hb = head_budget_default(p);
            hb.score = e.size() > 3 && e[3].is_number() ? e[3].get<float>() : 0.0f;
        }
    }
    return c;
}

} // namespace lc
