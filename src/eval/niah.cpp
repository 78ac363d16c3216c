// Needle-in-a-haystack cells (classic, numeric, passkey), their scoring, the grid runner and the heatmap.
#include "eval/niah.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/log.h"
#include "eval/svg.h"

namespace lc::eval {

namespace {

// About 100 world cities for the numeric needle (fixed list; index drawn per cell).
const char * const k_cities[] = {
    "Tokyo",
    "Delhi",
    "Shanghai",
    "Sao Paulo",
    "Mexico City",
    "Cairo",
    "Mumbai",
    "Beijing",
    "Dhaka",
    "Osaka",
    "New York",
    "Karachi",
    "Buenos Aires",
    "Chongqing",
    "Istanbul",
    "Kolkata",
    "Manila",
    "Lagos",
    "Rio de Janeiro",
    "Tianjin",
    "Kinshasa",
    "Guangzhou",
    "Los Angeles",
    "Moscow",
    "Shenzhen",
    "Lahore",
    "Bangalore",
    "Paris",
    "Bogota",
    "Jakarta",
    "Chennai",
    "Lima",
    "Bangkok",
    "Seoul",
    "Nagoya",
    "Hyderabad",
    "London",
    "Tehran",
    "Chicago",
    "Chengdu",
    "Nanjing",
    "Wuhan",
    "Ho Chi Minh City",
    "Luanda",
    "Ahmedabad",
    "Kuala Lumpur",
    "Hong Kong",
    "Dongguan",
    "Hangzhou",
    "Foshan",
    "Riyadh",
    "Baghdad",
    "Santiago",
    "Surat",
    "Madrid",
    "Suzhou",
    "Pune",
    "Harbin",
    "Houston",
    "Dallas",
    "Toronto",
    "Dar es Salaam",
    "Miami",
    "Belo Horizonte",
    "Singapore",
    "Philadelphia",
    "Atlanta",
    "Fukuoka",
    "Khartoum",
    "Barcelona",
    "Johannesburg",
    "Saint Petersburg",
    "Qingdao",
    "Dalian",
    "Washington",
    "Yangon",
    "Alexandria",
    "Jinan",
    "Guadalajara",
    "Nairobi",
    "Sydney",
    "Melbourne",
    "Berlin",
    "Rome",
    "Athens",
    "Lisbon",
    "Vienna",
    "Prague",
    "Warsaw",
    "Budapest",
    "Stockholm",
    "Oslo",
    "Copenhagen",
    "Helsinki",
    "Dublin",
    "Amsterdam",
    "Brussels",
    "Zurich",
    "Vancouver",
    "Montreal",
};
constexpr size_t k_n_cities = sizeof(k_cities) / sizeof(k_cities[0]);

// Secret ingredients of the multi-needle variant (our own list; k of them drawn per cell).
const char * const k_ingredients[] = {"figs",        "prosciutto", "smoked bacon", "lemons",     "goat cheese",
                                      "truffle oil", "anchovies",  "wild honey",   "pistachios", "pickled ginger"};
constexpr size_t   k_n_ingredients = sizeof(k_ingredients) / sizeof(k_ingredients[0]);

const char * const k_classic_needle =
    "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.";

std::string fmt_depth(double d) {
    char b[32];
    std::snprintf(b, sizeof(b), "%g", d);
    return b;
}

} // namespace

std::string niah_cell_key(int64_t length, double depth, int round) {
    return "L=" + std::to_string(length) + ",d=" + fmt_depth(depth) + ",r=" + std::to_string(round);
}

const char * niah_kind_name(niah_kind k) {
    switch (k) {
    case niah_kind::CLASSIC:
        return "classic";
    case niah_kind::NUMERIC:
        return "numeric";
    case niah_kind::PASSKEY:
        return "passkey";
    case niah_kind::MULTI:
        return "multi";
    }
    return "?";
}

result<niah_kind> niah_kind_parse(const std::string & s) {
    if (s == "classic") return niah_kind::CLASSIC;
    if (s == "numeric") return niah_kind::NUMERIC;
    if (s == "passkey") return niah_kind::PASSKEY;
    if (s == "multi") return niah_kind::MULTI;
    return error(status_code::INVALID_ARGUMENT, "--needle '%s' is not one of classic, numeric, passkey, multi",
                 s.c_str());
}

const char * niah_template_version(niah_kind k) {
    switch (k) {
    case niah_kind::CLASSIC:
        return "niah-classic-v1";
    case niah_kind::NUMERIC:
        return "niah-numeric-v1";
    case niah_kind::PASSKEY:
        return "niah-passkey-v1";
    case niah_kind::MULTI:
        return "niah-multi-v1";
    }
    return "?";
}

int niah_default_n_gen(niah_kind k) {
    switch (k) {
    case niah_kind::CLASSIC:
        return 48;
    case niah_kind::NUMERIC:
        return 32;
    case niah_kind::PASSKEY:
        return 16;
    case niah_kind::MULTI:
        return 64;
    }
    return 32;
}

result<niah_cell> niah_cell_build(const niah_params & p, const haystack & h, const tokenizer & tok, bool use_chat,
                                  int64_t length, double depth, int round) {
    niah_cell c;
    c.length = length;
    c.depth  = depth;
    c.round  = round;
    c.key    = niah_cell_key(length, depth, round);
    c.seed   = seed_combine(seed_combine(p.seed, uint64_t(p.kind)),
                            seed_combine(uint64_t(length), seed_combine(uint64_t(std::llround(depth * 1000)), round)));
    rng r(c.seed);

    prompt_template t;
    // Base models (no chat template) get the answer cue; both then get the start of the answer sentence.
    const std::string cue = use_chat ? "" : "\n\nAnswer: ";
    switch (p.kind) {
    case niah_kind::CLASSIC:
        c.needle = k_classic_needle;
        c.refs   = {"sandwich", "Dolores Park"};
        c.answer = "sandwich; Dolores Park";
        t.before = "Read the document below, then answer the question after it. Keep the answer short and "
                   "direct.\n\nDocument:\n";
        t.after  = "\n\nQuestion: What is the best thing to do in San Francisco? Do not give information that is "
                   "not in the document.";
        t.answer_prefix = cue + "The best thing to do in San Francisco is";
        break;
    case niah_kind::NUMERIC: {
        const std::string city = k_cities[r.below(k_n_cities)];
        const int64_t     n    = r.range(1000000, 9999999);
        c.answer               = std::to_string(n);
        c.refs                 = {c.answer};
        c.needle               = "The special magic number for " + city + " is: " + c.answer + ".";
        t.before = "Some important information is hidden in the text below; most of the text is irrelevant. Answer "
                   "the question using the text only.\n\nText:\n";
        t.after  = "\n\nQuestion: What is the special magic number for " + city +
                  "? Keep the answer short: give the number only.";
        t.answer_prefix = cue + "The special magic number for " + city + " is";
        break;
    }
    case niah_kind::MULTI: {
        std::vector<std::string> pool(k_ingredients, k_ingredients + k_n_ingredients);
        r.shuffle(pool);
        const int k = std::clamp(p.n_needles, 1, int(k_n_ingredients));
        c.refs.assign(pool.begin(), pool.begin() + k);
        for (const auto & x : c.refs) c.answer += (c.answer.empty() ? "" : "; ") + x;
        c.needle = "One of the secret ingredients of the perfect pizza is " + c.refs[0] + ".";
        t.before = "Read the document below, then answer the question after it. Keep the answer short and "
                   "direct.\n\nDocument:\n";
        t.after  = "\n\nQuestion: What are the secret ingredients of the perfect pizza? Name all of them that the "
                   "document mentions.";
        t.answer_prefix = cue + "The secret ingredients of the perfect pizza are";
        break;
    }
    case niah_kind::PASSKEY: {
        const int64_t k = r.range(10000, 99999);
        c.answer        = std::to_string(k);
        c.refs          = {c.answer};
        c.needle        = "The pass key is " + c.answer + ". Remember it. " + c.answer + " is the pass key.";
        t.before        = "There is an important piece of information hidden inside a lot of irrelevant text. Find "
                          "it and memorize it; you will be asked about it.\n\n";
        t.after         = "\n\nWhat is the pass key?";
        t.answer_prefix = cue + "The pass key is";
        break;
    }
    }
    // Round 0 starts the haystack at its first unit (the reference protocol); later rounds at a seeded unit.
    const size_t         first = round == 0 ? 0 : size_t(rng(seed_combine(p.seed, uint64_t(round))).below(h.n_units()));
    auto                 stop  = [&tok](int32_t id) { return token_is_full_stop(tok, id); };
    std::vector<int32_t> ctx_ids;
    if (p.kind == niah_kind::MULTI) {
        // Needle i at depth d + i * (100 - d) / k of the growing list (EVAL_TASKS.md 1.2).
        std::vector<std::vector<int32_t>> ids;
        std::vector<double>               ds;
        const double                      k = double(c.refs.size());
        for (size_t i = 0; i < c.refs.size(); ++i) {
            ids.push_back(
                encode_plain(tok, "\nOne of the secret ingredients of the perfect pizza is " + c.refs[i] + ".\n"));
            ds.push_back(depth + double(i) * (100.0 - depth) / k);
        }
        std::vector<int64_t> pos;
        ctx_ids      = haystack_with_needles(h, first, length, p.reserve, ids, ds, stop, &pos);
        c.needle_pos = pos.empty() ? 0 : pos[0];
    } else {
        const std::vector<int32_t> needle_ids = encode_plain(tok, "\n" + c.needle + "\n");
        ctx_ids = haystack_with_needle(h, first, length, p.reserve, needle_ids, depth, stop, &c.needle_pos);
    }
    c.n_context = int64_t(ctx_ids.size());
    LC_ASSIGN_OR_RETURN(c.prompt, prompt_build(tok, use_chat, t, ctx_ids));
    return c;
}

double niah_score(niah_kind k, const std::vector<std::string> & refs, std::string_view output) {
    const std::string clean = answer_clean(output);
    switch (k) {
    case niah_kind::CLASSIC:
        return score_all_match(clean, refs) == 1.0 ? 1.0 : 0.0;
    case niah_kind::NUMERIC:
        return score_any_match(clean, refs);
    case niah_kind::PASSKEY:
        return !refs.empty() && first_digit_run(clean) == refs[0] ? 1.0 : 0.0;
    case niah_kind::MULTI:
        return score_all_match(clean, refs);
    }
    return 0.0;
}

status niah_run(const niah_params & p, const haystack & h, eval_env & env, result_file & out) {
    const int     n_gen = p.n_gen > 0 ? p.n_gen : niah_default_n_gen(p.kind);
    const int64_t total = int64_t(p.lengths.size() * p.depths.size()) * p.rounds;
    int64_t       done  = 0;
    for (int64_t L : p.lengths)
        for (double d : p.depths)
            for (int r = 0; r < p.rounds; ++r)
                if (out.has(niah_cell_key(L, d, r))) ++done;
    if (done > 0)
        LC_LOG_I("eval niah: resuming %s: %lld of %lld cells already done", out.path().c_str(), (long long)done,
                 (long long)total);
    progress prog("niah", total, done);
    for (int64_t L : p.lengths) {
        for (double d : p.depths) {
            for (int r = 0; r < p.rounds; ++r) {
                if (out.has(niah_cell_key(L, d, r))) continue;
                LC_ASSIGN_OR_RETURN(niah_cell c, niah_cell_build(p, h, *env.tok, env.use_chat, L, d, r));
                json        rec = {{"key", c.key},
                                   {"task", std::string("niah-") + niah_kind_name(p.kind)},
                                   {"length", L},
                                   {"depth", d},
                                   {"round", r},
                                   {"seed", c.seed},
                                   {"prompt_sha256", token_ids_sha256(c.prompt)},
                                   {"n_prompt", int64_t(c.prompt.size())},
                                   {"n_context", c.n_context},
                                   {"needle_pos", c.needle_pos},
                                   {"answer", c.answer},
                                   {"runs", json::array()}};
                std::string summary;
                for (auto & s : *env.slots) {
                    LC_ASSIGN_OR_RETURN(gen_result g, generate_greedy(*s.ctx, *env.tok, c.prompt, n_gen));
                    const double score = niah_score(p.kind, c.refs, g.text);
                    json         run   = method_json(s);
                    run["density"]     = g.density;
                    run["score"]       = score;
                    run["output"]      = g.text;
                    run["n_gen"]       = int64_t(g.ids.size());
                    run["prefill_s"]   = g.prefill_s;
                    run["decode_s"]    = g.decode_s;
                    run["index_s"]     = g.index_s;
                    rec["runs"].push_back(std::move(run));
                    summary += (summary.empty() ? "" : ", ") + s.label + " " + (score > 0 ? "ok" : "miss");
                }
                LC_RETURN_IF_ERROR(out.add(std::move(rec)));
                prog.step(c.key + ": " + summary);
            }
        }
    }
    return status::ok();
}

result<std::string> niah_heatmap_svg(const json & doc) {
    try {
        std::vector<std::string>                                                            labels;
        std::vector<int64_t>                                                                lengths;
        std::vector<double>                                                                 depths;
        std::map<std::string, std::map<std::pair<int64_t, double>, std::pair<double, int>>> acc;
        std::string                                                                         task;
        for (const auto & rec : doc.at("records")) {
            const int64_t L = rec.at("length").get<int64_t>();
            const double  d = rec.at("depth").get<double>();
            task            = rec.value("task", std::string("niah"));
            if (std::find(lengths.begin(), lengths.end(), L) == lengths.end()) lengths.push_back(L);
            if (std::find(depths.begin(), depths.end(), d) == depths.end()) depths.push_back(d);
            for (const auto & run : rec.at("runs")) {
                const std::string lab = run.at("label").get<std::string>();
                if (std::find(labels.begin(), labels.end(), lab) == labels.end()) labels.push_back(lab);
                auto & a = acc[lab][{L, d}];
                a.first += run.at("score").get<double>();
                a.second += 1;
            }
        }
        std::sort(lengths.begin(), lengths.end());
        std::sort(depths.begin(), depths.end());
        std::vector<heatmap_panel> panels;
        for (const auto & lab : labels) {
            heatmap_panel pn;
            for (int64_t L : lengths) pn.x_labels.push_back(std::to_string(L));
            for (double d : depths) pn.y_labels.push_back(fmt_depth(d));
            double sum = 0;
            int    n   = 0;
            for (double d : depths) {
                std::vector<double> row;
                for (int64_t L : lengths) {
                    auto it = acc[lab].find({L, d});
                    if (it == acc[lab].end()) {
                        row.push_back(std::nan(""));
                    } else {
                        const double v = it->second.first / it->second.second;
                        row.push_back(v);
                        sum += v;
                        ++n;
                    }
                }
                pn.cells.push_back(std::move(row));
            }
            char b[64];
            std::snprintf(b, sizeof(b), " (mean %.2f)", n > 0 ? sum / n : 0.0);
            pn.title = lab + b;
            panels.push_back(std::move(pn));
        }
        const json &      meta  = doc.at("meta");
        const std::string title = task + ": " + meta.value("model_name", std::string("model"));
        return svg_heatmaps(title, panels, "context length (tokens)", "needle depth (%)");
    } catch (const json::exception & e) {
        return error(status_code::INVALID_FILE, "eval: malformed niah result file: %s", e.what());
    }
}

} // namespace lc::eval
