// RULER-style synthetic task generators (NIAH x8, vt, cwe, fwe), length fitting, runner and summary.
#include "eval/ruler.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/log.h"
#include "core/sha256.h"
#include "eval/haystack.h"

namespace lc::eval {

namespace {

struct niah_cfg {
    const char * name;
    const char * hay; // noise, essay, needle
    bool         key_uuid, val_uuid;
    int          k, v, q;
};
const niah_cfg k_niah[] = {
    {"niah_single_1", "noise", false, false, 1, 1, 1},    {"niah_single_2", "essay", false, false, 1, 1, 1},
    {"niah_single_3", "essay", false, true, 1, 1, 1},     {"niah_multikey_1", "essay", false, false, 4, 1, 1},
    {"niah_multikey_2", "needle", false, false, 1, 1, 1}, {"niah_multikey_3", "needle", true, true, 1, 1, 1},
    {"niah_multivalue", "essay", false, false, 1, 4, 1},  {"niah_multiquery", "essay", false, false, 4, 1, 4},
};
const niah_cfg * find_niah(const std::string & n) {
    for (const auto & c : k_niah)
        if (n == c.name) return &c;
    return nullptr;
}

int task_n_gen(const std::string & n) {
    if (n == "vt") return 30;
    if (n == "cwe") return 120;
    if (n == "fwe") return 50;
    return 128;
}

std::string join(const std::vector<std::string> & v, const std::string & sep) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
    return s;
}

// "a", "a and b", "a, b, and c"
std::string join_query(const std::vector<std::string> & v) {
    if (v.size() == 1) return v[0];
    if (v.size() == 2) return v[0] + " and " + v[1];
    std::string s;
    for (size_t i = 0; i + 1 < v.size(); ++i) s += v[i] + ", ";
    return s + "and " + v.back();
}

// m distinct values in [0, n), sorted. REQUIRES m <= n.
std::vector<int64_t> distinct_sorted(rng & r, int64_t n, int m) {
    std::set<int64_t> s;
    while (int64_t(s.size()) < m) s.insert(int64_t(r.below(uint64_t(n))));
    return std::vector<int64_t>(s.begin(), s.end());
}

// Lines with extra lines inserted before the given (sorted) indices, in order.
std::string lines_with_inserts(const std::vector<std::string> & lines, const std::vector<int64_t> & at,
                               const std::vector<std::string> & ins) {
    std::vector<std::string> out;
    out.reserve(lines.size() + ins.size());
    size_t k = 0;
    for (size_t i = 0; i <= lines.size(); ++i) {
        while (k < at.size() && at[k] == int64_t(i)) out.push_back(ins[k++]);
        if (i < lines.size()) out.push_back(lines[i]);
    }
    return join(out, "\n");
}

std::string random_letters(rng & r, int n, char base) {
    std::string s;
    for (int i = 0; i < n; ++i) s += char(base + r.below(26));
    return s;
}

} // namespace

const std::vector<std::string> & ruler_task_names() {
    static const std::vector<std::string> names = {"niah_single_1",
                                                   "niah_single_2",
                                                   "niah_single_3",
                                                   "niah_multikey_1",
                                                   "niah_multikey_2",
                                                   "niah_multikey_3",
                                                   "niah_multivalue",
                                                   "niah_multiquery",
                                                   "vt",
                                                   "cwe",
                                                   "fwe"};
    return names;
}

std::string ruler_uuid(rng & r) {
    const uint64_t a = r.next(), b = r.next();
    uint8_t        by[16];
    for (int i = 0; i < 8; ++i) by[i] = uint8_t(a >> (8 * i));
    for (int i = 0; i < 8; ++i) by[8 + i] = uint8_t(b >> (8 * i));
    by[6] = uint8_t((by[6] & 0x0f) | 0x40); // version 4
    by[8] = uint8_t((by[8] & 0x3f) | 0x80); // variant 10
    char s[40];
    std::snprintf(s, sizeof(s), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", by[0], by[1],
                  by[2], by[3], by[4], by[5], by[6], by[7], by[8], by[9], by[10], by[11], by[12], by[13], by[14],
                  by[15]);
    return s;
}

std::vector<std::string> ruler_split_sentences(const std::string & text) {
    std::vector<std::string> out;
    size_t                   start = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if ((c == '.' || c == '!' || c == '?') && i + 1 < text.size() && text[i + 1] == ' ') {
            out.push_back(text.substr(start, i + 1 - start));
            start = i + 2;
        }
    }
    if (start < text.size()) out.push_back(text.substr(start));
    return out;
}

std::vector<int64_t> ruler_zipf_counts(int64_t total, int64_t n_vocab, double alpha) {
    double zeta = 0; // zeta(alpha) by its series; alpha = 2 converges to pi^2 / 6
    if (alpha == 2.0)
        zeta = M_PI * M_PI / 6.0;
    else
        for (int64_t k = 1; k < 1000000; ++k) zeta += std::pow(double(k), -alpha);
    std::vector<int64_t> c(static_cast<size_t>(n_vocab));
    for (int64_t k = 1; k <= n_vocab; ++k)
        c[size_t(k - 1)] = int64_t(std::floor(double(total) * std::pow(double(k), -alpha) / zeta));
    return c;
}

result<ruler_words> ruler_words_load(const std::string & dict_path, const std::string & essay_dir) {
    ruler_words   w;
    std::ifstream in(dict_path);
    if (!in)
        return error(status_code::NOT_FOUND,
                     "eval ruler: word list '%s' not found; install Debian's wamerican (scripts/setup.sh)",
                     dict_path.c_str());
    std::string line, all;
    while (std::getline(in, line)) {
        all += line + "\n";
        if (line.size() < 3 || line.size() > 10) continue;
        if (!std::all_of(line.begin(), line.end(), [](char c) { return c >= 'a' && c <= 'z'; })) continue;
        w.words.push_back(line);
    }
    std::sort(w.words.begin(), w.words.end());
    w.words.erase(std::unique(w.words.begin(), w.words.end()), w.words.end());
    if (w.words.size() < 1000)
        return error(status_code::INVALID_FILE, "eval ruler: '%s' holds only %zu usable words", dict_path.c_str(),
                     w.words.size());
    w.words_id = std::filesystem::path(dict_path).filename().string() + ":sha256=" + sha256_hex(all.data(), all.size());
    if (!essay_dir.empty()) {
        std::vector<std::string> files;
        std::error_code          ec;
        for (const auto & e : std::filesystem::directory_iterator(essay_dir, ec))
            if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path().string());
        std::sort(files.begin(), files.end());
        std::string text;
        for (const auto & f : files) {
            std::ifstream      fi(f, std::ios::binary);
            std::ostringstream ss;
            ss << fi.rdbuf();
            text += ss.str();
        }
        std::istringstream ws(text);
        std::string        word;
        while (ws >> word) w.essay.push_back(word);
        w.essay_id = "essays:sha256=" + sha256_hex(text.data(), text.size());
    }
    return w;
}

result<ruler_task> ruler_task::create(const std::string & name, const ruler_words & w, const tokenizer & tok,
                                      bool use_chat, int64_t length, uint64_t seed) {
    const auto & names = ruler_task_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
        return error(status_code::INVALID_ARGUMENT, "eval ruler: unknown task '%s'; tasks: %s", name.c_str(),
                     join(names, ", ").c_str());
    ruler_task t;
    t.name_      = name;
    t.w_         = &w;
    t.tok_       = &tok;
    t.use_chat_  = use_chat;
    t.length_    = length;
    uint64_t fnv = 0xcbf29ce484222325ULL; // FNV-1a of the task name: the same on every platform
    for (char ch : name) fnv = (fnv ^ uint8_t(ch)) * 0x100000001b3ULL;
    t.seed_               = seed_combine(seed, fnv);
    t.n_gen_              = task_n_gen(name);
    const niah_cfg *  nc  = find_niah(name);
    const std::string hay = nc ? (std::string(nc->hay) == "essay" && w.essay.empty() ? "noise" : nc->hay) : "";
    if (hay == "essay")
        t.inc_ = length < 4096 ? 50 : 500; // below 4k, 500 words would be half the budget
    else if (nc)
        t.inc_ = length < 4096 ? 5 : 25;
    else if (name == "vt")
        t.inc_ = length < 4096 ? 5 : 10;
    else if (name == "cwe")
        t.inc_ = 10;
    else
        t.inc_ = std::max<int64_t>(1, (length - t.n_gen_) / 32); // fwe: T steps
    const uint64_t probe = seed_combine(t.seed_, 0xF17);
    if (name == "fwe") {
        // Start at (L - G) / 6 words and add (L - G) / 32 until over the budget, then step back.
        int64_t T = std::max<int64_t>(1, (length - t.n_gen_) / 6);
        if (t.tokens_at(T, probe) > length)
            return error(status_code::OUT_OF_RANGE, "eval ruler: fwe does not fit in %lld tokens", (long long)length);
        while (t.tokens_at(T + t.inc_, probe) <= length && T < (int64_t(1) << 26)) T += t.inc_;
        t.size_ = T;
        return t;
    }
    // Largest n with tokens <= L: double from one increment, then bisect.
    int64_t lo = 0, hi = t.inc_;
    while (t.tokens_at(hi, probe) <= length) {
        lo = hi;
        hi *= 2;
        if (hi > (int64_t(1) << 26)) break;
    }
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (t.tokens_at(mid, probe) <= length)
            lo = mid;
        else
            hi = mid;
    }
    if (lo < 1)
        return error(status_code::OUT_OF_RANGE, "eval ruler: %s does not fit in %lld tokens", name.c_str(),
                     (long long)length);
    t.size_ = lo;
    return t;
}

int64_t ruler_task::tokens_at(int64_t n, uint64_t seed) const {
    const instance in = make(n, seed);
    auto           p  = prompt_build(*tok_, use_chat_, in.t, encode_plain(*tok_, in.context));
    return p ? int64_t(p->size()) + n_gen_ : (int64_t(1) << 40);
}

ruler_task::instance ruler_task::make(int64_t n, uint64_t seed) const {
    instance          out;
    rng               r(seed);
    const auto &      dict = w_->words;
    auto              word = [&]() { return dict[size_t(r.below(dict.size()))]; };
    const std::string cue  = use_chat_ ? "" : "\n\nAnswer: ";

    if (const niah_cfg * c = find_niah(name_)) {
        auto         key_of = [&]() { return c->key_uuid ? ruler_uuid(r) : word() + "-" + word(); };
        auto         val_of = [&]() { return c->val_uuid ? ruler_uuid(r) : std::to_string(r.range(1000000, 9999999)); };
        const char * kinds  = c->val_uuid ? "uuids" : "numbers";
        auto         sentence = [&](const std::string & k, const std::string & v) {
            return std::string("One of the special magic ") + kinds + " for " + k + " is: " + v + ".";
        };
        const int                k = std::max(c->k, c->q);
        std::vector<std::string> keys;
        while (int(keys.size()) < k) {
            std::string x = key_of();
            if (std::find(keys.begin(), keys.end(), x) == keys.end()) keys.push_back(x);
        }
        std::vector<std::vector<std::string>> vals(static_cast<size_t>(k));
        std::vector<std::string>              needles;
        for (int i = 0; i < k; ++i)
            for (int j = 0; j < c->v; ++j) {
                vals[size_t(i)].push_back(val_of());
                needles.push_back(sentence(keys[size_t(i)], vals[size_t(i)].back()));
            }
        r.shuffle(needles);
        const int   m   = int(needles.size());
        std::string hay = c->hay;
        if (hay == "essay" && w_->essay.empty()) hay = "noise";
        if (hay == "noise" || hay == "needle") {
            const int64_t            nl = std::max<int64_t>(n, m);
            std::vector<std::string> lines;
            for (int64_t i = 0; i < nl; ++i)
                lines.push_back(hay == "noise" ? filler_line : sentence(key_of(), val_of()));
            out.context = lines_with_inserts(lines, distinct_sorted(r, nl, m), needles);
        } else {
            // First n words of the essays (wrapping), split into sentences, needles at sampled depths.
            std::string text;
            for (int64_t i = 0; i < n; ++i) text += (i ? " " : "") + w_->essay[size_t(i % int64_t(w_->essay.size()))];
            std::vector<std::string> sents = ruler_split_sentences(text);
            std::vector<int64_t>     depth_ix;
            for (int64_t di : distinct_sorted(r, 40, m)) {
                const double depth = std::round(100.0 * double(di) / 39.0);
                depth_ix.push_back(int64_t(std::floor(double(sents.size()) * depth / 100.0)));
            }
            std::sort(depth_ix.begin(), depth_ix.end());
            std::vector<std::string> parts;
            size_t                   kk = 0;
            for (size_t i = 0; i <= sents.size(); ++i) {
                while (kk < depth_ix.size() && depth_ix[kk] == int64_t(i)) parts.push_back(needles[kk++]);
                if (i < sents.size()) parts.push_back(sents[i]);
            }
            out.context = join(parts, " ");
        }
        // Queries: Q of the K keys, without replacement.
        std::vector<int> order(static_cast<size_t>(k));
        for (int i = 0; i < k; ++i) order[size_t(i)] = i;
        r.shuffle(order);
        std::vector<std::string> q;
        for (int i = 0; i < c->q; ++i) {
            q.push_back(keys[size_t(order[size_t(i)])]);
            for (const auto & v : vals[size_t(order[size_t(i)])]) out.refs.push_back(v);
        }
        const bool        one  = c->v * c->q == 1;
        const std::string kind = one ? (c->val_uuid ? "uuid" : "number") : kinds;
        const std::string qs   = join_query(q);
        out.t.before           = std::string("Special magic ") + kinds +
                       " are hidden in the text below. Memorize them: you will be asked about them afterwards.\n\n";
        out.t.after =
            one ? "\n\nWhat is the special magic " + kind + " for " + qs + " mentioned in the text above?"
                : "\n\nWhat are all the special magic " + kind + " for " + qs + " mentioned in the text above?";
        out.t.answer_prefix =
            cue + "The special magic " + kind + " for " + qs + " mentioned in the text above " + (one ? "is" : "are");
        return out;
    }

    if (name_ == "vt") {
        // One worked example with 3-letter names (re-randomised per sample), then the task with 5-letter names.
        auto chain = [&](int64_t n_lines, int letters, std::vector<std::string> & names, std::string & value) {
            names.clear();
            while (names.size() < 5) {
                std::string x = random_letters(r, letters, 'A');
                if (std::find(names.begin(), names.end(), x) == names.end()) names.push_back(x);
            }
            value                       = std::to_string(r.range(10000, 99999));
            std::vector<std::string> st = {"VAR " + names[0] + " = " + value};
            for (int i = 1; i < 5; ++i) st.push_back("VAR " + names[size_t(i)] + " = VAR " + names[size_t(i - 1)]);
            const int64_t            nl = std::max<int64_t>(n_lines, 5);
            std::vector<std::string> lines(size_t(nl), filler_line);
            return lines_with_inserts(lines, distinct_sorted(r, nl, 5), st);
        };
        const std::string intro    = "Memorize and follow the chain(s) of variable assignments hidden in the text "
                                     "below.\n\n";
        auto              question = [](const std::string & v) {
            return "\n\nQuestion: Which variables are assigned the value " + v + " in the text above?";
        };
        auto prefix = [](const std::string & v) {
            return "Answer: Following the chain(s) of variable assignments in the text above, 5 variables are "
                   "assigned the value " +
                   v + "; they are:";
        };
        std::vector<std::string> ex_names, names;
        std::string              ex_value, value;
        // The example is sized for a 500-token budget: 12 filler lines (about 25 tokens each) plus its template.
        const std::string ex = chain(12, 3, ex_names, ex_value);
        out.t.before =
            intro + ex + question(ex_value) + "\n" + prefix(ex_value) + " " + join(ex_names, " ") + "\n\n" + intro;
        out.context         = chain(n, 5, names, value);
        out.t.after         = question(value);
        out.t.answer_prefix = (use_chat_ ? "" : "\n") + prefix(value);
        out.refs            = names;
        return out;
    }

    if (name_ == "cwe") {
        const bool small  = length_ < 4096;
        const int  c_main = small ? 6 : 30, u_main = small ? 1 : 3, c_ex = small ? 3 : 10, u_ex = small ? 1 : 3;
        const int  w_ex = small ? 20 : 40;
        // Distinct words drawn uniformly from the sorted dictionary (the same distribution as RULER's draw from its
        // shuffled pool).
        auto pick = [&](int64_t count) {
            std::vector<std::string> ws;
            std::set<size_t>         used;
            count = std::min<int64_t>(count, int64_t(dict.size()));
            while (int64_t(ws.size()) < count) {
                const size_t i = size_t(r.below(dict.size()));
                if (used.insert(i).second) ws.push_back(dict[i]);
            }
            return ws;
        };
        auto listing = [&](const std::vector<std::string> & ws, int c, int u) {
            std::vector<std::string> l;
            for (size_t i = 0; i < ws.size(); ++i)
                for (int k = 0; k < (i < 10 ? c : u); ++k) l.push_back(ws[i]);
            r.shuffle(l);
            std::string s;
            for (size_t i = 0; i < l.size(); ++i) s += (i ? " " : "") + std::to_string(i + 1) + ". " + l[i];
            return s;
        };
        const std::string intro    = "Below is a numbered list of words. Some of them occur more often than others; "
                                     "remember the ones that occur most often.\n";
        const std::string question = "\nQuestion: Which 10 words occur most often in the list above?";
        const std::string prefix   = "Answer: The 10 words that occur most often in the list above are:";
        const auto        ex_w     = pick(w_ex);
        std::string       ex_ans;
        for (int i = 0; i < 10; ++i) ex_ans += " " + std::to_string(i + 1) + ". " + ex_w[size_t(i)];
        out.t.before        = intro + listing(ex_w, c_ex, u_ex) + question + "\n" + prefix + ex_ans + "\n\n" + intro;
        const auto words    = pick(std::max<int64_t>(n, 10));
        out.context         = listing(words, c_main, u_main);
        out.t.after         = question;
        out.t.answer_prefix = (use_chat_ ? "" : "\n") + prefix;
        out.refs.assign(words.begin(), words.begin() + 10);
        return out;
    }

    // fwe: n is the total word budget T.
    const int64_t            vw = std::max<int64_t>(5, (length_ - n_gen_) / 50);
    std::set<std::string>    seen;
    std::vector<std::string> vocab;
    while (int64_t(vocab.size()) < vw) {
        std::string x = random_letters(r, 6, 'a');
        if (seen.insert(x).second) vocab.push_back(x);
    }
    std::sort(vocab.begin(), vocab.end());
    rng fixed(0x46574531); // the fixed-seed shuffle of the sorted vocabulary
    fixed.shuffle(vocab);
    vocab[0]                       = "...";
    const std::vector<int64_t> cnt = ruler_zipf_counts(n, vw, 2.0);
    std::vector<std::string>   text;
    for (size_t k = 0; k < vocab.size(); ++k)
        for (int64_t i = 0; i < cnt[k]; ++i) text.push_back(vocab[k]);
    r.shuffle(text);
    out.context  = join(text, " ");
    out.t.before = "Read the coded text below and keep count of how often each coded word occurs; find the three "
                   "coded words that occur most often.\n\n";
    out.t.after  = "\n\nQuestion: Leaving out the dots, which three coded words occur most often in the coded text "
                   "above? Answer without explanation.";
    out.t.answer_prefix = cue + "Based on the coded text above, the three coded words that occur most often are:";
    out.refs            = {vocab[1], vocab[2], vocab[3]};
    return out;
}

result<ruler_sample> ruler_task::sample(int i) const {
    const uint64_t s = seed_combine(seed_, uint64_t(i) + 1);
    int64_t        n = size_;
    while (n > inc_ && tokens_at(n, s) > length_) n -= inc_;
    const instance in = make(n, s);
    ruler_sample   out;
    out.task = name_;
    LC_ASSIGN_OR_RETURN(out.prompt, prompt_build(*tok_, use_chat_, in.t, encode_plain(*tok_, in.context)));
    if (int64_t(out.prompt.size()) + n_gen_ > length_)
        return error(status_code::OUT_OF_RANGE, "eval ruler: %s sample %d needs %zu + %d tokens, over %lld",
                     name_.c_str(), i, out.prompt.size(), n_gen_, (long long)length_);
    out.refs           = in.refs;
    out.n_gen          = n_gen_;
    out.size           = n;
    const niah_cfg * c = find_niah(name_);
    out.haystack =
        c ? (std::string(c->hay) == "essay" && w_->essay.empty() ? "noise" : c->hay) : (name_ == "vt" ? "noise" : "-");
    return out;
}

status ruler_run(const ruler_params & p, const ruler_words & w, eval_env & env, result_file & out) {
    auto key_of = [](const std::string & t, int64_t L, int i) {
        return t + ",L=" + std::to_string(L) + ",i=" + std::to_string(i);
    };
    const int64_t total = int64_t(p.tasks.size() * p.lengths.size()) * p.samples;
    int64_t       done  = 0;
    for (int64_t L : p.lengths)
        for (const auto & t : p.tasks)
            for (int i = 0; i < p.samples; ++i) done += out.has(key_of(t, L, i)) ? 1 : 0;
    progress prog("ruler", total, done);
    for (int64_t L : p.lengths) {
        for (const auto & t : p.tasks) {
            bool all_done = true;
            for (int i = 0; i < p.samples; ++i) all_done = all_done && out.has(key_of(t, L, i));
            if (all_done) continue;
            LC_ASSIGN_OR_RETURN(ruler_task task, ruler_task::create(t, w, *env.tok, env.use_chat, L, p.seed));
            LC_LOG_I("eval ruler: %s at %lld tokens: size %lld", t.c_str(), (long long)L, (long long)task.size());
            for (int i = 0; i < p.samples; ++i) {
                const std::string key = key_of(t, L, i);
                if (out.has(key)) continue;
                LC_ASSIGN_OR_RETURN(ruler_sample s, task.sample(i));
                json        rec = {{"key", key},
                                   {"task", t},
                                   {"length", L},
                                   {"sample", i},
                                   {"size", s.size},
                                   {"haystack", s.haystack},
                                   {"prompt_sha256", token_ids_sha256(s.prompt)},
                                   {"n_prompt", int64_t(s.prompt.size())},
                                   {"refs", s.refs},
                                   {"runs", json::array()}};
                std::string summary;
                for (auto & slot : *env.slots) {
                    LC_ASSIGN_OR_RETURN(gen_result g, generate_greedy(*slot.ctx, *env.tok, s.prompt, s.n_gen));
                    const double score = score_all_match(answer_clean(g.text), s.refs);
                    json         run   = method_json(slot);
                    run["density"]     = g.density;
                    run["score"]       = score;
                    run["output"]      = g.text;
                    run["n_gen"]       = int64_t(g.ids.size());
                    run["prefill_s"]   = g.prefill_s;
                    run["decode_s"]    = g.decode_s;
                    run["index_s"]     = g.index_s;
                    rec["runs"].push_back(std::move(run));
                    char b[64];
                    std::snprintf(b, sizeof(b), " %.2f", score);
                    summary += (summary.empty() ? "" : ",") + std::string(" ") + slot.label + b;
                }
                LC_RETURN_IF_ERROR(out.add(std::move(rec)));
                prog.step(key + ":" + summary);
            }
        }
    }
    return status::ok();
}

result<std::vector<ruler_summary_row>> ruler_summary(const json & doc) {
    try {
        // (length, label) -> task -> scores
        std::map<std::pair<int64_t, std::string>, std::map<std::string, std::vector<double>>> acc;
        std::vector<std::string>                                                              labels;
        for (const auto & rec : doc.at("records"))
            for (const auto & run : rec.at("runs")) {
                const std::string lab = run.at("label").get<std::string>();
                if (std::find(labels.begin(), labels.end(), lab) == labels.end()) labels.push_back(lab);
                acc[{rec.at("length").get<int64_t>(), lab}][rec.at("task").get<std::string>()].push_back(
                    run.at("score").get<double>());
            }
        std::vector<ruler_summary_row> rows;
        for (const auto & [k, tasks] : acc) {
            ruler_summary_row r;
            r.length   = k.first;
            r.label    = k.second;
            double sum = 0;
            for (const auto & name : ruler_task_names()) {
                auto it = tasks.find(name);
                if (it == tasks.end()) continue;
                const double s = score_percent(it->second);
                r.task_scores.push_back({name, s});
                sum += s;
                r.n_samples += int(it->second.size());
            }
            r.mean = r.task_scores.empty() ? 0.0 : std::round(sum / double(r.task_scores.size()) * 100.0) / 100.0;
            rows.push_back(std::move(r));
        }
        // Dense first within a length.
        std::stable_sort(rows.begin(), rows.end(), [&](const ruler_summary_row & a, const ruler_summary_row & b) {
            if (a.length != b.length) return a.length < b.length;
            return std::find(labels.begin(), labels.end(), a.label) < std::find(labels.begin(), labels.end(), b.label);
        });
        return rows;
    } catch (const json::exception & e) {
        return error(status_code::INVALID_FILE, "eval: malformed ruler result file: %s", e.what());
    }
}

} // namespace lc::eval
