// Loki calibration on the real SmolLM2-135M (skipped when the model or the KJV text is absent): two 512-token
// sequences of the KJV give orthonormal bases for every layer whose first 16 of 64 dims explain a plausible share
// of the key variance (Loki reports low-rank keys), a lower 90% rank for pre-RoPE keys than for post-RoPE keys
// (as the Loki paper reports: RoPE spreads the keys over more dims), and a sidecar the Loki method loads.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "attn/decode/loki.h"
#include "calibrate/loki-pca.h"
#include "calibrate/sidecar.h"
#include "common/util.h"
#include "eval/corpus.h"
#include "gguf/gguf-test-util.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace {

double mean_rank90(const lc::sidecar_loki & l, int n_layer) {
    double s = 0;
    for (int il = 0; il < n_layer; ++il)
        for (int g = 0; g < l.n_head_kv; ++g) {
            const float * c = l.curve_at(il, g);
            s += lc::pca_rank_for(std::vector<float>(c, c + l.head_dim), 0.9);
        }
    return s / (n_layer * l.n_head_kv);
}

TEST(loki_calibrate, smollm2_bases_are_low_rank_and_load) {
    const std::string path = lc::test::cached_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    if (path.empty()) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not in the model cache";
    auto kjv = lc::eval::corpus_kjv();
    if (!kjv.is_ok()) GTEST_SKIP() << "no KJV text: " << kjv.get_status().message();
    auto m = lc::model::load(path);
    ASSERT_TRUE(m.is_ok()) << m.get_status().message();
    auto tok = lc::tokenizer::from_gguf((*m)->file());
    ASSERT_TRUE(tok.is_ok()) << tok.get_status().message();
    const auto ids = tok->encode(std::string_view(kjv->text).substr(0, 20000), false, false);
    ASSERT_GE(ids.size(), size_t(1024));
    const std::vector<std::vector<int32_t>> seqs = {{ids.begin(), ids.begin() + 512},
                                                    {ids.begin() + 512, ids.begin() + 1024}};
    const lc::model_hparams & hp = (*m)->hparams();

    lc::loki_calib_params p;
    p.n_threads = 2;
    auto post   = lc::loki_calibrate(**m, seqs, p);
    ASSERT_TRUE(post.is_ok()) << post.get_status().message();
    const int D = hp.head_dim;
    ASSERT_EQ(D, 64);
    EXPECT_EQ(post->calib_n_keys, 1024);
    double share16 = 0;
    for (int il = 0; il < hp.n_layer; ++il) {
        ASSERT_EQ(post->fitted[size_t(il)], 1);
        for (int g = 0; g < hp.n_head_kv; ++g) {
            const float * P = post->basis_at(il, g);
            const float * c = post->curve_at(il, g);
            for (int j = 1; j < D; ++j) EXPECT_GE(c[j], c[j - 1]);
            share16 += c[15] / double(hp.n_layer * hp.n_head_kv);
            for (int a = 0; a < D; a += 7)
                for (int b = 0; b < D; b += 5) {
                    double dot = 0;
                    for (int i = 0; i < D; ++i) dot += double(P[i * D + a]) * P[i * D + b];
                    EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5);
                }
        }
    }
    // Random 64-dim keys would put 25% of the variance in 16 dims; the full calibration (200k keys) measures
    // 57-70% per layer.
    EXPECT_GT(share16, 0.45);
    EXPECT_LT(share16, 0.95);

    p.pre_rope = true;
    auto pre   = lc::loki_calibrate(**m, seqs, p);
    ASSERT_TRUE(pre.is_ok());
    EXPECT_TRUE(pre->pre_rope);
    EXPECT_LT(mean_rank90(*pre, hp.n_layer), mean_rank90(*post, hp.n_layer) - 3.0);

    // The sidecar loads into the Loki method; without a Loki section the error names the calibration command.
    lc::test::temp_dir dir;
    const std::string  sc_path = dir.path() + "/m.longctx.gguf";
    lc::sidecar        sc;
    sc.n_layer = hp.n_layer;
    sc.n_head  = hp.n_head;
    ASSERT_TRUE(lc::sidecar_write(sc_path, sc).is_ok());
    lc::attn_config c;
    c.decode  = lc::decode_kind::LOKI;
    c.sidecar = sc_path;
    auto none = lc::loki_decode_create(**m, c);
    ASSERT_FALSE(none.is_ok());
    EXPECT_NE(none.get_status().message().find("calibrate loki"), std::string::npos) << none.get_status().message();
    sc.loki = *post;
    ASSERT_TRUE(lc::sidecar_write(sc_path, sc).is_ok());
    auto method = lc::loki_decode_create(**m, c);
    ASSERT_TRUE(method.is_ok()) << method.get_status().message();
    EXPECT_TRUE((*method)->sparse_layer(0));
    EXPECT_TRUE((*method)->sparse_layer(hp.n_layer - 1));
}

} // namespace
