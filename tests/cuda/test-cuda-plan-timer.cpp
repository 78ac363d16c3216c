// The GPU plan timer of `longctx calibrate minference --timer cuda` (backend/cuda/plan-timer.h): the plans it
// times compute what the CPU sparse kernel computes (o within bf16 rounding), on a paged cache whose page table is
// not the identity and whose unused rows are NaN, for A-shape, vertical-slash and block-sparse plans; re-timing a
// second plan of the same layer reuses the upload; the search hook reports it as its cost. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "attn/attention.h"
#include "attn/attn-config.h"
#include "attn/attn-sparse-prefill.h"
#include "attn/minference/head-config.h"
#include "attn/prefill-plan.h"
#include "backend/cuda/cuda-model.h"
#include "backend/cuda/plan-timer.h"
#include "calibrate/minference-search.h"
#include "common/attn-util.h"
#include "core/thread-pool.h"

namespace {

using namespace lc;

thread_pool & pool() {
    static thread_pool p(int(std::max(1u, std::thread::hardware_concurrency())));
    return p;
}

TEST(CudaPlanTimer, TimesWhatTheCpuKernelComputes) {
    if (!cuda::device_available()) GTEST_SKIP() << "no CUDA device";
    const int          n_head = 8, n_head_kv = 2, D = 128;
    const int64_t      n      = 3000;
    test::test_cache   c      = test::make_cache(n_head_kv, D, n, 7);
    std::vector<float> q      = test::randn(size_t(n) * n_head * D, 1.0f, 8);
    const float        scale  = 1.0f / std::sqrt(float(D));
    auto               t      = cuda::plan_timer::create();
    ASSERT_TRUE(t.is_ok()) << t.get_status().message();
    for (const head_budget & b : {head_budget{head_pattern::A_SHAPE, 64, 512}, head_budget{head_pattern::VSLASH, 100, 400},
                                  head_budget{head_pattern::BLOCK, 8, 0}}) {
        const minference_config cfg = minference_config_uniform(1, n_head, b);
        prefill_plan            plan;
        prefill_plan_build(cfg, prefill_budget{}, 0, q.data(), n, 0, n_head, c.view(), scale, plan, pool());
        std::vector<float> ref(q.size()), lse(size_t(n) * n_head), o;
        attn_sparse_prefill(plan, q.data(), c.view(), scale, ref.data(), lse.data(), pool());
        auto s = (*t)->time(plan, q.data(), n, n_head, c.view(), scale, 3, &o);
        ASSERT_TRUE(s.is_ok()) << s.get_status().message();
        double num = 0, den = 0;
        for (size_t i = 0; i < o.size(); ++i) {
            num += (double(o[i]) - ref[i]) * (double(o[i]) - ref[i]);
            den += double(ref[i]) * ref[i];
        }
        const prefill_plan_pairs pp = prefill_plan_count(plan);
        std::printf("%s(%lld, %lld): %.1f%% of causal pairs, GPU %.3f ms, nmse vs CPU kernel %.2e\n",
                    head_pattern_name(b.pattern), (long long)b.a, (long long)b.b, 100.0 * pp.computed / pp.causal,
                    1e3 * *s, num / den);
        EXPECT_GT(*s, 0.0);
        EXPECT_LT(num / den, 1e-4); // Q, K, V rounded to bf16 on the GPU against f32 / fp16 on the CPU
    }
    // Through the search's hook.
    auto fn = minference_gpu_plan_time();
    ASSERT_TRUE(fn.is_ok()) << fn.get_status().message();
    prefill_plan plan;
    prefill_plan_build(minference_config_uniform(1, n_head, head_pattern::A_SHAPE), prefill_budget{}, 0, q.data(), n,
                       0, n_head, c.view(), scale, plan, pool());
    auto s = (*fn)(plan, q.data(), n, n_head, c.view(), scale);
    ASSERT_TRUE(s.is_ok()) << s.get_status().message();
    EXPECT_GT(*s, 0.0);
    // Errors come back as errors: more queries than keys.
    EXPECT_FALSE((*t)->time(plan, q.data(), n + 64, n_head, c.view(), scale).is_ok());
}

} // namespace
