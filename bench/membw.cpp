// Memory read bandwidth probe: streams a buffer much larger than the last-level cache with 256-bit loads on
// 1..N threads and prints the best of several runs. The hardware limit next to decode throughput (decode
// reads every weight byte once per token).
// usage: longctx-membw [MiB=512] [max_threads=hardware concurrency]
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

int main(int argc, char ** argv) {
    const size_t n_mib = argc > 1 ? size_t(std::atol(argv[1])) : 512;
    const int    max_t = argc > 2 ? std::atoi(argv[2]) : int(std::max(1u, std::thread::hardware_concurrency()));
    const size_t n     = n_mib << 20;
    auto *       buf   = static_cast<char *>(std::aligned_alloc(64, n));
    if (!buf || n < 4096) {
        std::fprintf(stderr, "longctx-membw: cannot allocate %zu MiB\n", n_mib);
        return 1;
    }
    for (size_t i = 0; i < n; i += 64) buf[i] = char(i);
    std::atomic<long long> sink{0};
    for (int nth = 1; nth <= max_t; ++nth) {
        double best = 0.0;
        for (int rep = 0; rep < 5; ++rep) {
            const auto               t0 = std::chrono::steady_clock::now();
            std::vector<std::thread> ts;
            for (int t = 0; t < nth; ++t) {
                ts.emplace_back([&, t] {
                    const size_t    chunk = n / size_t(nth) / 128 * 128;
                    const __m256i * p     = reinterpret_cast<const __m256i *>(buf + chunk * size_t(t));
                    __m256i         a = _mm256_setzero_si256(), b = a, c = a, d = a;
                    for (size_t i = 0; i < chunk / 32; i += 4) {
                        a = _mm256_add_epi64(a, _mm256_load_si256(p + i));
                        b = _mm256_add_epi64(b, _mm256_load_si256(p + i + 1));
                        c = _mm256_add_epi64(c, _mm256_load_si256(p + i + 2));
                        d = _mm256_add_epi64(d, _mm256_load_si256(p + i + 3));
                    }
                    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
                    sink += _mm256_extract_epi64(a, 0);
                });
            }
            for (auto & th : ts) th.join();
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            best           = std::max(best, double(n) / s / 1e9);
        }
        std::printf("threads %d: read %.1f GB/s (best of 5, %zu MiB)\n", nth, best, n_mib);
    }
    std::free(buf);
    return sink.load() == 42 ? 2 : 0;
}
