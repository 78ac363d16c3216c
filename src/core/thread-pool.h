// Persistent worker pool for data-parallel kernels: run(fn) calls fn(ith, nth) on every thread (the caller
// is thread 0) and returns when all are done. Workers spin briefly before sleeping so that the many short
// parallel regions of a decode step do not pay for a futex wake each.
// Thread-safety: run() must not be called concurrently from two threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lc {

class thread_pool {
  public:
    explicit thread_pool(int n_threads);
    ~thread_pool();
    thread_pool(const thread_pool &)             = delete;
    thread_pool & operator=(const thread_pool &) = delete;

    int  n_threads() const { return n_threads_; }
    void run(const std::function<void(int ith, int nth)> & fn);

    // Split [0, n) into nth contiguous chunks; returns chunk ith as [begin, end).
    static void split(int64_t n, int ith, int nth, int64_t & begin, int64_t & end) {
        const int64_t per = n / nth, rem = n % nth;
        begin = ith * per + (ith < rem ? ith : rem);
        end   = begin + per + (ith < rem ? 1 : 0);
    }

  private:
    void worker(int ith);

    int                                   n_threads_;
    std::vector<std::thread>              threads_;
    const std::function<void(int, int)> * fn_ = nullptr;
    std::atomic<uint64_t>                 generation_{0};
    std::atomic<int>                      n_done_{0};
    std::atomic<bool>                     stop_{false};
    std::mutex                            mutex_;
    std::condition_variable               cv_;
};

} // namespace lc
