// Chat templates: rendering of the ChatML (SmolLM2, Qwen-style default system), Gemma 3 and Llama 3 / 3.1
// templates against expected strings written by hand from the Jinja source of each template below, plus the
// errors for unknown templates and conversations a template rejects.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer-test-util.h"
#include "tokenizer/tokenizer.h"

using lc::chat_message;
using msgs = std::vector<chat_message>;

namespace {

// Template sources. SmolLM2: tokenizer.chat_template of SmolLM2-135M-Instruct. Gemma 3 and Llama 3: the
// templates published with those models. "llama31": the text-only part of the Llama 3.1/3.2 template (its
// tool branches removed). "qwen25_like": a ChatML template whose default system message is a literal with an
// escaped newline, as in Qwen2.5's template.
const char * const k_smollm2 =
    R"TMPL({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %})TMPL";

const char * const k_gemma3 = R"TMPL({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
)TMPL";

const char * const k_llama3 =
    R"TMPL({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})TMPL";

const char * const k_llama31 = R"TMPL({{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)TMPL";

const char * const k_qwen25_like = R"TMPL({%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)TMPL";

lc::result<std::string> render(const char * tmpl, const msgs & m, bool add_gen) {
    return lc::chat_template_apply(tmpl, m, add_gen, "<bos>", "<eos>");
}

std::string render_ok(const char * tmpl, const msgs & m, bool add_gen) {
    auto r = render(tmpl, m, add_gen);
    EXPECT_TRUE(r.is_ok()) << r.get_status().message();
    return r.is_ok() ? *r : std::string();
}

const msgs k_one   = {{"user", "Hello!"}};
const msgs k_sys   = {{"system", "Be brief."}, {"user", "  Hi there \n"}, {"assistant", "Hello."}, {"user", "Bye"}};
const msgs k_multi = {{"user", "What is 2+2?"}, {"assistant", " 4 "}, {"user", "Thanks"}};

const std::string k_smol_sys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                               "Face<|im_end|>\n";

} // namespace

TEST(chat_template, chatml_smollm2_default_system) {
    EXPECT_EQ(render_ok(k_smollm2, k_one, false), k_smol_sys + "<|im_start|>user\nHello!<|im_end|>\n");
    EXPECT_EQ(render_ok(k_smollm2, k_one, true),
              k_smol_sys + "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    // content is not trimmed in ChatML
    EXPECT_EQ(render_ok(k_smollm2, k_multi, true),
              k_smol_sys + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n 4 <|im_end|>\n"
                           "<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n");
}

TEST(chat_template, chatml_own_system_message) {
    EXPECT_EQ(render_ok(k_smollm2, k_sys, true),
              "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi there \n<|im_end|>\n"
              "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(render_ok(k_smollm2, {}, true), "<|im_start|>assistant\n");
}

TEST(chat_template, chatml_escaped_default_system) {
    EXPECT_EQ(render_ok(k_qwen25_like, k_one, true),
              "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(render_ok(k_qwen25_like, k_sys, false),
              "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi there \n<|im_end|>\n"
              "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n");
    // a ChatML template without a literal system turn adds none
    const char * plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                         "message['content'] + '<|im_end|>\\n'}}{% endfor %}";
    EXPECT_EQ(render_ok(plain, k_one, false), "<|im_start|>user\nHello!<|im_end|>\n");
}

TEST(chat_template, gemma3) {
    EXPECT_EQ(render_ok(k_gemma3, k_one, true),
              "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n");
    // the system message becomes a prefix of the first user turn; content is trimmed, the prefix is not
    EXPECT_EQ(
        render_ok(k_gemma3, k_sys, false),
        "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n");
    EXPECT_EQ(render_ok(k_gemma3, k_multi, true),
              "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
              "<start_of_turn>user\nThanks<end_of_turn>\n<start_of_turn>model\n");
    auto bad = render(k_gemma3, {{"user", "a"}, {"user", "b"}}, true);
    ASSERT_FALSE(bad.is_ok());
    EXPECT_EQ(bad.get_status().code(), lc::status_code::INVALID_ARGUMENT);
    EXPECT_NE(bad.get_status().message().find("alternate"), std::string::npos);
    EXPECT_FALSE(render(k_gemma3, {{"assistant", "a"}}, true).is_ok());
}

TEST(chat_template, llama3) {
    EXPECT_EQ(render_ok(k_llama3, k_one, true), "<bos><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
                                                "<|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT_EQ(render_ok(k_llama3, k_sys, false),
              "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>");
}

TEST(chat_template, llama31_system_turn_with_dates) {
    const std::string head = "<bos><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
                             "2023\nToday Date: 26 Jul 2024\n\n";
    EXPECT_EQ(render_ok(k_llama31, k_one, true),
              head + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT_EQ(render_ok(k_llama31, k_sys, false),
              head + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                     "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>");
}

TEST(chat_template, errors) {
    auto none = render("", k_one, true);
    ASSERT_FALSE(none.is_ok());
    EXPECT_EQ(none.get_status().code(), lc::status_code::NOT_FOUND);
    auto other =
        render("{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}", k_one, true);
    ASSERT_FALSE(other.is_ok());
    EXPECT_EQ(other.get_status().code(), lc::status_code::UNSUPPORTED);
    EXPECT_NE(other.get_status().message().find("[INST]"), std::string::npos) << other.get_status().message();
}

TEST(chat_template, smollm2_model_file) {
    const std::string path = lc::test::tok_model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty()) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not in the model cache";
    auto f = lc::gguf_file::open(path);
    ASSERT_TRUE(f.is_ok()) << f.get_status().message();
    auto tok = lc::tokenizer::from_gguf(**f);
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();
    auto out = tok->apply_chat_template(k_one, true);
    ASSERT_TRUE(out.is_ok()) << out.get_status().message();
    EXPECT_EQ(*out, k_smol_sys + "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
}

TEST(chat_template, gemma3_model_file_without_template) {
    const std::string path = lc::test::tok_model_path("gemma-3-270m-q4_k_m.gguf");
    if (path.empty()) GTEST_SKIP() << "gemma-3-270m-q4_k_m.gguf not in the model cache";
    auto f = lc::gguf_file::open(path);
    ASSERT_TRUE(f.is_ok()) << f.get_status().message();
    auto tok = lc::tokenizer::from_gguf(**f);
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();
    // this conversion carries no tokenizer.chat_template: the Gemma turn markers in the vocabulary select
    // the Gemma 3 format
    auto out = tok->apply_chat_template(k_sys, true);
    ASSERT_TRUE(out.is_ok()) << out.get_status().message();
    EXPECT_EQ(*out, "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello."
                    "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
}
