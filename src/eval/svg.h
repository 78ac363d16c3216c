// Minimal SVG writing for eval plots: heatmap panels in the style of the needle plots (red -> yellow -> green) and
// line/scatter charts with axes. Text is XML-escaped; output is a complete standalone SVG document.
#pragma once

#include <string>
#include <vector>

namespace lc::eval {

std::string xml_escape(const std::string & s);
// Score in [0, 1] to the needle-plot colour scale (#F0496E at 0, #EBB839 at 0.5, #0CD79F at 1); NaN: grey.
std::string score_colour(double v);

struct heatmap_panel {
    std::string                      title;
    std::vector<std::string>         x_labels; // columns (lengths)
    std::vector<std::string>         y_labels; // rows, top to bottom (depths)
    std::vector<std::vector<double>> cells;    // [row][col] in [0, 1]; NaN: no data
};
// Panels side by side with a shared colour bar; x_title/y_title label the axes.
std::string svg_heatmaps(const std::string & title, const std::vector<heatmap_panel> & panels,
                         const std::string & x_title, const std::string & y_title);

struct chart_series {
    std::string         name;
    std::vector<double> x, y;
    bool                lines = true; // join points in x order
};
// One chart: linear axes spanning the data (x from 0 when all x >= 0), a legend, points and optional lines.
std::string svg_chart(const std::string & title, const std::string & x_title, const std::string & y_title,
                      const std::vector<chart_series> & series);

} // namespace lc::eval
