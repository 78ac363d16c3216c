// The OpenAI-compatible API of `longctx serve`, without any HTTP: request parsing and validation for
// /v1/completions and /v1/chat/completions, the response and stream-chunk JSON, OpenAI-style error objects,
// and the stop-sequence / UTF-8 cut of streamed text. Everything here is pure and unit-tested
// (tests/server/test-openai-api.cpp); the HTTP layer is server.cpp.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "attn/attn-config.h"
#include "longctx/status.h"
#include "runtime/sampling.h"
#include "tokenizer/tokenizer.h"

namespace lc::server {

// An error as the client sees it: HTTP status and the OpenAI error object
// {"error":{"message":..., "type":..., "param":..., "code":...}} (param and code null when empty).
struct api_error {
    int         http_status = 400;
    std::string message;
    std::string type = "invalid_request_error";
    std::string param;
    std::string code;
};

nlohmann::json api_error_json(const api_error & e);
// Status codes map to HTTP: INVALID_ARGUMENT, OUT_OF_RANGE 400; NOT_FOUND 404; UNSUPPORTED 422;
// RESOURCE_EXHAUSTED 503 (type "server_error", the request may be retried); anything else 500.
api_error api_error_from_status(const status & st, std::string param = "");

enum class api_kind { COMPLETION, CHAT };

// What the server serves and its limits; the defaults a request starts from.
struct api_limits {
    std::string              model_id;                 // the id GET /v1/models lists
    std::vector<std::string> model_aliases;            // other names accepted in "model" (the file name)
    int64_t                  n_ctx              = 0;   // tokens per sequence
    int64_t                  max_tokens_default = 256; // when a request gives none (capped by what fits)
    int64_t                  max_tokens_limit   = 0;   // largest max_tokens accepted (0: n_ctx)
    attn_config              attn;                     // the server's method flags
    sampling_params          sampling;                 // the server's sampling flags
};

// A parsed and validated generation request. Either prompt (COMPLETION, text), prompt_tokens (COMPLETION,
// token ids) or messages (CHAT) is set.
struct gen_request {
    api_kind                  kind = api_kind::COMPLETION;
    std::string               model;
    std::string               prompt;
    std::vector<int32_t>      prompt_tokens;
    bool                      prompt_is_tokens = false;
    std::vector<chat_message> messages;
    int64_t                   max_tokens = -1; // -1: not given (resolved by request_resolve_max_tokens)
    sampling_params           sampling;
    std::vector<std::string>  stop;
    bool                      stream        = false;
    bool                      include_usage = false; // stream_options.include_usage
    bool                      echo          = false; // COMPLETION: the prompt text in front of the output
    attn_config               attn;                  // the server's methods with this request's overrides
    bool                      methods_overridden = false;
};

// Parses a request body. Unknown top-level fields, unknown message fields, wrong types, out-of-range values,
// unknown attention methods and OpenAI features this server does not implement (n > 1, tools, logprobs, ...)
// give an api_error naming the field in `param`. Never throws.
std::optional<api_error> request_parse(api_kind kind, std::string_view body, const api_limits & lim, gen_request & out);

// After tokenization: the prompt must leave room for one generated token in n_ctx, max_tokens must fit in
// what is left and under the limit. Fills req.max_tokens when it was not given:
// min(max_tokens_default, n_ctx - n_prompt).
std::optional<api_error> request_resolve_max_tokens(gen_request & req, int64_t n_prompt, const api_limits & lim);

struct usage_counts {
    int64_t prompt_tokens     = 0;
    int64_t completion_tokens = 0;
};

nlohmann::json usage_json(const usage_counts & u);
// Whole responses ("text_completion", "chat.completion").
nlohmann::json response_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                             const std::string & text, const std::string & finish_reason, const usage_counts & u);
// One stream chunk ("text_completion" / "chat.completion.chunk"). For CHAT, role_first adds
// "role":"assistant" to the delta. finish_reason empty: null.
nlohmann::json chunk_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                          const std::string & text, const std::string & finish_reason, bool role_first = false);
// The last chunk when stream_options.include_usage: "choices":[] and "usage".
nlohmann::json chunk_usage_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                                const usage_counts & u);
// A prompt_progress chunk ("choices":[] so that OpenAI clients accept it):
// {"prompt_progress":{"processed":N,"total":M,"elapsed_ms":T}}.
nlohmann::json chunk_progress_json(api_kind kind, const std::string & id, int64_t created, const std::string & model,
                                   int64_t processed, int64_t total, double elapsed_ms);
// One server-sent event: "data: <json>\n\n".
std::string                       sse_event(const nlohmann::json & j);
inline constexpr std::string_view sse_done = "data: [DONE]\n\n";

// Streamed text is cut so that no client ever sees a stop sequence, the start of one, or half a UTF-8
// character. Given all generated text so far and the stop sequences:
//   stop_at  the byte offset of the first stop sequence in text (npos when none): the output ends there;
//   safe_end without a stop, the prefix that may be sent now: text minus any tail that is a prefix of a stop
//            sequence and minus an incomplete UTF-8 sequence at the end.
// Example: stops {"\n\n"}, text "ab\n" -> safe_end 2 (the "\n" may start a stop); text "ab\n\nc" -> stop_at 2.
struct text_cut {
    size_t stop_at  = std::string::npos;
    size_t safe_end = 0;
};
text_cut text_cut_find(std::string_view text, const std::vector<std::string> & stops);

} // namespace lc::server
