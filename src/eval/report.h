// `longctx eval report`: result files of niah, ruler, ppl and fidelity into one markdown report (a table per file,
// dense and each method side by side) and SVG plots made from the files: accuracy versus density and prefill speed
// versus density, one point per (file, method).
#pragma once

#include <string>
#include <vector>

#include "eval/results.h"

namespace lc::eval {

struct report_input {
    std::string path;
    json        doc;
};

// Per (file, method): means over the file's records. score: niah in [0, 1] x 100, ruler 0..100, fidelity top-1 x 100;
// NaN where the eval has no score (ppl). speed: prompt tokens per second of prefill.
struct report_point {
    std::string file, eval, label;
    double      density = 1.0, score = 0.0, speed = 0.0;
    int         n = 0;
};
result<std::vector<report_point>> report_points(const std::vector<report_input> & in);

result<std::string> report_markdown(const std::vector<report_input> & in);
std::string         report_accuracy_svg(const std::vector<report_point> & pts);
std::string         report_speed_svg(const std::vector<report_point> & pts);

} // namespace lc::eval
