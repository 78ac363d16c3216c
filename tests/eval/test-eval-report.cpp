// eval report: tables and density plots from hand-made result files of each eval.
#include <gtest/gtest.h>

#include <cmath>

#include "eval/report.h"

using namespace lc;
using namespace lc::eval;

namespace {
json niah_doc() {
    // Two cells; dense scores 1 and 1, the method 1 and 0 at density 0.5 and 0.3; prefill 1000 tokens in 2 s / 1 s.
    json d = {{"eval", "niah"}, {"meta", {{"task", "niah-numeric"}, {"model_name", "m"}}}, {"records", json::array()}};
    for (int i = 0; i < 2; ++i)
        d["records"].push_back({{"key", std::to_string(i)},
                                {"length", 1000},
                                {"depth", 50 * i},
                                {"n_prompt", 1000},
                                {"runs",
                                 {{{"label", "dense"}, {"score", 1.0}, {"density", 1.0}, {"prefill_s", 2.0}},
                                  {{"label", "prefill=vslash budget=1x"},
                                   {"score", i == 0 ? 1.0 : 0.0},
                                   {"density", i == 0 ? 0.5 : 0.3},
                                   {"prefill_s", 1.0}}}}});
    return d;
}
json ppl_doc() {
    // nll sums ln(4) * 10 over 10 tokens -> ppl 4; the method ln(5) * 10 -> 5.
    json d = {{"eval", "ppl"}, {"meta", {{"task", "ppl-prefill"}}}, {"records", json::array()}};
    d["records"].push_back({{"key", "A"},
                            {"protocol", "prefill"},
                            {"length", 11},
                            {"runs",
                             {{{"label", "dense"}, {"nll_sum", 10 * std::log(4.0)}, {"n_scored", 10}},
                              {{"label", "m"}, {"nll_sum", 10 * std::log(5.0)}, {"n_scored", 10}}}}});
    return d;
}
} // namespace

TEST(eval_report, points_and_tables) {
    std::vector<report_input> in  = {{"dir/a.json", niah_doc()}, {"b.json", ppl_doc()}};
    auto                      pts = report_points(in);
    ASSERT_TRUE(pts);
    ASSERT_EQ(pts->size(), 4u);
    EXPECT_EQ((*pts)[0].file, "a.json");
    EXPECT_EQ((*pts)[0].label, "dense");
    EXPECT_DOUBLE_EQ((*pts)[0].score, 100.0);
    EXPECT_DOUBLE_EQ((*pts)[0].speed, 500.0); // 2000 tokens in 4 s
    EXPECT_DOUBLE_EQ((*pts)[1].score, 50.0);
    EXPECT_DOUBLE_EQ((*pts)[1].density, 0.4);
    EXPECT_DOUBLE_EQ((*pts)[1].speed, 1000.0);
    EXPECT_TRUE(std::isnan((*pts)[2].score)); // ppl has no score
    auto md = report_markdown(in);
    ASSERT_TRUE(md);
    EXPECT_NE(md->find("| prefill=vslash budget=1x | 0.400 | 50.00 | -50.00 | 1000 | 2 |"), std::string::npos) << *md;
    EXPECT_NE(md->find("| A L=11 | m | 10 | 5.0000 | +1.0000 |"), std::string::npos) << *md;
    const std::string svg = report_accuracy_svg(*pts);
    EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
    EXPECT_NE(svg.find("a.json"), std::string::npos);
    EXPECT_NE(report_speed_svg(*pts).find("prefill tokens per second"), std::string::npos);
    EXPECT_FALSE(report_markdown(
        {{"x.json", json{{"eval", "niah"}, {"meta", json::object()}, {"records", {{{"runs", {{{"nolabel", 1}}}}}}}}}}));
}

TEST(eval_report, decode_fidelity_summary) {
    // Two documents with a decoded tail: KL 0.1 and 0.3, top-1 0.9 and 0.7, keys 0.25, KV held 200 and 300 of
    // 1000 bytes -> means 0.2, 80%, 0.250, 0.250.
    json d = {{"eval", "fidelity"},
              {"meta", {{"task", "fidelity"}, {"model_name", "Gemma 3 270m"}}},
              {"records", json::array()}};
    for (int i = 0; i < 2; ++i)
        d["records"].push_back({{"length", 4096},
                                {"doc", i},
                                {"kl_mean", 0.01},
                                {"kl_max", 0.5},
                                {"top1_agree", 0.99},
                                {"decode_kl_mean", i == 0 ? 0.1 : 0.3},
                                {"decode_top1_agree", i == 0 ? 0.9 : 0.7},
                                {"runs",
                                 {{{"label", "dense"}, {"density", 1.0}},
                                  {{"label", "decode=topk"},
                                   {"density", 1.0},
                                   {"decode_keys", 0.25},
                                   {"kv_bytes", i == 0 ? 200 : 300},
                                   {"kv_bytes_full", 1000}}}}});
    auto md = report_markdown({{"f.json", d}});
    ASSERT_TRUE(md);
    EXPECT_NE(md->find("| Gemma 3 270m | decode=topk | 4096 | 2 | 0.250 | 0.250 | 0.2 | 80.00 |"), std::string::npos)
        << *md;
    // Summary row: the decoded tail's top-1 (80%) and KL (0.2); density = keys attended.
    EXPECT_NE(md->find("| Gemma 3 270m | fidelity | L=4096 decoded tail: top-1 (%), KL; density = keys attended | "
                       "decode=topk | 0.250 | 100.00 | 80.00 (KL 0.2) | -20.00 | f.json |"),
              std::string::npos)
        << *md;
    EXPECT_NE(md->find("| 4096 | 1 | 0.01 | 0.5 | 0.9900 | 0.3 | 0.7000 | 0.250 |"), std::string::npos) << *md;
}

TEST(eval_report, method_summary_across_files) {
    // RULER at 8192: niah_single_1 dense 1 / method 1, fwe dense 1 / method 0 -> means 100 and 50; the method's
    // density 0.2 and 0.3 -> 0.250. Model names cut after the size word.
    json         r       = {{"eval", "ruler"},
                            {"meta", {{"task", "ruler"}, {"model_name", "Smollm2 135M 8k Lc100K Mix1 Ep2"}}},
                            {"records", json::array()}};
    const char * tasks[] = {"niah_single_1", "fwe"};
    for (int i = 0; i < 2; ++i)
        r["records"].push_back(
            {{"key", std::string(tasks[i]) + ",L=8192,i=0"},
             {"task", tasks[i]},
             {"length", 8192},
             {"runs",
              {{{"label", "dense"}, {"score", 1.0}, {"density", 1.0}},
               {{"label", "prefill=x"}, {"score", i == 0 ? 1.0 : 0.0}, {"density", 0.2 + 0.1 * i}}}}});
    auto md = report_markdown({{"r.json", r}, {"a.json", niah_doc()}, {"b.json", ppl_doc()}});
    ASSERT_TRUE(md);
    EXPECT_NE(md->find("| Smollm2 135M | ruler | L=8192 RULER mean (%), 2 tasks, 2 samples | prefill=x | 0.250 | "
                       "100.00 | 50.00 | -50.00 | r.json |"),
              std::string::npos)
        << *md;
    EXPECT_NE(md->find("| m | niah | L=1000 needle score (%) | prefill=vslash budget=1x | 0.400 | 100.00 | 50.00 | "
                       "-50.00 | a.json |"),
              std::string::npos)
        << *md;
    EXPECT_NE(md->find("| ? | ppl | PPL A L=11 | m | 1.000 | 4.0000 | 5.0000 | +1.0000 | b.json |"), std::string::npos)
        << *md;
    // Grouped by model: "?" < "Smollm2 135M" < "m"; dense has no row of its own.
    EXPECT_LT(md->find("| ? | ppl |"), md->find("| Smollm2 135M | ruler |"));
    EXPECT_LT(md->find("| Smollm2 135M | ruler |"), md->find("| m | niah |"));
    EXPECT_EQ(md->find("| dense | 1.000 | 100.00 | 100.00 |"), std::string::npos) << *md;
}
