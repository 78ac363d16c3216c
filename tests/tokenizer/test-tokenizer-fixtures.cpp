// Token ids against llama.cpp's tokenizer on the real models: the string lists in tests/fixtures/tokenizer
// (NAME.inp: each string followed by a line "__________"; NAME.out: one line of ids per string) and the long
// prompts of tests/fixtures/smollm2 (rebuilt from ../shared/data as prompts.json describes). The fixture ids
// were made with special tokens added and parsed (Gemma's lists start with BOS, chat markup is one id), so we
// encode with add_special and parse_special. Skips when a model, the fixtures or the shared data are absent.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <dirent.h>
#include <string>
#include <vector>

#include "core/sha256.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer-test-util.h"
#include "tokenizer/tokenizer.h"

namespace {

std::string fixture(const std::string & rel) {
    return std::string(LC_SOURCE_DIR) + "/tests/fixtures/" + rel;
}

lc::result<lc::tokenizer> load_tokenizer(const std::string & path) {
    auto f = lc::gguf_file::open(path);
    if (!f) return f.get_status();
    return lc::tokenizer::from_gguf(**f);
}

std::vector<std::string> split_inp(const std::string & text) {
    const std::string        sep = "\n__________\n";
    std::vector<std::string> out;
    size_t                   at = 0;
    for (size_t p; (p = text.find(sep, at)) != std::string::npos; at = p + sep.size())
        out.push_back(text.substr(at, p - at));
    std::string last = text.substr(at);
    if (last.size() >= 11 && last.compare(last.size() - 11, 11, "\n__________") == 0) last.resize(last.size() - 11);
    if (!last.empty() && last != "__________") out.push_back(last);
    return out;
}

std::vector<std::string> split_lines(const std::string & text) {
    std::vector<std::string> out;
    size_t                   at = 0;
    while (at < text.size()) {
        size_t e = text.find('\n', at);
        if (e == std::string::npos) e = text.size();
        out.push_back(text.substr(at, e - at));
        at = e + 1;
    }
    return out;
}

std::string show_ids(const std::vector<int32_t> & ids, size_t from, size_t n) {
    std::string s;
    for (size_t i = from; i < ids.size() && i < from + n; ++i) s += std::to_string(ids[i]) + " ";
    return s;
}

// First index where the two lists differ, with a few ids of each from there.
std::string first_difference(const std::vector<int32_t> & got, const std::vector<int32_t> & want) {
    size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    const size_t from = i > 3 ? i - 3 : 0;
    return "first difference at id " + std::to_string(i) + " of " + std::to_string(want.size()) + ": got [" +
           show_ids(got, from, 8) + "] want [" + show_ids(want, from, 8) + "]";
}

void check_string_fixture(const std::string & name, const std::string & model, bool parse_special) {
    const std::string path = lc::test::tok_model_path(model);
    if (path.empty()) GTEST_SKIP() << model << " not in the model cache";
    std::string inp, out;
    if (!lc::test::read_file(fixture("tokenizer/" + name + ".inp"), inp) ||
        !lc::test::read_file(fixture("tokenizer/" + name + ".out"), out)) {
        GTEST_SKIP() << "tests/fixtures/tokenizer/" << name << ".inp/.out absent";
    }
    auto tok = load_tokenizer(path);
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();
    const std::vector<std::string> texts = split_inp(inp);
    const std::vector<std::string> lines = split_lines(out);
    ASSERT_EQ(texts.size(), lines.size()) << name << ": strings in .inp and lines in .out differ in number";
    int n_bad = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
        const std::vector<int32_t> want = lc::test::parse_ids(lines[i]);
        const std::vector<int32_t> got  = tok->encode(texts[i], true, parse_special);
        if (got != want) {
            ++n_bad;
            ADD_FAILURE() << name << " string " << i << " (" << texts[i].size() << " bytes, begins \""
                          << texts[i].substr(0, 40) << "\"): " << first_difference(got, want);
        }
    }
    std::printf("%s: %zu strings, %d differ\n", name.c_str(), texts.size(), n_bad);
}

// ---- prompts.json: just enough JSON to read the fields the prompt builders use ----

// The JSON text of the object of prompt `name` (from its "name" key to the next prompt's).
std::string prompt_object(const std::string & json, const std::string & name) {
    const size_t b = json.find("\"name\": \"" + name + "\"");
    if (b == std::string::npos) return "";
    const size_t e = json.find("\"name\": \"", b + 1);
    return json.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

// Value of string field `key` in obj, unescaped (\n \t \" \\ \/ \uXXXX for the BMP).
bool json_string(const std::string & obj, const std::string & key, std::string & out) {
    const size_t k = obj.find("\"" + key + "\": \"");
    if (k == std::string::npos) return false;
    out.clear();
    for (size_t i = k + key.size() + 5; i < obj.size(); ++i) {
        const char c = obj[i];
        if (c == '"') return true;
        if (c != '\\') {
            out.push_back(c);
            continue;
        }
        const char e = obj[++i];
        switch (e) {
        case 'n':
            out.push_back('\n');
            break;
        case 't':
            out.push_back('\t');
            break;
        case 'r':
            out.push_back('\r');
            break;
        case 'u': {
            const uint32_t cp = uint32_t(std::stoul(obj.substr(i + 1, 4), nullptr, 16));
            i += 4;
            if (cp < 0x80) {
                out.push_back(char(cp));
            } else if (cp < 0x800) {
                out.push_back(char(0xC0 | (cp >> 6)));
                out.push_back(char(0x80 | (cp & 0x3F)));
            } else {
                out.push_back(char(0xE0 | (cp >> 12)));
                out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
                out.push_back(char(0x80 | (cp & 0x3F)));
            }
            break;
        }
        default:
            out.push_back(e);
            break; // \" \\ \/
        }
    }
    return false;
}

bool json_int(const std::string & obj, const std::string & key, long long & out) {
    const size_t k = obj.find("\"" + key + "\": ");
    if (k == std::string::npos) return false;
    out = std::stoll(obj.substr(k + key.size() + 4));
    return true;
}

std::vector<std::string> sorted_txt_files(const std::string & dir) {
    std::vector<std::string> names;
    if (DIR * d = opendir(dir.c_str())) {
        while (dirent * e = readdir(d)) {
            const std::string n = e->d_name;
            if (n.size() > 4 && n.compare(n.size() - 4, 4, ".txt") == 0) names.push_back(n);
        }
        closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
}

// Rebuilds the text of one prompt; false with a reason when the recipe or its data is missing.
bool build_prompt(const std::string & json, const std::string & name, const std::string & data_root, std::string & text,
                  std::string & why) {
    const std::string obj = prompt_object(json, name);
    std::string       kind;
    if (obj.empty() || !json_string(obj, "kind", kind)) {
        why = "no recipe for " + name;
        return false;
    }
    if (kind == "literal") return json_string(obj, "text", text) || (why = "literal without text", false);
    if (kind == "wrap") {
        std::string inner, prefix, suffix;
        if (!json_string(obj, "inner", inner) || !json_string(obj, "prefix", prefix) ||
            !json_string(obj, "suffix", suffix)) {
            why = "wrap recipe incomplete";
            return false;
        }
        std::string body;
        if (!build_prompt(json, inner, data_root, body, why)) return false;
        text = prefix + body + suffix;
        return true;
    }
    long long b = 0, e = 0;
    if (!json_int(obj, "byte_begin", b) || !json_int(obj, "byte_end", e)) {
        why = "recipe without byte_begin/byte_end";
        return false;
    }
    std::string all;
    if (kind == "file-prefix") {
        std::string file;
        if (!json_string(obj, "file", file) || !lc::test::read_file(data_root + "/" + file, all)) {
            why = "cannot read " + data_root + "/" + file;
            return false;
        }
    } else if (kind == "concat-prefix") {
        std::string dir, sep;
        if (!json_string(obj, "dir", dir) || !json_string(obj, "separator", sep)) {
            why = "concat recipe incomplete";
            return false;
        }
        const std::vector<std::string> files = sorted_txt_files(data_root + "/" + dir);
        if (files.empty()) {
            why = "no .txt files in " + data_root + "/" + dir;
            return false;
        }
        for (size_t i = 0; i < files.size(); ++i) {
            std::string part;
            if (!lc::test::read_file(data_root + "/" + dir + "/" + files[i], part)) {
                why = "cannot read " + files[i];
                return false;
            }
            if (i) all += sep;
            all += part;
        }
    } else {
        why = "unknown recipe kind '" + kind + "'";
        return false;
    }
    if (e > (long long)all.size() || b > e) {
        why = "byte range past the end of the data";
        return false;
    }
    text = all.substr(size_t(b), size_t(e - b));
    return true;
}

} // namespace

TEST(tokenizer_fixtures, smollm2_strings) {
    check_string_fixture("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", true);
}

TEST(tokenizer_fixtures, gemma3_strings) {
    check_string_fixture("gemma3", "gemma-3-270m-q4_k_m.gguf", true);
}

// The prompts of the SmolLM2 model fixtures: our ids must equal llama.cpp's exactly, chat markup included
// (parsed as special tokens).
TEST(tokenizer_fixtures, smollm2_prompts) {
    const std::string path = lc::test::tok_model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty()) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not in the model cache";
    std::string json;
    if (!lc::test::read_file(fixture("smollm2/prompts.json"), json)) GTEST_SKIP() << "smollm2/prompts.json absent";
    const std::string data_root = std::string(LC_SOURCE_DIR) + "/../shared/data";
    auto              tok       = load_tokenizer(path);
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();

    int n_checked = 0;
    for (size_t at = 0; (at = json.find("\"name\": \"", at)) != std::string::npos; ++at) {
        const size_t      b    = at + 9;
        const std::string name = json.substr(b, json.find('"', b) - b);
        std::string       text, why;
        if (!build_prompt(json, name, data_root, text, why)) {
            std::printf("%s: skipped (%s)\n", name.c_str(), why.c_str());
            continue;
        }
        std::string sha;
        if (json_string(prompt_object(json, name), "text_sha256", sha)) {
            ASSERT_EQ(lc::sha256_hex(text.data(), text.size()), sha)
                << name << ": rebuilt text differs from the recipe";
        }
        std::string tokens_file;
        ASSERT_TRUE(json_string(prompt_object(json, name), "tokens", tokens_file)) << name;
        std::string want_text;
        ASSERT_TRUE(lc::test::read_file(fixture("smollm2/" + tokens_file), want_text)) << tokens_file;
        const std::vector<int32_t> want = lc::test::parse_ids(want_text);

        const auto                 t0  = std::chrono::steady_clock::now();
        const std::vector<int32_t> got = tok->encode(text, true, true);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_EQ(got.size(), want.size()) << name;
        EXPECT_TRUE(got == want) << name << ": " << first_difference(got, want);
        std::printf("%s: %zu bytes -> %zu tokens in %.2f ms\n", name.c_str(), text.size(), got.size(), ms);
        ++n_checked;
    }
    if (n_checked == 0) GTEST_SKIP() << "no prompt could be rebuilt (is ../shared/data present?)";
}
