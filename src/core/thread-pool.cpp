// Spin-then-sleep worker pool; see thread-pool.h.
#include "core/thread-pool.h"

#include <immintrin.h>

namespace lc {

namespace {
// ~50 us of spinning before a worker parks: long enough to cover the gap between consecutive kernels of
// one forward pass, short enough not to burn a core while the process is idle.
constexpr int k_spin_iters = 20000;
} // namespace

thread_pool::thread_pool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

thread_pool::~thread_pool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto & t : threads_) t.join();
}

void thread_pool::run(const std::function<void(int, int)> & fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    fn_ = &fn;
    n_done_.store(0, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0, n_threads_);
    // Spin while the workers are likely running; yield once they are late (e.g. descheduled on a loaded
    // machine) so that the caller does not burn the core a worker needs.
    for (int spins = 0; n_done_.load(std::memory_order_acquire) != n_threads_ - 1; ++spins) {
        if (spins < k_spin_iters)
            _mm_pause();
        else
            std::this_thread::yield();
    }
    fn_ = nullptr;
}

void thread_pool::worker(int ith) {
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen && spins < k_spin_iters) {
            _mm_pause();
            if (++spins % 1024 == 0) std::this_thread::yield();
        }
        if (generation_.load(std::memory_order_acquire) == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        }
        seen = generation_.load(std::memory_order_acquire);
        if (stop_.load()) return;
        (*fn_)(ith, n_threads_);
        n_done_.fetch_add(1, std::memory_order_acq_rel);
    }
}

} // namespace lc
