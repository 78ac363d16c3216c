// Result files (load, resume, atomic rewrite) and the dense/method context slots of the evals.
#include "eval/results.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/log.h"
#include "core/sha256.h"

namespace lc::eval {

namespace {
result<std::string> read_all(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return error(status_code::NOT_FOUND, "eval: cannot open '%s'", path.c_str());
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return error(status_code::IO_ERROR, "eval: error reading '%s'", path.c_str());
    return ss.str();
}
} // namespace

status write_file_atomic(const std::string & path, const std::string & text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) return error(status_code::IO_ERROR, "eval: cannot write '%s'", tmp.c_str());
        out << text;
        out.flush();
        if (!out) return error(status_code::IO_ERROR, "eval: error writing '%s' (disk full?)", tmp.c_str());
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        return error(status_code::IO_ERROR, "eval: cannot rename '%s' to '%s'", tmp.c_str(), path.c_str());
    return status::ok();
}

result<json> result_file::load(const std::string & path) {
    LC_ASSIGN_OR_RETURN(std::string text, read_all(path));
    json doc;
    try {
        doc = json::parse(text);
    } catch (const json::exception & e) {
        return error(status_code::INVALID_FILE, "eval: '%s' is not valid JSON: %s", path.c_str(), e.what());
    }
    if (!doc.is_object() || !doc.contains("eval") || !doc["eval"].is_string() || !doc.contains("records") ||
        !doc["records"].is_array() || !doc.contains("meta") || !doc["meta"].is_object())
        return error(status_code::INVALID_FILE,
                     "eval: '%s' is not a longctx eval result file (needs \"eval\", \"meta\" and \"records\")",
                     path.c_str());
    return doc;
}

result<result_file> result_file::open(const std::string & path, const std::string & name, json meta, bool overwrite) {
    LC_ASSERT(meta.contains("identity"), "result meta without identity");
    result_file f;
    f.path_ = path;
    if (!overwrite && std::ifstream(path).good()) {
        LC_ASSIGN_OR_RETURN(json old, load(path));
        if (old["eval"] != name)
            return error(status_code::INVALID_ARGUMENT,
                         "eval: '%s' holds results of 'eval %s', not '%s'; choose another --out or pass --overwrite",
                         path.c_str(), old["eval"].get<std::string>().c_str(), name.c_str());
        if (!old["meta"].contains("identity") || old["meta"]["identity"] != meta["identity"])
            return error(status_code::INVALID_ARGUMENT,
                         "eval: '%s' was made with other settings (%s); choose another --out or pass --overwrite to "
                         "start over",
                         path.c_str(), old["meta"].value("identity", json::object()).dump().c_str());
        f.doc_ = std::move(old);
        // Keep the newest descriptive meta, identity unchanged.
        f.doc_["meta"] = std::move(meta);
        for (const auto & r : f.doc_["records"])
            if (r.contains("key") && r["key"].is_string()) f.keys_.insert(r["key"].get<std::string>());
        return f;
    }
    f.doc_ = json{{"eval", name}, {"format", 1}, {"meta", std::move(meta)}, {"records", json::array()}};
    return f;
}

bool result_file::has(const std::string & key) const {
    return keys_.count(key) > 0;
}

status result_file::add(json record) {
    LC_ASSERT(record.contains("key") && record["key"].is_string(), "record without key");
    keys_.insert(record["key"].get<std::string>());
    doc_["records"].push_back(std::move(record));
    dirty_           = true;
    const double age = std::chrono::duration<double>(std::chrono::steady_clock::now() - saved_at_).count();
    return age >= save_interval_s ? save() : status::ok();
}

status result_file::save() {
    LC_RETURN_IF_ERROR(write_file_atomic(path_, doc_.dump(1) + "\n"));
    dirty_    = false;
    saved_at_ = std::chrono::steady_clock::now();
    return status::ok();
}

status result_file::flush() {
    return dirty_ ? save() : status::ok();
}

bool attn_is_dense(const attn_config & a) {
    return a.prefill == prefill_method::DENSE && a.decode == decode_kind::DENSE && a.kv == kv_method::FULL;
}

result<std::vector<method_slot>> method_slots_create(const model & m, const context_params & cp) {
    std::vector<method_slot> slots;
    context_params           d = cp;
    d.attn                     = attn_config{};
    method_slot dense;
    dense.label = "dense";
    dense.attn  = d.attn;
    LC_ASSIGN_OR_RETURN(dense.ctx, context::create(m, d));
    slots.push_back(std::move(dense));
    if (!attn_is_dense(cp.attn)) {
        method_slot s;
        s.label = attn_config_describe(cp.attn);
        s.attn  = cp.attn;
        LC_ASSIGN_OR_RETURN(s.ctx, context::create(m, cp));
        slots.push_back(std::move(s));
    }
    return slots;
}

json method_json(const method_slot & s) {
    json j = {{"label", s.label},
              {"prefill", prefill_method_name(s.attn.prefill)},
              {"budget", prefill_budget_name(s.attn.budget)},
              {"sparse_min_len", s.attn.sparse_min_len},
              {"sidecar", s.attn.sidecar},
              {"decode", decode_kind_name(s.attn.decode)},
              {"decode_budget", decode_budget_name(s.attn.decode_keys)}};
    // Only with a KV policy, so that result files made before KV policies existed still resume.
    if (s.attn.kv != kv_method::FULL) {
        j["kv"]        = kv_method_name(s.attn.kv);
        j["kv_budget"] = decode_budget_name(s.attn.kv_opts.budget);
    }
    return j;
}

result<std::string> model_file_sha256(const std::string & path) {
    std::ifstream in(path + ".sha256");
    std::string   word;
    if (in >> word && word.size() == 64) return word;
    return sha256_file_hex(path);
}

} // namespace lc::eval
