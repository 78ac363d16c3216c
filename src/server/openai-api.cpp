// OpenAI API request parsing, validation and response JSON (see openai-api.h). nlohmann-json exceptions are
// caught here and become api_errors; nothing throws out of this file.
#include "server/openai-api.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

namespace lc::server {

using json = nlohmann::json;

namespace {

api_error bad(std::string param, std::string code, std::string msg, int http = 400) {
    api_error e;
    e.http_status = http;
    e.message     = std::move(msg);
    e.param       = std::move(param);
    e.code        = std::move(code);
    return e;
}

api_error unsupported(std::string param, std::string msg) {
    return bad(std::move(param), "unsupported", std::move(msg), 422);
}

const char * type_name(const json & v) {
    switch (v.type()) {
    case json::value_t::null:
        return "null";
    case json::value_t::boolean:
        return "a boolean";
    case json::value_t::string:
        return "a string";
    case json::value_t::array:
        return "an array";
    case json::value_t::object:
        return "an object";
    case json::value_t::number_float:
        return "a number";
    default:
        return "an integer";
    }
}

api_error wrong_type(const std::string & param, const char * want, const json & v) {
    return bad(param, "invalid_type", "'" + param + "' must be " + want + ", not " + type_name(v));
}

// Fields each endpoint accepts; anything else is rejected so that a typo ("max_token") is not silently ignored.
const std::vector<std::string> k_common_fields = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "logprobs",
    "user",
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
    "prefill",
    "prefill_budget",
    "decode",
    "decode_budget",
    "kv",
    "kv_budget",
};
const std::vector<std::string> k_completion_fields = {"prompt", "echo", "suffix", "best_of"};
const std::vector<std::string> k_chat_fields       = {
          "messages", "max_completion_tokens", "top_logprobs",       "response_format",
          "tools",    "tool_choice",           "parallel_tool_calls"};

bool known_field(api_kind kind, const std::string & k) {
    auto in = [&](const std::vector<std::string> & v) { return std::find(v.begin(), v.end(), k) != v.end(); };
    return in(k_common_fields) || (kind == api_kind::COMPLETION ? in(k_completion_fields) : in(k_chat_fields));
}

// A method flag's parse error, reworded for a request body ("--prefill 'x'" -> "prefill 'x'").
api_error method_error(const std::string & param, const status & st) {
    std::string m = st.message();
    if (m.rfind("--", 0) == 0) m.erase(0, 2);
    return bad(param, "invalid_value", m);
}

// A budget may be given as a string ("20%", "1x", "2048") or a number (0.2, 2048).
std::optional<api_error> budget_text(const json & v, const std::string & param, std::string & out) {
    if (v.is_string()) {
        out = v.get<std::string>();
    } else if (v.is_number_integer()) {
        out = std::to_string(v.get<int64_t>());
    } else if (v.is_number_float()) {
        const double d = v.get<double>();
        if (!std::isfinite(d)) return bad(param, "invalid_value", "'" + param + "' must be finite");
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%.17g", d);
        out = buf;
    } else {
        return wrong_type(param, "a string or a number", v);
    }
    return std::nullopt;
}

std::optional<api_error> parse_methods(const json & j, api_limits const & lim, gen_request & r) {
    attn_config & c = r.attn;
    c               = lim.attn;
    auto str        = [&](const char * key, std::string & out) -> std::optional<api_error> {
        const json & v = j.at(key);
        if (!v.is_string()) return wrong_type(key, "a string", v);
        out = v.get<std::string>();
        return std::nullopt;
    };
    std::string s;
    if (j.contains("prefill") && !j["prefill"].is_null()) {
        if (auto e = str("prefill", s)) return e;
        auto m = prefill_method_parse(s);
        if (!m) return method_error("prefill", m.get_status());
        c.prefill            = *m;
        r.methods_overridden = true;
    }
    if (j.contains("prefill_budget") && !j["prefill_budget"].is_null()) {
        if (auto e = budget_text(j["prefill_budget"], "prefill_budget", s)) return e;
        auto b = prefill_budget_parse(s);
        if (!b) return method_error("prefill_budget", b.get_status());
        c.budget             = *b;
        r.methods_overridden = true;
    }
    if (j.contains("decode") && !j["decode"].is_null()) {
        if (auto e = str("decode", s)) return e;
        auto m = decode_kind_parse(s);
        if (!m) return method_error("decode", m.get_status());
        c.decode             = *m;
        r.methods_overridden = true;
    }
    if (j.contains("decode_budget") && !j["decode_budget"].is_null()) {
        if (auto e = budget_text(j["decode_budget"], "decode_budget", s)) return e;
        auto b = decode_budget_parse(s);
        if (!b) return method_error("decode_budget", b.get_status());
        c.decode_keys        = *b;
        r.methods_overridden = true;
    }
    if (j.contains("kv") && !j["kv"].is_null()) {
        if (auto e = str("kv", s)) return e;
        auto m = kv_method_parse(s);
        if (!m) return method_error("kv", m.get_status());
        c.kv                 = *m;
        r.methods_overridden = true;
    }
    if (j.contains("kv_budget") && !j["kv_budget"].is_null()) {
        if (auto e = budget_text(j["kv_budget"], "kv_budget", s)) return e;
        auto b = decode_budget_parse(s);
        if (!b)
            return bad("kv_budget", "invalid_value",
                       "kv_budget '" + s +
                           "' is not a budget; use a share of the context (\"20%\", 0.2) or a "
                           "number of tokens (2048)");
        c.kv_opts.budget     = *b;
        r.methods_overridden = true;
    }
    return std::nullopt;
}

std::optional<api_error> parse_content(const json & v, const std::string & param, std::string & out) {
    if (v.is_string()) {
        out = v.get<std::string>();
        return std::nullopt;
    }
    if (!v.is_array()) return wrong_type(param, "a string or an array of text parts", v);
    out.clear();
    for (size_t i = 0; i < v.size(); ++i) {
        const std::string p    = param + "[" + std::to_string(i) + "]";
        const json &      part = v[i];
        if (!part.is_object()) return wrong_type(p, "an object", part);
        if (!part.contains("type") || !part["type"].is_string())
            return bad(p + ".type", "invalid_type", "'" + p + ".type' must be a string");
        if (part["type"] != "text")
            return unsupported(p + ".type", "content part type '" + part["type"].get<std::string>() +
                                                "' is not supported; this server takes text parts only");
        for (auto it = part.begin(); it != part.end(); ++it)
            if (it.key() != "type" && it.key() != "text")
                return bad(p + "." + it.key(), "unknown_field", "unknown field '" + it.key() + "' in " + p);
        if (!part.contains("text") || !part["text"].is_string())
            return bad(p + ".text", "invalid_type", "'" + p + ".text' must be a string");
        out += part["text"].get<std::string>();
    }
    return std::nullopt;
}

std::optional<api_error> parse_messages(const json & v, gen_request & r) {
    if (!v.is_array()) return wrong_type("messages", "an array", v);
    if (v.empty()) return bad("messages", "invalid_value", "'messages' must hold at least one message");
    for (size_t i = 0; i < v.size(); ++i) {
        const std::string p = "messages[" + std::to_string(i) + "]";
        const json &      m = v[i];
        if (!m.is_object()) return wrong_type(p, "an object", m);
        for (auto it = m.begin(); it != m.end(); ++it)
            if (it.key() != "role" && it.key() != "content" && it.key() != "name")
                return bad(p + "." + it.key(), "unknown_field",
                           "unknown field '" + it.key() + "' in " + p + "; a message has role, content and name");
        if (!m.contains("role") || !m["role"].is_string())
            return bad(p + ".role", "invalid_type", "'" + p + ".role' must be a string");
        std::string role = m["role"].get<std::string>();
        if (role == "developer") role = "system";
        if (role != "system" && role != "user" && role != "assistant")
            return bad(p + ".role", "invalid_value",
                       "role '" + role + "' is not supported; use system, developer, user or assistant");
        if (m.contains("name") && !m["name"].is_null() && !m["name"].is_string())
            return wrong_type(p + ".name", "a string", m["name"]);
        chat_message cm;
        cm.role = role;
        if (!m.contains("content") || m["content"].is_null()) {
            if (role != "assistant") return bad(p + ".content", "invalid_value", "'" + p + ".content' is required");
        } else if (auto e = parse_content(m["content"], p + ".content", cm.content)) {
            return e;
        }
        r.messages.push_back(std::move(cm));
    }
    return std::nullopt;
}

std::optional<api_error> parse_prompt(const json & v, gen_request & r) {
    if (v.is_string()) {
        r.prompt = v.get<std::string>();
        return std::nullopt;
    }
    if (!v.is_array()) return wrong_type("prompt", "a string, an array with one string, or an array of token ids", v);
    if (v.size() == 1 && v[0].is_string()) {
        r.prompt = v[0].get<std::string>();
        return std::nullopt;
    }
    if (!v.empty() && v[0].is_string())
        return unsupported("prompt", "a batch of several prompts is not supported; send one request per prompt");
    if (!v.empty() && v[0].is_array())
        return unsupported("prompt", "a batch of token arrays is not supported; send one request per prompt");
    if (v.empty()) return bad("prompt", "invalid_value", "'prompt' is empty");
    for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number_integer()) return wrong_type("prompt[" + std::to_string(i) + "]", "a token id", v[i]);
        r.prompt_tokens.push_back(int32_t(std::clamp<int64_t>(v[i].get<int64_t>(), -1, INT32_MAX)));
    }
    r.prompt_is_tokens = true;
    return std::nullopt;
}

// A number field (integers are numbers too) within [lo, hi].
std::optional<api_error> get_number(const json & j, const char * key, double lo, double hi, double & out) {
    const json & v = j.at(key);
    if (!v.is_number()) return wrong_type(key, "a number", v);
    const double d = v.get<double>();
    if (!(d >= lo && d <= hi)) {
        char buf[160];
        std::snprintf(buf, sizeof(buf), "'%s' is %g; it must be in [%g, %g]", key, d, lo, hi);
        return bad(key, "invalid_value", buf);
    }
    out = d;
    return std::nullopt;
}

bool present(const json & j, const char * key) {
    return j.contains(key) && !j[key].is_null();
}

std::optional<api_error> parse_object(api_kind kind, const json & j, const api_limits & lim, gen_request & r) {
    for (auto it = j.begin(); it != j.end(); ++it)
        if (!known_field(kind, it.key()))
            return bad(it.key(), "unknown_field",
                       "unknown field '" + it.key() + "'; see docs/serve.md for the fields this server accepts");

    if (present(j, "model")) {
        if (!j["model"].is_string()) return wrong_type("model", "a string", j["model"]);
        r.model = j["model"].get<std::string>();
        if (r.model != lim.model_id &&
            std::find(lim.model_aliases.begin(), lim.model_aliases.end(), r.model) == lim.model_aliases.end())
            return bad("model", "model_not_found",
                       "model '" + r.model + "' is not served here; GET /v1/models lists '" + lim.model_id + "'", 404);
    }
    r.model = lim.model_id;

    if (kind == api_kind::CHAT) {
        if (!j.contains("messages")) return bad("messages", "missing_field", "'messages' is required");
        if (auto e = parse_messages(j["messages"], r)) return e;
    } else {
        if (!j.contains("prompt")) return bad("prompt", "missing_field", "'prompt' is required");
        if (auto e = parse_prompt(j["prompt"], r)) return e;
    }

    const int64_t max_limit = lim.max_tokens_limit > 0 ? lim.max_tokens_limit : lim.n_ctx;
    for (const char * key : {"max_tokens", "max_completion_tokens"}) {
        if (!present(j, key)) continue;
        if (!j[key].is_number_integer()) return wrong_type(key, "an integer", j[key]);
        const int64_t n = j[key].get<int64_t>();
        if (n < 1 || n > max_limit)
            return bad(key, "invalid_value",
                       "'" + std::string(key) + "' is " + std::to_string(n) + "; it must be in [1, " +
                           std::to_string(max_limit) + "] (the server's limit; -c is " + std::to_string(lim.n_ctx) +
                           ")");
        r.max_tokens = n;
    }

    r.sampling = lim.sampling;
    double d   = 0;
    if (present(j, "temperature")) {
        if (auto e = get_number(j, "temperature", 0.0, 2.0, d)) return e;
        r.sampling.temp = float(d);
    }
    if (present(j, "top_p")) {
        if (auto e = get_number(j, "top_p", 0.0, 1.0, d)) return e;
        if (d == 0.0) return bad("top_p", "invalid_value", "'top_p' must be greater than 0");
        r.sampling.top_p = float(d);
    }
    if (present(j, "top_k")) {
        if (!j["top_k"].is_number_integer()) return wrong_type("top_k", "an integer", j["top_k"]);
        const int64_t k = j["top_k"].get<int64_t>();
        if (k < 0 || k > INT32_MAX) return bad("top_k", "invalid_value", "'top_k' must be >= 0 (0: off)");
        r.sampling.top_k = int32_t(k);
    }
    if (present(j, "min_p")) {
        if (auto e = get_number(j, "min_p", 0.0, 1.0, d)) return e;
        r.sampling.min_p = float(d);
    }
    if (present(j, "seed")) {
        if (!j["seed"].is_number_integer()) return wrong_type("seed", "an integer", j["seed"]);
        const json & s  = j["seed"];
        r.sampling.seed = s.is_number_unsigned() ? s.get<uint64_t>() : uint64_t(s.get<int64_t>());
        if (!s.is_number_unsigned() && s.get<int64_t>() < 0) r.sampling.seed = sampling_seed_random;
    }
    if (status st = r.sampling.validate(); !st) return bad("", "invalid_value", st.message());

    if (present(j, "stop")) {
        const json & s = j["stop"];
        if (s.is_string()) {
            r.stop.push_back(s.get<std::string>());
        } else if (s.is_array()) {
            if (s.size() > 4) return bad("stop", "invalid_value", "'stop' holds at most 4 sequences");
            for (size_t i = 0; i < s.size(); ++i) {
                if (!s[i].is_string()) return wrong_type("stop[" + std::to_string(i) + "]", "a string", s[i]);
                r.stop.push_back(s[i].get<std::string>());
            }
        } else {
            return wrong_type("stop", "a string or an array of strings", s);
        }
        r.stop.erase(std::remove(r.stop.begin(), r.stop.end(), std::string()), r.stop.end());
    }

    if (present(j, "stream")) {
        if (!j["stream"].is_boolean()) return wrong_type("stream", "a boolean", j["stream"]);
        r.stream = j["stream"].get<bool>();
    }
    if (present(j, "stream_options")) {
        const json & so = j["stream_options"];
        if (!so.is_object()) return wrong_type("stream_options", "an object", so);
        if (!r.stream) return bad("stream_options", "invalid_value", "'stream_options' needs \"stream\": true");
        for (auto it = so.begin(); it != so.end(); ++it) {
            if (it.key() != "include_usage")
                return bad("stream_options." + it.key(), "unknown_field",
                           "unknown field '" + it.key() + "' in stream_options");
            if (!it.value().is_boolean()) return wrong_type("stream_options.include_usage", "a boolean", it.value());
            r.include_usage = it.value().get<bool>();
        }
    }
    if (present(j, "user") && !j["user"].is_string()) return wrong_type("user", "a string", j["user"]);

    // OpenAI features this server does not implement: accepted at their neutral values only.
    if (present(j, "n")) {
        if (!j["n"].is_number_integer()) return wrong_type("n", "an integer", j["n"]);
        if (j["n"].get<int64_t>() != 1) return unsupported("n", "only n = 1 is supported");
    }
    if (present(j, "best_of")) {
        if (!j["best_of"].is_number_integer()) return wrong_type("best_of", "an integer", j["best_of"]);
        if (j["best_of"].get<int64_t>() != 1) return unsupported("best_of", "only best_of = 1 is supported");
    }
    for (const char * key : {"frequency_penalty", "presence_penalty"}) {
        if (!present(j, key)) continue;
        if (auto e = get_number(j, key, -2.0, 2.0, d)) return e;
        if (d != 0.0) return unsupported(key, std::string("'") + key + "' is not supported (only 0)");
    }
    if (present(j, "logprobs")) {
        const json & v = j["logprobs"];
        if (!(v.is_boolean() && !v.get<bool>()) && !(v.is_number_integer() && v.get<int64_t>() == 0))
            return unsupported("logprobs", "logprobs are not supported");
    }
    if (present(j, "top_logprobs")) return unsupported("top_logprobs", "logprobs are not supported");
    if (present(j, "logit_bias")) {
        if (!j["logit_bias"].is_object()) return wrong_type("logit_bias", "an object", j["logit_bias"]);
        if (!j["logit_bias"].empty()) return unsupported("logit_bias", "logit_bias is not supported");
    }
    if (present(j, "suffix")) return unsupported("suffix", "'suffix' (insertion) is not supported");
    if (present(j, "echo")) {
        if (!j["echo"].is_boolean()) return wrong_type("echo", "a boolean", j["echo"]);
        r.echo = j["echo"].get<bool>();
    }
    for (const char * key : {"tools", "tool_choice", "parallel_tool_calls"})
        if (present(j, key)) return unsupported(key, "tool calls are not supported");
    if (present(j, "response_format")) {
        const json & v = j["response_format"];
        if (!v.is_object()) return wrong_type("response_format", "an object", v);
        if (!(v.size() == 1 && v.contains("type") && v["type"] == "text"))
            return unsupported("response_format", "only {\"type\": \"text\"} is supported");
    }
    return parse_methods(j, lim, r);
}

} // namespace

json api_error_json(const api_error & e) {
    json err       = json::object();
    err["message"] = e.message;
    err["type"]    = e.type;
    err["param"]   = e.param.empty() ? json(nullptr) : json(e.param);
    err["code"]    = e.code.empty() ? json(nullptr) : json(e.code);
    return json{{"error", err}};
}

api_error api_error_from_status(const status & st, std::string param) {
    api_error e;
    e.message = st.message();
    e.param   = std::move(param);
    switch (st.code()) {
    case status_code::INVALID_ARGUMENT:
    case status_code::OUT_OF_RANGE:
        e.http_status = 400;
        break;
    case status_code::NOT_FOUND:
        e.http_status = 404;
        break;
    case status_code::UNSUPPORTED:
        e.http_status = 422;
        break;
    case status_code::RESOURCE_EXHAUSTED:
        e.http_status = 503;
        e.type        = "server_error";
        e.code        = "resource_exhausted";
        break;
    default:
        e.http_status = 500;
        e.type        = "server_error";
        break;
    }
    return e;
}

std::optional<api_error> request_parse(api_kind kind, std::string_view body, const api_limits & lim,
                                       gen_request & out) {
    out      = gen_request{};
    out.kind = kind;
    try {
        json j = json::parse(body.begin(), body.end());
        if (!j.is_object())
            return bad("", "invalid_type", std::string("the body must be a JSON object, not ") + type_name(j));
        return parse_object(kind, j, lim, out);
    } catch (const json::parse_error & e) {
        return bad("", "invalid_json", std::string("the body is not valid JSON: ") + e.what());
    } catch (const json::exception & e) {
        return bad("", "invalid_value", std::string("bad request: ") + e.what());
    }
}

std::optional<api_error> request_resolve_max_tokens(gen_request & req, int64_t n_prompt, const api_limits & lim) {
    if (n_prompt < 1)
        return bad(req.kind == api_kind::CHAT ? "messages" : "prompt", "invalid_value", "the prompt is empty");
    const int64_t room = lim.n_ctx - n_prompt;
    if (room < 1) {
        api_error e = bad(req.kind == api_kind::CHAT ? "messages" : "prompt", "context_length_exceeded",
                          "the prompt has " + std::to_string(n_prompt) + " tokens; the context holds " +
                              std::to_string(lim.n_ctx) +
                              " (-c) and needs room for one generated token; shorten "
                              "the prompt or start the server with a larger -c");
        return e;
    }
    if (req.max_tokens < 0) {
        req.max_tokens = std::min(lim.max_tokens_default, room);
    } else if (req.max_tokens > room) {
        return bad("max_tokens", "context_length_exceeded",
                   "the prompt has " + std::to_string(n_prompt) + " tokens and max_tokens is " +
                       std::to_string(req.max_tokens) + ": " + std::to_string(n_prompt + req.max_tokens) +
                       " tokens exceed the context of " + std::to_string(lim.n_ctx) + " (-c); lower max_tokens to " +
                       std::to_string(room) + " or less");
    }
    return std::nullopt;
}

json usage_json(const usage_counts & u) {
    return json{{"prompt_tokens", u.prompt_tokens},
                {"completion_tokens", u.completion_tokens},
                {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json response_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                   const std::string & text, const std::string & finish_reason, const usage_counts & u) {
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
    if (kind == api_kind::CHAT)
        choice["message"] = json{{"role", "assistant"}, {"content", text}};
    else
        choice["text"] = text;
    return json{{"id", id},
                {"object", kind == api_kind::CHAT ? "chat.completion" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({choice})},
                {"usage", usage_json(u)}};
}

json chunk_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                const std::string & text, const std::string & finish_reason, bool role_first) {
    json choice = {{"index", 0},
                   {"logprobs", nullptr},
                   {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
    if (kind == api_kind::CHAT) {
        json delta = json::object();
        if (role_first) delta["role"] = "assistant";
        if (!text.empty() || (role_first && finish_reason.empty())) delta["content"] = text;
        choice["delta"] = delta;
    } else {
        choice["text"] = text;
    }
    return json{{"id", id},
                {"object", kind == api_kind::CHAT ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({choice})}};
}

json chunk_usage_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                      const usage_counts & u) {
    return json{{"id", id},
                {"object", kind == api_kind::CHAT ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array()},
                {"usage", usage_json(u)}};
}

json chunk_progress_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                         int64_t processed, int64_t total, double elapsed_ms) {
    return json{{"id", id},
                {"object", kind == api_kind::CHAT ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array()},
                {"prompt_progress", {{"processed", processed}, {"total", total}, {"elapsed_ms", elapsed_ms}}}};
}

std::string sse_event(const json & j) {
    // Generated text may hold bytes that are not UTF-8 (a model can emit any byte): replace, never throw.
    return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

text_cut text_cut_find(std::string_view text, const std::vector<std::string> & stops) {
    text_cut c;
    for (const std::string & s : stops) {
        if (s.empty()) continue;
        const size_t p = text.find(s);
        if (p != std::string_view::npos && (c.stop_at == std::string::npos || p < c.stop_at)) c.stop_at = p;
    }
    if (c.stop_at != std::string::npos) {
        c.safe_end = c.stop_at;
        return c;
    }
    size_t hold = 0;
    for (const std::string & s : stops) {
        for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k) {
            if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
                hold = k;
                break;
            }
        }
    }
    size_t end = text.size() - hold;
    // Back off over an incomplete UTF-8 sequence: find the lead byte of the last character.
    size_t j = end;
    while (j > 0 && end - j < 4 && (uint8_t(text[j - 1]) & 0xC0) == 0x80) --j;
    if (j > 0) {
        const uint8_t lead = uint8_t(text[j - 1]);
        const size_t  need = lead < 0x80           ? 1
                             : (lead >> 5) == 0x6  ? 2
                             : (lead >> 4) == 0xE  ? 3
                             : (lead >> 3) == 0x1E ? 4
                                                   : 1;
        if (end - (j - 1) < need) end = j - 1;
    }
    c.safe_end = end;
    return c;
}

} // namespace lc::server
