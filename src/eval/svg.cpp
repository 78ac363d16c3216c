// SVG heatmaps and charts for eval results.
#include "eval/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace lc::eval {

namespace {
std::string fmt(const char * f, double v) {
    char b[64];
    std::snprintf(b, sizeof(b), f, v);
    return b;
}
std::string num(double v) {
    return fmt("%.1f", v);
}
std::string text_el(double x, double y, const std::string & s, const char * anchor = "middle", int size = 12,
                    const char * extra = "") {
    return "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" font-size=\"" + std::to_string(size) + "\" text-anchor=\"" +
           anchor + "\" " + extra + ">" + xml_escape(s) + "</text>\n";
}
std::string header(double w, double h) {
    return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(w) +
           "\" height=\"" + num(h) + "\" viewBox=\"0 0 " + num(w) + " " + num(h) +
           "\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n<rect width=\"100%\" height=\"100%\" "
           "fill=\"white\"/>\n";
}
// A tick step of 1, 2 or 5 times a power of ten giving about n ticks over span.
double nice_step(double span, int n) {
    if (!(span > 0)) return 1.0;
    const double raw = span / n, p = std::pow(10.0, std::floor(std::log10(raw)));
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (m * p >= raw) return m * p;
    return 10 * p;
}
std::string tick_label(double v) {
    if (std::fabs(v) >= 1000 && std::fabs(v - std::round(v)) < 1e-9) return fmt("%.0f", v);
    std::string s = fmt("%.4g", v);
    return s;
}
} // namespace

std::string xml_escape(const std::string & s) {
    std::string o;
    for (char c : s) {
        switch (c) {
        case '<':
            o += "&lt;";
            break;
        case '>':
            o += "&gt;";
            break;
        case '&':
            o += "&amp;";
            break;
        case '"':
            o += "&quot;";
            break;
        default:
            if ((unsigned char)c >= 0x20 || c == '\n' || c == '\t') o += c;
        }
    }
    return o;
}

std::string score_colour(double v) {
    if (std::isnan(v)) return "#d9d9d9";
    v                 = std::clamp(v, 0.0, 1.0);
    const int    a[3] = {0xF0, 0x49, 0x6E}, m[3] = {0xEB, 0xB8, 0x39}, b[3] = {0x0C, 0xD7, 0x9F};
    const int *  lo = v < 0.5 ? a : m, *hi = v < 0.5 ? m : b;
    const double t = v < 0.5 ? v / 0.5 : (v - 0.5) / 0.5;
    char         out[8];
    std::snprintf(out, sizeof(out), "#%02X%02X%02X", int(std::lround(lo[0] + t * (hi[0] - lo[0]))),
                  int(std::lround(lo[1] + t * (hi[1] - lo[1]))), int(std::lround(lo[2] + t * (hi[2] - lo[2]))));
    return out;
}

std::string svg_heatmaps(const std::string & title, const std::vector<heatmap_panel> & panels,
                         const std::string & x_title, const std::string & y_title) {
    const double cell_w = 44, cell_h = 22, left = 70, top = 60, gap = 60, bar_w = 90;
    size_t       max_cols = 1, max_rows = 1;
    for (const auto & p : panels) {
        max_cols = std::max(max_cols, p.x_labels.size());
        max_rows = std::max(max_rows, p.y_labels.size());
    }
    const double panel_w = cell_w * double(max_cols), panel_h = cell_h * double(max_rows);
    const double w = left + double(panels.size()) * (panel_w + gap) + bar_w;
    const double h = top + panel_h + 70;
    std::string  s = header(w, h);
    s += text_el(w / 2, 24, title, "middle", 16, "font-weight=\"bold\"");
    for (size_t pi = 0; pi < panels.size(); ++pi) {
        const auto & p  = panels[pi];
        const double x0 = left + double(pi) * (panel_w + gap);
        s += text_el(x0 + panel_w / 2, top - 12, p.title, "middle", 12);
        for (size_t r = 0; r < p.y_labels.size(); ++r) {
            for (size_t c = 0; c < p.x_labels.size(); ++c) {
                const double v = r < p.cells.size() && c < p.cells[r].size() ? p.cells[r][c]
                                                                             : std::numeric_limits<double>::quiet_NaN();
                const double x = x0 + double(c) * cell_w, y = top + double(r) * cell_h;
                s += "<rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(cell_w) + "\" height=\"" +
                     num(cell_h) + "\" fill=\"" + score_colour(v) + "\" stroke=\"white\" stroke-width=\"1\">";
                s += "<title>" +
                     xml_escape(p.y_labels[r] + "% @ " + p.x_labels[c] + ": " +
                                (std::isnan(v) ? std::string("no data") : fmt("%.2f", v))) +
                     "</title></rect>\n";
            }
            s += text_el(x0 - 6, top + (double(r) + 0.7) * cell_h, p.y_labels[r], "end", 10);
        }
        for (size_t c = 0; c < p.x_labels.size(); ++c) {
            const double x = x0 + (double(c) + 0.5) * cell_w, y = top + panel_h + 14;
            s += text_el(x, y, p.x_labels[c], "middle", 10);
        }
        s += text_el(x0 + panel_w / 2, top + panel_h + 36, x_title, "middle", 12);
        if (pi == 0) {
            const std::string tr = "transform=\"rotate(-90 " + num(16) + " " + num(top + panel_h / 2) + ")\"";
            s += text_el(16, top + panel_h / 2, y_title, "middle", 12, tr.c_str());
        }
    }
    // Colour bar.
    const double bx = w - bar_w + 20, bh = panel_h;
    for (int i = 0; i < 20; ++i) {
        const double v = 1.0 - (double(i) + 0.5) / 20.0;
        s += "<rect x=\"" + num(bx) + "\" y=\"" + num(top + bh * i / 20.0) + "\" width=\"16\" height=\"" +
             num(bh / 20.0 + 0.5) + "\" fill=\"" + score_colour(v) + "\"/>\n";
    }
    s += text_el(bx + 22, top + 8, "1.0", "start", 10);
    s += text_el(bx + 22, top + bh / 2 + 4, "0.5", "start", 10);
    s += text_el(bx + 22, top + bh, "0.0", "start", 10);
    s += "</svg>\n";
    return s;
}

std::string svg_chart(const std::string & title, const std::string & x_title, const std::string & y_title,
                      const std::vector<chart_series> & series) {
    const double w = 640, h = 400, l = 70, r = 170, t = 40, b = 50;
    double       x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
    for (const auto & se : series)
        for (size_t i = 0; i < std::min(se.x.size(), se.y.size()); ++i) {
            if (!std::isfinite(se.x[i]) || !std::isfinite(se.y[i])) continue;
            x_lo = std::min(x_lo, se.x[i]);
            x_hi = std::max(x_hi, se.x[i]);
            y_lo = std::min(y_lo, se.y[i]);
            y_hi = std::max(y_hi, se.y[i]);
        }
    if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
    if (x_lo >= 0) x_lo = 0;
    if (y_lo >= 0) y_lo = 0;
    if (x_hi <= x_lo) x_hi = x_lo + 1;
    if (y_hi <= y_lo) y_hi = y_lo + 1;
    const double xs = nice_step(x_hi - x_lo, 6), ys = nice_step(y_hi - y_lo, 6);
    x_hi            = std::ceil(x_hi / xs) * xs;
    y_hi            = std::ceil(y_hi / ys) * ys;
    const double pw = w - l - r, ph = h - t - b;
    auto         px = [&](double x) { return l + (x - x_lo) / (x_hi - x_lo) * pw; };
    auto         py = [&](double y) { return t + ph - (y - y_lo) / (y_hi - y_lo) * ph; };
    std::string  s  = header(w, h);
    s += text_el(w / 2, 22, title, "middle", 14, "font-weight=\"bold\"");
    for (double v = x_lo; v <= x_hi + xs * 1e-6; v += xs) {
        s += "<line x1=\"" + num(px(v)) + "\" y1=\"" + num(t) + "\" x2=\"" + num(px(v)) + "\" y2=\"" + num(t + ph) +
             "\" stroke=\"#eeeeee\"/>\n";
        s += text_el(px(v), t + ph + 16, tick_label(v), "middle", 10);
    }
    for (double v = y_lo; v <= y_hi + ys * 1e-6; v += ys) {
        s += "<line x1=\"" + num(l) + "\" y1=\"" + num(py(v)) + "\" x2=\"" + num(l + pw) + "\" y2=\"" + num(py(v)) +
             "\" stroke=\"#eeeeee\"/>\n";
        s += text_el(l - 6, py(v) + 4, tick_label(v), "end", 10);
    }
    s += "<rect x=\"" + num(l) + "\" y=\"" + num(t) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) +
         "\" fill=\"none\" stroke=\"#333333\"/>\n";
    s += text_el(l + pw / 2, h - 12, x_title, "middle", 12);
    const std::string tr = "transform=\"rotate(-90 16 " + num(t + ph / 2) + ")\"";
    s += text_el(16, t + ph / 2, y_title, "middle", 12, tr.c_str());
    static const char * colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"};
    for (size_t si = 0; si < series.size(); ++si) {
        const auto &                           se = series[si];
        const char *                           c  = colours[si % 7];
        std::vector<std::pair<double, double>> pts;
        for (size_t i = 0; i < std::min(se.x.size(), se.y.size()); ++i)
            if (std::isfinite(se.x[i]) && std::isfinite(se.y[i])) pts.push_back({se.x[i], se.y[i]});
        std::sort(pts.begin(), pts.end());
        if (se.lines && pts.size() > 1) {
            std::string d;
            for (const auto & [x, y] : pts) d += (d.empty() ? "" : " ") + num(px(x)) + "," + num(py(y));
            s += std::string("<polyline fill=\"none\" stroke=\"") + c + "\" stroke-width=\"1.5\" points=\"" + d +
                 "\"/>\n";
        }
        for (const auto & [x, y] : pts)
            s += "<circle cx=\"" + num(px(x)) + "\" cy=\"" + num(py(y)) + "\" r=\"3.5\" fill=\"" + c + "\"><title>" +
                 xml_escape(se.name + ": " + tick_label(x) + ", " + tick_label(y)) + "</title></circle>\n";
        const double ly = t + 10 + double(si) * 18;
        s += "<rect x=\"" + num(l + pw + 12) + "\" y=\"" + num(ly - 8) + "\" width=\"10\" height=\"10\" fill=\"" + c +
             "\"/>\n";
        s += text_el(l + pw + 28, ly + 1, se.name, "start", 10);
    }
    s += "</svg>\n";
    return s;
}

} // namespace lc::eval
