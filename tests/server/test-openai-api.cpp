// OpenAI API parsing and validation of `longctx serve` without HTTP: accepted requests and their defaults, every
// kind of bad input (malformed JSON, wrong types, unknown fields, values out of range, unknown methods,
// unsupported features, prompts over the context), the error objects and status codes, response and chunk JSON,
// and the stop-sequence / UTF-8 cut of streamed text. Random mutations of a valid body never throw.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "server/openai-api.h"

using namespace lc;
using namespace lc::server;
using json = nlohmann::json;

namespace {

api_limits limits() {
    api_limits l;
    l.model_id           = "smollm2";
    l.model_aliases      = {"smollm2.gguf"};
    l.n_ctx              = 1024;
    l.max_tokens_default = 100;
    l.sampling.temp      = 0.5f;
    return l;
}

std::optional<api_error> parse(api_kind k, const std::string & body, gen_request & r) {
    return request_parse(k, body, limits(), r);
}

// The error a body gives (fails the test when it is accepted).
api_error err_of(api_kind k, const std::string & body) {
    gen_request r;
    auto        e = parse(k, body, r);
    EXPECT_TRUE(e.has_value()) << "accepted: " << body;
    return e.value_or(api_error{});
}

const api_kind C  = api_kind::COMPLETION;
const api_kind CH = api_kind::CHAT;

} // namespace

TEST(openai_api, completion_minimal_and_defaults) {
    gen_request r;
    ASSERT_FALSE(parse(C, R"({"prompt":"hello"})", r));
    EXPECT_EQ(r.prompt, "hello");
    EXPECT_EQ(r.model, "smollm2");
    EXPECT_EQ(r.max_tokens, -1);
    EXPECT_FLOAT_EQ(r.sampling.temp, 0.5f); // the server's flag
    EXPECT_FALSE(r.stream);
    EXPECT_FALSE(r.methods_overridden);
    EXPECT_EQ(r.attn.kv, kv_method::FULL);
}

TEST(openai_api, completion_fields) {
    gen_request r;
    ASSERT_FALSE(parse(C,
                       R"({"model":"smollm2.gguf","prompt":["one"],"max_tokens":7,"temperature":0,"top_p":0.5,
                           "seed":42,"stop":["\n","END"],"stream":true,"stream_options":{"include_usage":true},
                           "n":1,"logprobs":null,"frequency_penalty":0,"user":"u","echo":false})",
                       r));
    EXPECT_EQ(r.prompt, "one");
    EXPECT_EQ(r.max_tokens, 7);
    EXPECT_TRUE(r.sampling.greedy());
    EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
    EXPECT_EQ(r.sampling.seed, 42u);
    EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "END"}));
    EXPECT_TRUE(r.stream);
    EXPECT_TRUE(r.include_usage);
}

TEST(openai_api, completion_token_prompt) {
    gen_request r;
    ASSERT_FALSE(parse(C, R"({"prompt":[1,2,3]})", r));
    EXPECT_TRUE(r.prompt_is_tokens);
    EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(err_of(C, R"({"prompt":["a","b"]})").http_status, 422);
    EXPECT_EQ(err_of(C, R"({"prompt":[1,"b"]})").param, "prompt[1]");
    EXPECT_EQ(err_of(C, R"({"prompt":[]})").http_status, 400);
}

TEST(openai_api, chat_messages) {
    gen_request r;
    ASSERT_FALSE(parse(CH,
                       R"({"messages":[{"role":"developer","content":"be brief"},
                                       {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                                       {"role":"assistant","content":null},
                                       {"role":"user","content":"c","name":"x"}],
                           "max_completion_tokens":3})",
                       r));
    ASSERT_EQ(r.messages.size(), 4u);
    EXPECT_EQ(r.messages[0].role, "system");
    EXPECT_EQ(r.messages[1].content, "ab");
    EXPECT_EQ(r.messages[2].content, "");
    EXPECT_EQ(r.max_tokens, 3);
}

TEST(openai_api, malformed_json) {
    for (const char * body : {"", "{", "{\"prompt\":}", "nul", "{\"prompt\":\"a\",}", "\xff\xfe"}) {
        api_error e = err_of(C, body);
        EXPECT_EQ(e.http_status, 400) << body;
        EXPECT_EQ(e.code, "invalid_json") << body;
    }
    EXPECT_EQ(err_of(C, "[1,2]").code, "invalid_type");
    EXPECT_EQ(err_of(C, "\"text\"").code, "invalid_type");
}

TEST(openai_api, wrong_types) {
    struct c {
        api_kind    k;
        const char *body, *param;
    };
    for (const c & t : {c{C, R"({"prompt":5})", "prompt"}, c{C, R"({"prompt":"a","max_tokens":"5"})", "max_tokens"},
                        c{C, R"({"prompt":"a","max_tokens":5.5})", "max_tokens"},
                        c{C, R"({"prompt":"a","temperature":"hot"})", "temperature"},
                        c{C, R"({"prompt":"a","stream":"yes"})", "stream"}, c{C, R"({"prompt":"a","stop":7})", "stop"},
                        c{C, R"({"prompt":"a","stop":[1]})", "stop[0]"}, c{C, R"({"prompt":"a","seed":"1"})", "seed"},
                        c{C, R"({"prompt":"a","model":3})", "model"}, c{C, R"({"prompt":"a","prefill":1})", "prefill"},
                        c{C, R"({"prompt":"a","kv_budget":[1]})", "kv_budget"},
                        c{CH, R"({"messages":"hi"})", "messages"}, c{CH, R"({"messages":[1]})", "messages[0]"},
                        c{CH, R"({"messages":[{"role":1,"content":"x"}]})", "messages[0].role"},
                        c{CH, R"({"messages":[{"role":"user","content":5}]})", "messages[0].content"}}) {
        api_error e = err_of(t.k, t.body);
        EXPECT_EQ(e.http_status, 400) << t.body;
        EXPECT_EQ(e.param, t.param) << t.body;
        EXPECT_FALSE(e.message.empty());
    }
}

TEST(openai_api, unknown_fields) {
    api_error e = err_of(C, R"({"prompt":"a","max_token":5})");
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.param, "max_token");
    EXPECT_EQ(e.code, "unknown_field");
    EXPECT_NE(e.message.find("max_token"), std::string::npos);
    // Chat-only and completion-only fields stay in their endpoint.
    EXPECT_EQ(err_of(C, R"({"prompt":"a","messages":[]})").param, "messages");
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"user","content":"a"}],"prompt":"a"})").param, "prompt");
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"user","content":"a","mood":"x"}]})").param, "messages[0].mood");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","stream":true,"stream_options":{"x":1}})").param, "stream_options.x");
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"user","content":[{"type":"text","text":"a","x":1}]}]})").param,
              "messages[0].content[0].x");
}

TEST(openai_api, values_out_of_range) {
    EXPECT_EQ(err_of(C, R"({"prompt":"a","max_tokens":0})").param, "max_tokens");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","max_tokens":1025})").param, "max_tokens"); // over n_ctx
    EXPECT_EQ(err_of(C, R"({"prompt":"a","max_tokens":-3})").param, "max_tokens");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","temperature":2.5})").param, "temperature");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","top_p":0})").param, "top_p");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","top_p":1.5})").param, "top_p");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","stop":["a","b","c","d","e"]})").param, "stop");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","stream_options":{"include_usage":true}})").param, "stream_options");
    EXPECT_EQ(err_of(CH, R"({"messages":[]})").param, "messages");
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"tool","content":"x"}]})").param, "messages[0].role");
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"user"}]})").param, "messages[0].content");
    EXPECT_EQ(err_of(CH, R"({})").param, "messages");
    EXPECT_EQ(err_of(C, R"({})").param, "prompt");
    api_error lim = err_of(C, R"({"prompt":"a","max_tokens":5000})");
    EXPECT_NE(lim.message.find("1024"), std::string::npos) << lim.message;
}

TEST(openai_api, model_not_served) {
    api_error e = err_of(C, R"({"prompt":"a","model":"gpt-4"})");
    EXPECT_EQ(e.http_status, 404);
    EXPECT_EQ(e.code, "model_not_found");
    EXPECT_NE(e.message.find("smollm2"), std::string::npos);
}

TEST(openai_api, unsupported_features_422) {
    for (const char * body : {R"({"prompt":"a","n":2})", R"({"prompt":"a","best_of":3})",
                              R"({"prompt":"a","logprobs":2})", R"({"prompt":"a","presence_penalty":1})",
                              R"({"prompt":"a","logit_bias":{"1":5}})", R"({"prompt":"a","suffix":"x"})"}) {
        EXPECT_EQ(err_of(C, body).http_status, 422) << body;
    }
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"user","content":"a"}],"tools":[]})").http_status, 422);
    EXPECT_EQ(
        err_of(CH, R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})").http_status,
        422);
    EXPECT_EQ(err_of(CH, R"({"messages":[{"role":"user","content":"a"}],"response_format":{"type":"json_object"}})")
                  .http_status,
              422);
}

TEST(openai_api, methods) {
    gen_request r;
    ASSERT_FALSE(parse(C,
                       R"({"prompt":"a","prefill":"vslash","prefill_budget":"50%","decode":"quest",
                           "decode_budget":256,"kv":"streaming","kv_budget":0.3})",
                       r));
    EXPECT_TRUE(r.methods_overridden);
    EXPECT_EQ(r.attn.prefill, prefill_method::VSLASH);
    EXPECT_EQ(r.attn.budget.mode, prefill_budget::kind::FRACTION);
    EXPECT_DOUBLE_EQ(r.attn.budget.value, 0.5);
    EXPECT_EQ(r.attn.decode, decode_kind::QUEST);
    EXPECT_EQ(r.attn.decode_keys.mode, decode_budget::kind::TOKENS);
    EXPECT_DOUBLE_EQ(r.attn.decode_keys.value, 256);
    EXPECT_EQ(r.attn.kv, kv_method::STREAMING);
    EXPECT_DOUBLE_EQ(r.attn.kv_opts.budget.value, 0.3);

    api_error e = err_of(C, R"({"prompt":"a","prefill":"magic"})");
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.param, "prefill");
    EXPECT_EQ(e.message.rfind("prefill 'magic'", 0), 0u) << e.message; // no "--" of the CLI flag
    EXPECT_NE(e.message.find("dense"), std::string::npos);
    EXPECT_EQ(err_of(C, R"({"prompt":"a","decode":"fast"})").param, "decode");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","kv":"zip"})").param, "kv");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","kv_budget":"lots"})").param, "kv_budget");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","prefill_budget":"-1x"})").param, "prefill_budget");
}

TEST(openai_api, resolve_max_tokens) {
    const api_limits l = limits();
    gen_request      r;
    r.max_tokens = -1;
    ASSERT_FALSE(request_resolve_max_tokens(r, 10, l));
    EXPECT_EQ(r.max_tokens, 100); // the default
    r.max_tokens = -1;
    ASSERT_FALSE(request_resolve_max_tokens(r, 1000, l));
    EXPECT_EQ(r.max_tokens, 24); // capped by what is left of n_ctx
    r.max_tokens = 25;
    auto e       = request_resolve_max_tokens(r, 1000, l);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->code, "context_length_exceeded");
    EXPECT_EQ(e->param, "max_tokens");
    r.max_tokens = 5;
    e            = request_resolve_max_tokens(r, 1024, l);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->code, "context_length_exceeded");
    EXPECT_EQ(e->param, "prompt");
    EXPECT_NE(e->message.find("1024"), std::string::npos);
    EXPECT_TRUE(request_resolve_max_tokens(r, 0, l)); // empty prompt
}

TEST(openai_api, error_objects_and_status_codes) {
    api_error e;
    e.message = "m";
    json j    = api_error_json(e);
    EXPECT_EQ(j["error"]["message"], "m");
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"]["param"].is_null());
    EXPECT_TRUE(j["error"]["code"].is_null());
    EXPECT_EQ(api_error_from_status(error(status_code::INVALID_ARGUMENT, "x")).http_status, 400);
    EXPECT_EQ(api_error_from_status(error(status_code::OUT_OF_RANGE, "x")).http_status, 400);
    EXPECT_EQ(api_error_from_status(error(status_code::NOT_FOUND, "x")).http_status, 404);
    EXPECT_EQ(api_error_from_status(error(status_code::UNSUPPORTED, "x")).http_status, 422);
    api_error busy = api_error_from_status(error(status_code::RESOURCE_EXHAUSTED, "x"));
    EXPECT_EQ(busy.http_status, 503);
    EXPECT_EQ(busy.type, "server_error");
    EXPECT_EQ(api_error_from_status(error(status_code::INTERNAL, "x")).http_status, 500);
}

TEST(openai_api, responses_and_chunks) {
    json r = response_json(CH, "id1", 5, "m", "hi", "stop", {3, 2});
    EXPECT_EQ(r["object"], "chat.completion");
    EXPECT_EQ(r["choices"][0]["message"]["content"], "hi");
    EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
    EXPECT_EQ(r["usage"]["total_tokens"], 5);
    json c = response_json(C, "id1", 5, "m", "hi", "length", {3, 2});
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_EQ(c["choices"][0]["text"], "hi");

    json k = chunk_json(CH, "id1", 5, "m", "x", "", true);
    EXPECT_EQ(k["object"], "chat.completion.chunk");
    EXPECT_EQ(k["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(k["choices"][0]["delta"]["content"], "x");
    EXPECT_TRUE(k["choices"][0]["finish_reason"].is_null());
    json last = chunk_json(CH, "id1", 5, "m", "", "stop", false);
    EXPECT_TRUE(last["choices"][0]["delta"].empty());
    EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
    json u = chunk_usage_json(C, "id1", 5, "m", {4, 1});
    EXPECT_TRUE(u["choices"].empty());
    EXPECT_EQ(u["usage"]["completion_tokens"], 1);
    json p = chunk_progress_json(CH, "id1", 5, "m", 512, 2048, 10.0);
    EXPECT_EQ(p["prompt_progress"]["processed"], 512);
    EXPECT_EQ(p["prompt_progress"]["total"], 2048);

    const std::string ev = sse_event(json{{"a", 1}});
    EXPECT_EQ(ev, "data: {\"a\":1}\n\n");
    // Bytes that are not UTF-8 are replaced, never thrown on.
    std::string bad_utf8 = sse_event(chunk_json(C, "i", 1, "m", "a\xff\xc3", ""));
    EXPECT_EQ(bad_utf8.rfind("data: ", 0), 0u);
    EXPECT_NO_THROW(json::parse(bad_utf8.substr(6)));
}

TEST(openai_api, text_cut) {
    const std::vector<std::string> none;
    EXPECT_EQ(text_cut_find("hello", none).safe_end, 5u);
    EXPECT_EQ(text_cut_find("hello", none).stop_at, std::string::npos);
    const std::vector<std::string> s = {"\n\n", "END"};
    EXPECT_EQ(text_cut_find("ab\n", s).safe_end, 2u); // "\n" may start "\n\n"
    EXPECT_EQ(text_cut_find("abEN", s).safe_end, 2u);
    EXPECT_EQ(text_cut_find("abEX", s).safe_end, 4u);
    EXPECT_EQ(text_cut_find("ab\n\nc", s).stop_at, 2u);
    EXPECT_EQ(text_cut_find("xENDy\n\n", s).stop_at, 1u); // the first one wins
    // UTF-8: the euro sign is E2 82 AC; an incomplete one is held back, a complete one is not.
    EXPECT_EQ(text_cut_find("a\xE2\x82", none).safe_end, 1u);
    EXPECT_EQ(text_cut_find("a\xE2", none).safe_end, 1u);
    EXPECT_EQ(text_cut_find("a\xE2\x82\xAC", none).safe_end, 4u);
    EXPECT_EQ(text_cut_find("\xF0\x9F\x98", none).safe_end, 0u);
    EXPECT_EQ(text_cut_find("\xF0\x9F\x98\x80", none).safe_end, 4u);
    EXPECT_EQ(text_cut_find("a\x80", none).safe_end, 2u); // a stray continuation byte is not held forever
}

TEST(openai_api, random_bodies_never_throw) {
    const std::string valid =
        R"({"model":"smollm2","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":5,)"
        R"("temperature":0.7,"stop":["x"],"stream":true,"stream_options":{"include_usage":true},"kv":"h2o"})";
    std::mt19937 rng(1234);
    int          n_ok = 0;
    for (int i = 0; i < 3000; ++i) {
        std::string b = valid;
        const int   n = 1 + int(rng() % 4);
        for (int k = 0; k < n; ++k) {
            const size_t at = rng() % b.size();
            switch (rng() % 3) {
            case 0:
                b[at] = char(rng() % 256);
                break;
            case 1:
                b.erase(at, 1 + rng() % 8);
                break;
            default:
                b.insert(at, 1, "{}[]\",:0e-\\"[rng() % 11]);
                break;
            }
            if (b.empty()) b = "{";
        }
        gen_request              r;
        std::optional<api_error> e;
        ASSERT_NO_THROW(e = request_parse(CH, b, limits(), r)) << b;
        if (!e)
            ++n_ok;
        else
            EXPECT_GE(e->http_status, 400);
    }
    EXPECT_LT(n_ok, 3000); // the mutations do break bodies
}

TEST(openai_api, deep_nesting_and_large_values) {
    // 100k levels of arrays (a 200 KB body): an error, not a stack overflow, in parsing or in freeing the tree.
    const std::string deep = "{\"prompt\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
    gen_request       r;
    auto              e = request_parse(C, deep, limits(), r);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->http_status, 422); // parsed: an array of arrays is a batch of token prompts
    EXPECT_EQ(err_of(C, "{\"prompt\":" + std::string(100000, '[')).code, "invalid_json");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","max_tokens":1e400})").http_status, 400); // out of double range
    EXPECT_EQ(err_of(C, R"({"prompt":"a","max_tokens":99999999999999999999999})").param, "max_tokens");
    EXPECT_EQ(err_of(C, R"({"prompt":"a","seed":1.5})").param, "seed");
    EXPECT_FALSE(parse(C, R"({"prompt":"a","seed":18446744073709551615})", r)); // uint64 max is a seed
}
