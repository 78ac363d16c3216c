// thread_pool: every thread runs once per call, split() covers [0, n) exactly.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "core/thread-pool.h"

TEST(thread_pool, runs_every_thread_once) {
    for (int n : {1, 2, 3, 5}) {
        lc::thread_pool pool(n);
        for (int rep = 0; rep < 200; ++rep) {
            std::vector<std::atomic<int>> hits(n);
            pool.run([&](int ith, int nth) {
                ASSERT_EQ(nth, n);
                hits[ith].fetch_add(1);
            });
            for (int i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " thread " << i;
        }
    }
}

TEST(thread_pool, split_covers_range) {
    for (int64_t n : {0, 1, 7, 64, 1000}) {
        for (int nth : {1, 2, 3, 16}) {
            int64_t expect = 0;
            for (int ith = 0; ith < nth; ++ith) {
                int64_t b, e;
                lc::thread_pool::split(n, ith, nth, b, e);
                EXPECT_EQ(b, expect);
                EXPECT_LE(b, e);
                expect = e;
            }
            EXPECT_EQ(expect, n);
        }
    }
}
