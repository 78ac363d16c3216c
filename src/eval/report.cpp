// Markdown tables and density plots from eval result files.
#include "eval/report.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>

#include "eval/ppl.h"
#include "eval/ruler.h"
#include "eval/svg.h"

namespace lc::eval {

namespace {
std::string f2(double v, const char * fmt = "%.2f") {
    char b[64];
    std::snprintf(b, sizeof(b), fmt, v);
    return b;
}
std::string base(const std::string & p) {
    return std::filesystem::path(p).filename().string();
}
} // namespace

result<std::vector<report_point>> report_points(const std::vector<report_input> & in) {
    std::vector<report_point> out;
    try {
        for (const auto & f : in) {
            const std::string                   ev = f.doc.at("eval").get<std::string>();
            std::map<std::string, report_point> acc;
            std::vector<std::string>            order;
            std::map<std::string, double>       tok, secs;
            for (const auto & rec : f.doc.at("records")) {
                const int64_t n_tok = rec.contains("n_prompt")       ? rec["n_prompt"].get<int64_t>()
                                      : rec.contains("n_tokens_run") ? rec["n_tokens_run"].get<int64_t>()
                                      : rec.contains("length")       ? rec["length"].get<int64_t>()
                                                                     : 0;
                for (const auto & run : rec.at("runs")) {
                    const std::string lab = run.at("label").get<std::string>();
                    if (!acc.count(lab)) {
                        order.push_back(lab);
                        acc[lab] = report_point{base(f.path), ev, lab, 0.0, 0.0, 0.0, 0};
                    }
                    report_point & p = acc[lab];
                    p.density += run.value("density", 1.0);
                    double s = std::nan("");
                    if (ev == "niah") s = 100.0 * run.at("score").get<double>();
                    if (ev == "ruler") s = 100.0 * run.at("score").get<double>();
                    if (ev == "fidelity") s = 100.0 * (lab == "dense" ? 1.0 : rec.at("top1_agree").get<double>());
                    p.score += s;
                    p.n += 1;
                    tok[lab] += double(n_tok);
                    secs[lab] += run.value("prefill_s", 0.0);
                }
            }
            for (const auto & lab : order) {
                report_point p = acc[lab];
                p.density /= p.n;
                p.score /= p.n;
                p.score = std::round(p.score * 100.0) / 100.0;
                p.speed = secs[lab] > 0 ? tok[lab] / secs[lab] : 0.0;
                out.push_back(p);
            }
        }
    } catch (const json::exception & e) {
        return error(status_code::INVALID_FILE, "eval report: malformed result file: %s", e.what());
    }
    return out;
}

namespace {

// A short model name for tables that mix files: the words of meta.model_name up to the size word ("270m",
// "135M"), e.g. "Gemma 3 270m"; the whole name when none looks like a size; "?" when absent.
std::string short_model(const json & meta) {
    const std::string name = meta.value("model_name", std::string());
    if (name.empty()) return "?";
    std::string out, word;
    auto        is_size = [](const std::string & w) {
        if (w.size() < 2 || !std::isdigit(static_cast<unsigned char>(w[0]))) return false;
        const char c = w.back();
        return c == 'm' || c == 'M' || c == 'b' || c == 'B';
    };
    for (size_t i = 0; i <= name.size(); ++i) {
        if (i < name.size() && name[i] != ' ') {
            word += name[i];
            continue;
        }
        if (word.empty()) continue;
        out += (out.empty() ? "" : " ") + word;
        if (is_size(word)) return out;
        word.clear();
    }
    return name;
}

// Lengths of a file's records as "L" or "L1-L2" ("-" when none).
std::string length_span(const json & doc) {
    int64_t lo = 0, hi = 0;
    for (const auto & r : doc.at("records")) {
        if (!r.contains("length")) continue;
        const int64_t l = r["length"].get<int64_t>();
        lo              = lo == 0 ? l : std::min(lo, l);
        hi              = std::max(hi, l);
    }
    if (hi == 0) return "-";
    return lo == hi ? std::to_string(lo) : std::to_string(lo) + "-" + std::to_string(hi);
}

// One row per (file, setting, method other than dense): the method's score beside dense's on the same prompts.
// niah: needle score (%); ruler: the mean over the tasks run (%) per length; ppl: perplexity per protocol setting;
// fidelity: top-1 agreement with dense (%) and the mean KL, over the decoded tail when the file has one (its
// density column then holds the keys the decode steps attended). Density otherwise: the method's mean over the
// file's records. Rows are grouped by model, then eval (niah, ruler, ppl, fidelity), in file order within.
result<std::string> method_summary(const std::vector<report_input> & in, const std::vector<report_point> & pts) {
    struct row {
        std::string model;
        int         rank = 0;
        std::string text;
    };
    std::vector<row> rows;
    auto             density_of = [&](const std::string & file, const std::string & label) {
        for (const auto & p : pts)
            if (p.file == file && p.label == label) return f2(p.density, "%.3f");
        return std::string("-");
    };
    for (const auto & f : in) {
        const std::string ev    = f.doc.at("eval").get<std::string>();
        const std::string file  = base(f.path);
        const std::string model = short_model(f.doc.at("meta"));
        const std::string head  = "| " + model + " | " + ev + " | ";
        const std::string tail  = " | " + file + " |\n";
        if (ev == "niah") {
            double dense = std::nan("");
            for (const auto & p : pts)
                if (p.file == file && p.label == "dense") dense = p.score;
            for (const auto & p : pts) {
                if (p.file != file || p.label == "dense") continue;
                rows.push_back({model, 0,
                                head + "L=" + length_span(f.doc) + " needle score (%) | " + p.label + " | " +
                                    f2(p.density, "%.3f") + " | " + (std::isnan(dense) ? std::string("-") : f2(dense)) +
                                    " | " + f2(p.score) + " | " +
                                    (std::isnan(dense) ? std::string("-") : f2(p.score - dense, "%+.2f")) + tail});
            }
        } else if (ev == "fidelity") {
            double      kl = 0.0, top1 = 0.0, dkl = 0.0, dtop1 = 0.0, keys = 0.0;
            int         n = 0, n_dec = 0, n_keys = 0;
            std::string label;
            for (const auto & r : f.doc.at("records")) {
                kl += r.at("kl_mean").get<double>();
                top1 += r.at("top1_agree").get<double>();
                ++n;
                if (r.contains("decode_kl_mean")) {
                    dkl += r["decode_kl_mean"].get<double>();
                    dtop1 += r.at("decode_top1_agree").get<double>();
                    ++n_dec;
                }
                for (const auto & run : r.at("runs")) {
                    if (run.at("label").get<std::string>() != "dense") label = run["label"].get<std::string>();
                    if (run.contains("decode_keys")) keys += run["decode_keys"].get<double>(), ++n_keys;
                }
            }
            if (n == 0 || label.empty()) continue;
            const bool   dec = n_dec > 0;
            const double t = 100.0 * (dec ? dtop1 / n_dec : top1 / n), k = dec ? dkl / n_dec : kl / n;
            rows.push_back(
                {model, 3,
                 head + "L=" + length_span(f.doc) +
                     (dec ? " decoded tail: top-1 (%), KL; density = keys attended" : " top-1 agreement (%), KL") +
                     " | " + label + " | " +
                     (dec ? (n_keys ? f2(keys / n_keys, "%.3f") : std::string("-")) : density_of(file, label)) +
                     " | 100.00 | " + f2(t) + " (KL " + f2(k, "%.3g") + ") | " + f2(t - 100.0, "%+.2f") + tail});
        } else if (ev == "ruler") {
            LC_ASSIGN_OR_RETURN(auto rr, ruler_summary(f.doc));
            for (const auto & r : rr) {
                if (r.label == "dense") continue;
                const ruler_summary_row * d = nullptr;
                for (const auto & x : rr)
                    if (x.length == r.length && x.label == "dense") d = &x;
                rows.push_back({model, 1,
                                head + "L=" + std::to_string(r.length) + " RULER mean (%), " +
                                    std::to_string(r.task_scores.size()) + " tasks, " + std::to_string(r.n_samples) +
                                    " samples | " + r.label + " | " + density_of(file, r.label) + " | " +
                                    (d ? f2(d->mean) : std::string("-")) + " | " + f2(r.mean) + " | " +
                                    (d ? f2(r.mean - d->mean, "%+.2f") : std::string("-")) + tail});
            }
        } else if (ev == "ppl") {
            LC_ASSIGN_OR_RETURN(auto pr, ppl_summary(f.doc));
            std::map<std::string, double> dense;
            for (const auto & r : pr)
                if (r.label == "dense") dense[r.group] = r.ppl;
            for (const auto & r : pr) {
                if (r.label == "dense") continue;
                const bool d = dense.count(r.group) > 0;
                rows.push_back({model, 2,
                                head + "PPL " + r.group + " | " + r.label + " | " + density_of(file, r.label) + " | " +
                                    (d ? f2(dense[r.group], "%.4f") : std::string("-")) + " | " + f2(r.ppl, "%.4f") +
                                    " | " + (d ? f2(r.ppl - dense[r.group], "%+.4f") : std::string("-")) + tail});
            }
        }
    }
    if (rows.empty()) return std::string();
    std::stable_sort(rows.begin(), rows.end(), [](const row & a, const row & b) {
        return a.model != b.model ? a.model < b.model : a.rank < b.rank;
    });
    std::string md = "## Summary: each method against dense on the same prompts\n\n"
                     "One row per result file, setting and method. Density: computed / causal query-key pairs in the "
                     "layers the method may touch, the method's mean over the file's records (for a decoded tail: "
                     "the share of keys its decode steps attended). PPL: lower is better.\n\n"
                     "| model | eval | setting | method | density | dense | method | vs dense | file |\n"
                     "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n";
    for (const auto & r : rows) md += r.text;
    return md + "\n";
}

// Decode KL, top-1 and keys attended of a fidelity record with a decoded tail ("-" where absent).
std::string decode_cells(const json & r) {
    double keys = std::nan("");
    for (const auto & run : r.at("runs"))
        if (run.contains("decode_keys")) keys = run["decode_keys"].get<double>();
    return (r.contains("decode_kl_mean") ? f2(r["decode_kl_mean"].get<double>(), "%.4g") : std::string("-")) + " | " +
           (r.contains("decode_top1_agree") ? f2(r["decode_top1_agree"].get<double>(), "%.4f") : std::string("-")) +
           " | " + (std::isnan(keys) ? std::string("-") : f2(keys, "%.3f"));
}

// One row per fidelity file with a decoded tail: the method's decode KL and top-1 averaged over its records, the
// keys its decode steps attended and the share of a full cache's KV bytes it held at the end of a document.
std::string decode_summary(const std::vector<report_input> & in) {
    std::string rows;
    for (const auto & f : in) {
        if (f.doc.at("eval").get<std::string>() != "fidelity") continue;
        double      kl = 0.0, top1 = 0.0, keys = 0.0, kv = 0.0;
        int         n = 0, n_keys = 0, n_kv = 0;
        std::string label;
        int64_t     length = 0;
        for (const auto & r : f.doc.at("records")) {
            if (!r.contains("decode_kl_mean")) continue;
            kl += r["decode_kl_mean"].get<double>();
            top1 += r["decode_top1_agree"].get<double>();
            length = r.at("length").get<int64_t>();
            ++n;
            for (const auto & run : r.at("runs")) {
                if (run.at("label").get<std::string>() != "dense") label = run["label"].get<std::string>();
                if (run.contains("decode_keys")) keys += run["decode_keys"].get<double>(), ++n_keys;
                if (run.at("label").get<std::string>() != "dense" && run.contains("kv_bytes") &&
                    run.value("kv_bytes_full", 0.0) > 0) {
                    kv += run["kv_bytes"].get<double>() / run["kv_bytes_full"].get<double>();
                    ++n_kv;
                }
            }
        }
        if (n == 0) continue;
        rows += "| " + short_model(f.doc.at("meta")) + " | " + label + " | " + std::to_string(length) + " | " +
                std::to_string(n) + " | " + (n_keys ? f2(keys / n_keys, "%.3f") : std::string("-")) + " | " +
                (n_kv ? f2(kv / n_kv, "%.3f") : std::string("-")) + " | " + f2(kl / n, "%.4g") + " | " +
                f2(100.0 * top1 / n, "%.2f") + " |\n";
    }
    if (rows.empty()) return "";
    return "## Decode fidelity (teacher-forced tail, against dense)\n\n"
           "| model | method | length | docs | keys attended | KV held | decode KL | decode top-1 (%) |\n"
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n" +
           rows + "\n";
}

// Recall, worst layer's recall, relative error and worst layer's error of a fidelity record ("-" where absent).
std::string layer_cells(const json & r) {
    if (!r.contains("attn_recall_mean")) return "- | - | - | -";
    const json & rw = r.at("attn_recall_worst");
    const json & ew = r.at("attn_rel_err_worst");
    return f2(r["attn_recall_mean"].get<double>(), "%.4f") + " | " + f2(rw.at("value").get<double>(), "%.4f") + " (L" +
           std::to_string(rw.at("layer").get<int>()) + ") | " + f2(r["attn_rel_err_mean"].get<double>(), "%.3g") +
           " | " + f2(ew.at("value").get<double>(), "%.3g") + " (L" + std::to_string(ew.at("layer").get<int>()) + ")";
}

// Per-layer recall and relative error of a fidelity file, averaged over its records that have them ("" when
// none does).
std::string layer_table(const json & doc) {
    struct acc {
        double rc = 0, rc_min = 0, err = 0, dec = 0, dec_rc = 0;
        int    n = 0, n_dec = 0, n_dec_rc = 0;
    };
    std::map<int, acc> by_layer;
    int                n_rec = 0, sample = 0;
    for (const auto & r : doc.at("records")) {
        if (!r.contains("layers")) continue;
        ++n_rec;
        sample = r.value("layer_sample", 0);
        for (const auto & e : r["layers"]) {
            acc & a = by_layer[e.at("layer").get<int>()];
            if (e.contains("recall_mean")) {
                a.rc += e["recall_mean"].get<double>();
                a.rc_min += e.at("recall_min").get<double>();
                a.err += e.at("rel_err").get<double>();
                ++a.n;
            }
            if (e.contains("decode_rel_err")) a.dec += e["decode_rel_err"].get<double>(), ++a.n_dec;
            if (e.contains("decode_recall")) a.dec_rc += e["decode_recall"].get<double>(), ++a.n_dec_rc;
        }
    }
    if (by_layer.empty()) return "";
    bool dec = false;
    for (const auto & [il, a] : by_layer) dec = dec || a.n_dec > 0;
    std::string md = "\nPer layer (layers without a window; means over " + std::to_string(n_rec) + " records; 1 in " +
                     std::to_string(sample) +
                     " 64-query blocks measured): attention-mass recall of the plan, its lowest (head, block) "
                     "mean, and ||o - o_dense|| / ||o_dense|| given the same layer inputs.\n\n";
    md += dec ? "| layer | recall | min recall | rel err | decode recall | decode rel err |\n| ---: | ---: | ---: | "
                "---: | "
                "---: | ---: |\n"
              : "| layer | recall | min recall | rel err |\n| ---: | ---: | ---: | ---: |\n";
    for (const auto & [il, a] : by_layer) {
        md += "| " + std::to_string(il) + " | " +
              (a.n ? f2(a.rc / a.n, "%.4f") + " | " + f2(a.rc_min / a.n, "%.4f") + " | " + f2(a.err / a.n, "%.3g")
                   : std::string("- | - | -")) +
              " |";
        if (dec)
            md += " " + (a.n_dec_rc ? f2(a.dec_rc / a.n_dec_rc, "%.4f") : std::string("-")) + " | " +
                  (a.n_dec ? f2(a.dec / a.n_dec, "%.3g") : std::string("-")) + " |";
        md += "\n";
    }
    return md;
}

} // namespace

result<std::string> report_markdown(const std::vector<report_input> & in) {
    LC_ASSIGN_OR_RETURN(std::vector<report_point> pts, report_points(in));
    std::string md = "# longctx eval report\n\n";
    try {
        LC_ASSIGN_OR_RETURN(std::string summary, method_summary(in, pts));
        md += summary;
        md += decode_summary(in);
        for (const auto & f : in) {
            const std::string ev   = f.doc.at("eval").get<std::string>();
            const json &      meta = f.doc.at("meta");
            md += "## " + base(f.path) + " (" + meta.value("task", ev) + ")\n\n";
            md += "Model: " + meta.value("model_name", std::string("?")) + " (" +
                  meta.value("weights", std::string("")) + ", sha256 " +
                  meta.value("model_sha256", std::string("?")).substr(0, 12) + "), build " +
                  meta.value("build", std::string("?")) + ", " + std::to_string(f.doc["records"].size()) + " records";
            if (meta.contains("template")) md += ", template " + meta["template"].get<std::string>();
            if (meta.contains("haystack")) md += ", haystack " + meta["haystack"].get<std::string>().substr(0, 40);
            if (meta.contains("corpus")) md += ", corpus " + meta["corpus"].get<std::string>().substr(0, 40);
            md += ".\n\n";
            if (ev == "niah" || ev == "fidelity") {
                const char * what = ev == "niah" ? "score (%)" : "top-1 agreement (%)";
                md += std::string("| method | density | ") + what + " | vs dense | prefill tok/s | runs |\n";
                md += "| --- | ---: | ---: | ---: | ---: | ---: |\n";
                double dense_score = std::nan("");
                for (const auto & p : pts)
                    if (p.file == base(f.path) && p.label == "dense") dense_score = p.score;
                for (const auto & p : pts) {
                    if (p.file != base(f.path)) continue;
                    md += "| " + p.label + " | " + f2(p.density, "%.3f") + " | " + f2(p.score) + " | " +
                          (std::isnan(dense_score) ? "-" : f2(p.score - dense_score, "%+.2f")) + " | " +
                          f2(p.speed, "%.0f") + " | " + std::to_string(p.n) + " |\n";
                }
                if (ev == "fidelity") {
                    bool tail = false, layers = false;
                    for (const auto & r : f.doc["records"]) {
                        tail   = tail || r.contains("decode_kl_mean");
                        layers = layers || r.contains("attn_recall_mean");
                    }
                    md += "\n| length | doc | KL mean | KL max | top-1 |";
                    if (layers) md += " recall | worst recall | rel err | worst rel err |";
                    if (tail) md += " decode KL | decode top-1 | decode keys |";
                    md += "\n| ---: | ---: | ---: | ---: | ---: |";
                    if (layers) md += " ---: | ---: | ---: | ---: |";
                    if (tail) md += " ---: | ---: | ---: |";
                    md += "\n";
                    for (const auto & r : f.doc["records"]) {
                        md += "| " + std::to_string(r.at("length").get<int64_t>()) + " | " +
                              std::to_string(r.at("doc").get<int>()) + " | " +
                              f2(r.at("kl_mean").get<double>(), "%.4g") + " | " +
                              f2(r.at("kl_max").get<double>(), "%.4g") + " | " +
                              f2(r.at("top1_agree").get<double>(), "%.4f") + " |";
                        if (layers) md += " " + layer_cells(r) + " |";
                        if (tail) md += " " + decode_cells(r) + " |";
                        md += "\n";
                    }
                    if (layers)
                        md += "\nrecall, rel err: means over layers without a window; worst: the layer with the "
                              "lowest recall / highest error (L = layer index).\n" +
                              layer_table(f.doc);
                }
            } else if (ev == "ruler") {
                LC_ASSIGN_OR_RETURN(auto rows, ruler_summary(f.doc));
                std::vector<std::string> tasks;
                for (const auto & r : rows)
                    for (const auto & [t, s] : r.task_scores)
                        if (std::find(tasks.begin(), tasks.end(), t) == tasks.end()) tasks.push_back(t);
                md += "| length | method | mean |";
                for (const auto & t : tasks) md += " " + t + " |";
                md += "\n| ---: | --- | ---: |";
                for (size_t i = 0; i < tasks.size(); ++i) md += " ---: |";
                md += "\n";
                for (const auto & r : rows) {
                    md += "| " + std::to_string(r.length) + " | " + r.label + " | " + f2(r.mean) + " |";
                    for (const auto & t : tasks) {
                        std::string v = "-";
                        for (const auto & [tt, s] : r.task_scores)
                            if (tt == t) v = f2(s, "%.1f");
                        md += " " + v + " |";
                    }
                    md += "\n";
                }
                md += "\nMeans are over the tasks run (" + std::to_string(tasks.size()) +
                      " of RULER's 13; qa_1 and qa_2 need data sets the project does not hold).\n";
            } else if (ev == "ppl") {
                LC_ASSIGN_OR_RETURN(auto rows, ppl_summary(f.doc));
                md += "| setting | method | tokens | ppl | vs dense |\n| --- | --- | ---: | ---: | ---: |\n";
                std::map<std::string, double> dense;
                for (const auto & r : rows)
                    if (r.label == "dense") dense[r.group] = r.ppl;
                for (const auto & r : rows)
                    md += "| " + r.group + " | " + r.label + " | " + std::to_string(r.n_scored) + " | " +
                          f2(r.ppl, "%.4f") + " | " +
                          (dense.count(r.group) ? f2(r.ppl - dense[r.group], "%+.4f") : std::string("-")) + " |\n";
                md += "\nMicro averages (all scored tokens pooled).\n";
            } else {
                md += "(unknown eval '" + ev + "')\n";
            }
            md += "\n";
        }
    } catch (const json::exception & e) {
        return error(status_code::INVALID_FILE, "eval report: malformed result file: %s", e.what());
    }
    return md;
}

namespace {
std::string density_chart(const std::vector<report_point> & pts, bool speed) {
    std::vector<chart_series>     series;
    std::map<std::string, size_t> at;
    for (const auto & p : pts) {
        const double y = speed ? p.speed : p.score;
        if (std::isnan(y)) continue;
        const std::string name = p.file;
        if (!at.count(name)) {
            at[name] = series.size();
            series.push_back({name, {}, {}, false});
        }
        series[at[name]].x.push_back(p.density);
        series[at[name]].y.push_back(y);
    }
    return svg_chart(speed ? "prefill speed versus attention density" : "accuracy versus attention density",
                     "density (computed / causal query-key pairs)", speed ? "prefill tokens per second" : "score (%)",
                     series);
}
} // namespace

std::string report_accuracy_svg(const std::vector<report_point> & pts) {
    return density_chart(pts, false);
}

std::string report_speed_svg(const std::vector<report_point> & pts) {
    return density_chart(pts, true);
}

} // namespace lc::eval
