// Chat templates: instead of a Jinja interpreter, recognise the template family from its text and render that
// family's format in code, reproducing the Jinja output exactly for text-only conversations. Family-specific
// constants that vary between models (ChatML's default system message, Llama 3.1's knowledge-cutoff line and
// default date) are read from the template text itself.
#include <optional>

#include "tokenizer/tokenizer-impl.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace lc {

namespace {

// Jinja's `trim` filter is Python's str.strip(): White_Space plus U+001C..U+001F on both ends.
bool python_isspace(uint32_t cp) {
    return unicode_is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F);
}

std::string jinja_trim(std::string_view s) {
    size_t b = 0;
    while (b < s.size()) {
        size_t         len = 1;
        const uint32_t cp  = utf8_decode(s.data() + b, s.size() - b, &len);
        if (!python_isspace(cp)) break;
        b += len;
    }
    size_t e = s.size();
    while (e > b) {
        size_t start = e - 1; // back up to the lead byte of the last character
        while (start > b && (uint8_t(s[start]) & 0xC0) == 0x80) --start;
        size_t         len = 1;
        const uint32_t cp  = utf8_decode(s.data() + start, e - start, &len);
        if (start + len != e || !python_isspace(cp)) break;
        e = start;
    }
    return std::string(s.substr(b, e - b));
}

// Unescapes the body of a Jinja (Python-style) string literal: \n \t \r \\ \' \".
std::string unescape_literal(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\\' || i + 1 == s.size()) {
            out.push_back(s[i]);
            continue;
        }
        const char c = s[++i];
        switch (c) {
        case 'n':
            out.push_back('\n');
            break;
        case 't':
            out.push_back('\t');
            break;
        case 'r':
            out.push_back('\r');
            break;
        default:
            out.push_back(c);
            break; // \\ \' \"
        }
    }
    return out;
}

// Reads the string literal that `at` points into: the text from `at` up to the closing `quote`
// (honouring backslash escapes), unescaped. nullopt when the literal does not close.
std::optional<std::string> literal_from(std::string_view tmpl, size_t at, char quote) {
    for (size_t i = at; i < tmpl.size(); ++i) {
        if (tmpl[i] == '\\') {
            ++i;
            continue;
        }
        if (tmpl[i] == quote) return unescape_literal(tmpl.substr(at, i - at));
    }
    return std::nullopt;
}

// ChatML templates that add a system turn when the conversation has none carry it as one string literal:
//   {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n' }}
// (a literal or an escaped newline after "system"). Returns that system text, or nullopt when no literal
// "<|im_start|>system\n...<|im_end|>" exists (e.g. the template only builds it from messages[0]).
std::optional<std::string> chatml_default_system(std::string_view tmpl) {
    const std::string_view head = "<|im_start|>system";
    for (size_t p = tmpl.find(head); p != std::string_view::npos; p = tmpl.find(head, p + 1)) {
        if (p == 0 || (tmpl[p - 1] != '\'' && tmpl[p - 1] != '"')) continue; // must open a string literal
        const char                       quote = tmpl[p - 1];
        const std::optional<std::string> lit   = literal_from(tmpl, p, quote);
        if (!lit) continue;
        const std::string prefix = "<|im_start|>system\n";
        const std::string suffix = "<|im_end|>\n";
        if (lit->size() < prefix.size() + suffix.size() || lit->compare(0, prefix.size(), prefix) != 0 ||
            lit->compare(lit->size() - suffix.size(), suffix.size(), suffix) != 0) {
            continue;
        }
        return lit->substr(prefix.size(), lit->size() - prefix.size() - suffix.size());
    }
    return std::nullopt;
}

enum class chat_family { CHATML, GEMMA, LLAMA3 };

// What the renderer needs to know about a template, read from its text (or chosen for a vocabulary
// without a template).
struct chat_format {
    chat_family                family = chat_family::CHATML;
    bool                       bos    = false;       // the template writes bos_token first
    std::optional<std::string> default_system;       // ChatML: system text used when the first message is not system
    bool                       gemma_system = false; // Gemma 3: a system message prefixes the first user turn
    std::optional<std::string> cutoff_line;          // Llama 3.1+: "Cutting Knowledge Date: ...\n"
    std::string                date;                 // Llama 3.1+: default date_string
};

// The string literal right after `marker` (spaces skipped) at its first occurrence that has one, e.g.
// `set date_string = "26 Jul 2024"` and not `set date_string = strftime_now(...)`.
std::optional<std::string> literal_after(std::string_view tmpl, std::string_view marker) {
    for (size_t p = tmpl.find(marker); p != std::string_view::npos; p = tmpl.find(marker, p + 1)) {
        size_t q = p + marker.size();
        while (q < tmpl.size() && tmpl[q] == ' ') ++q;
        if (q < tmpl.size() && (tmpl[q] == '\'' || tmpl[q] == '"')) return literal_from(tmpl, q + 1, tmpl[q]);
    }
    return std::nullopt;
}

bool contains(std::string_view s, std::string_view what) {
    return s.find(what) != std::string_view::npos;
}

result<chat_format> chat_format_detect(std::string_view tmpl) {
    chat_format f;
    if (contains(tmpl, "<|im_start|>")) {
        f.family         = chat_family::CHATML;
        f.bos            = false;
        f.default_system = chatml_default_system(tmpl);
        return f;
    }
    if (contains(tmpl, "<start_of_turn>")) {
        f.family       = chat_family::GEMMA;
        f.bos          = contains(tmpl, "bos_token");
        f.gemma_system = contains(tmpl, "first_user_prefix");
        return f;
    }
    if (contains(tmpl, "<|start_header_id|>")) {
        f.family        = chat_family::LLAMA3;
        f.bos           = contains(tmpl, "bos_token");
        const size_t at = tmpl.find("Cutting Knowledge Date:");
        if (at != std::string_view::npos) {
            const size_t q    = tmpl.find_last_of("'\"", at);
            const auto   date = literal_after(tmpl, "set date_string =");
            if (q != std::string_view::npos) f.cutoff_line = literal_from(tmpl, q + 1, tmpl[q]);
            if (!f.cutoff_line || !date) {
                return error(status_code::UNSUPPORTED,
                             "chat template: Llama 3.1-style template without a literal knowledge-cutoff line or "
                             "default date_string; this build cannot render it");
            }
            f.date = *date;
        }
        return f;
    }
    std::string head(tmpl.substr(0, 80));
    for (char & c : head) {
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    }
    return error(status_code::UNSUPPORTED,
                 "chat template: unknown template family (none of '<|im_start|>' for ChatML, '<start_of_turn>' for "
                 "Gemma, '<|start_header_id|>' for Llama 3 appears); the template begins: \"%s%s\"",
                 head.c_str(), tmpl.size() > 80 ? "..." : "");
}

std::string render_chatml(const chat_format & f, const std::vector<chat_message> & msgs, bool add_gen) {
    std::string out;
    if (!msgs.empty() && msgs[0].role != "system" && f.default_system) {
        out += "<|im_start|>system\n" + *f.default_system + "<|im_end|>\n";
    }
    for (const chat_message & m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_gen) out += "<|im_start|>assistant\n";
    return out;
}

// Gemma 2/3: no system role; Gemma 3 folds a leading system message into the first user turn
// ("first_user_prefix"). User and model turns must alternate, starting with the user; content is trimmed.
result<std::string> render_gemma(const chat_format & f, const std::vector<chat_message> & msgs, bool add_gen,
                                 std::string_view bos_text) {
    std::string out;
    if (f.bos) out += bos_text;
    std::string first_user_prefix;
    size_t      first = 0;
    if (!msgs.empty() && msgs[0].role == "system") {
        if (!f.gemma_system) return error(status_code::INVALID_ARGUMENT, "chat template: System role not supported");
        first_user_prefix = msgs[0].content + "\n\n";
        first             = 1;
    }
    for (size_t i = first; i < msgs.size(); ++i) {
        const size_t index0 = i - first;
        if ((msgs[i].role == "user") != (index0 % 2 == 0)) {
            return error(status_code::INVALID_ARGUMENT,
                         "chat template: Conversation roles must alternate user/assistant/user/assistant/... "
                         "(message %zu has role '%s')",
                         i, msgs[i].role.c_str());
        }
        const std::string role = msgs[i].role == "assistant" ? "model" : msgs[i].role;
        out += "<start_of_turn>" + role + "\n" + (index0 == 0 ? first_user_prefix : "") + jinja_trim(msgs[i].content) +
               "<end_of_turn>\n";
    }
    if (add_gen) out += "<start_of_turn>model\n";
    return out;
}

// Llama 3: every turn is <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> (content trimmed),
// BOS first. Llama 3.1+ templates always open with a system turn that states the knowledge cutoff and a
// date; we use the template's fallback date_string (strftime_now is not called, so output is
// reproducible) and support no tools.
result<std::string> render_llama3(const chat_format & f, const std::vector<chat_message> & msgs, bool add_gen,
                                  std::string_view bos_text) {
    auto turn = [](const std::string & role, const std::string & content) {
        return "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + content + "<|eot_id|>";
    };
    std::string out;
    // Llama 3.1+ writes bos_token first; Llama 3 puts it in front of the first message.
    if (f.bos && (f.cutoff_line || !msgs.empty())) out += bos_text;
    size_t first = 0;
    if (f.cutoff_line) {
        std::string system;
        if (!msgs.empty() && msgs[0].role == "system") {
            system = jinja_trim(msgs[0].content);
            first  = 1;
        }
        out += turn("system", *f.cutoff_line + "Today Date: " + f.date + "\n\n" + system);
    }
    for (size_t i = first; i < msgs.size(); ++i) {
        if (f.cutoff_line && (msgs[i].role == "tool" || msgs[i].role == "ipython")) {
            return error(status_code::UNSUPPORTED, "chat template: role '%s' (tool results) is not supported",
                         msgs[i].role.c_str());
        }
        out += turn(msgs[i].role, jinja_trim(msgs[i].content));
    }
    if (add_gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
}

result<std::string> chat_render(const chat_format & f, const std::vector<chat_message> & msgs, bool add_gen,
                                std::string_view bos_text) {
    switch (f.family) {
    case chat_family::CHATML:
        return render_chatml(f, msgs, add_gen);
    case chat_family::GEMMA:
        return render_gemma(f, msgs, add_gen, bos_text);
    case chat_family::LLAMA3:
        return render_llama3(f, msgs, add_gen, bos_text);
    }
    return error(status_code::INTERNAL, "chat template: bad family");
}

} // namespace

result<std::string> chat_template_apply(std::string_view tmpl, const std::vector<chat_message> & msgs,
                                        bool add_generation_prompt, std::string_view bos_text,
                                        std::string_view eos_text) {
    (void)eos_text; // none of the supported families writes eos_token
    if (tmpl.empty()) {
        return error(status_code::NOT_FOUND, "chat template: the model has no tokenizer.chat_template");
    }
    LC_ASSIGN_OR_RETURN(const chat_format f, chat_format_detect(tmpl));
    return chat_render(f, msgs, add_generation_prompt, bos_text);
}

result<std::string> tokenizer::apply_chat_template(const std::vector<chat_message> & msgs,
                                                   bool                              add_generation_prompt) const {
    const impl &     m        = *impl_;
    std::string_view bos_text = m.bos >= 0 ? std::string_view(m.text[m.bos]) : std::string_view();
    std::string_view eos_text = m.eos >= 0 ? std::string_view(m.text[m.eos]) : std::string_view();
    if (!m.chat_template.empty()) {
        return chat_template_apply(m.chat_template, msgs, add_generation_prompt, bos_text, eos_text);
    }
    // No template in the file (e.g. some Gemma 3 conversions): fall back on the family whose turn markers
    // the vocabulary has, in its plainest form.
    chat_format f;
    if (m.find("<start_of_turn>") >= 0 && m.find("<end_of_turn>") >= 0) {
        f.family       = chat_family::GEMMA;
        f.bos          = true;
        f.gemma_system = true;
    } else if (m.find("<|start_header_id|>") >= 0 && m.find("<|eot_id|>") >= 0) {
        f.family = chat_family::LLAMA3;
        f.bos    = true;
    } else if (m.find("<|im_start|>") >= 0 && m.find("<|im_end|>") >= 0) {
        f.family = chat_family::CHATML;
    } else {
        return error(status_code::NOT_FOUND,
                     "chat template: the model has no tokenizer.chat_template and its vocabulary has no known turn "
                     "markers; use plain prompts (run -p) instead of chat");
    }
    return chat_render(f, msgs, add_generation_prompt, bos_text);
}

} // namespace lc
