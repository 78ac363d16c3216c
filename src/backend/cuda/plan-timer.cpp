// GPU plan timer (plan-timer.h): Q/K/V to bf16 device buffers with an identity page table, the plan uploaded per
// call, CUDA events around each run of the sparse kernel.
#include "backend/cuda/plan-timer.h"

#include <algorithm>

#include "backend/cuda/attn-sparse-prefill.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/cuda-model.h"
#include "core/fp16.h"

namespace lc::cuda {

struct plan_timer::impl {
    int              device = 0;
    cudaStream_t     stream = nullptr;
    cudaEvent_t      ev0 = nullptr, ev1 = nullptr;
    bf16_t *         q = nullptr, *k = nullptr, *v = nullptr;
    float *          o     = nullptr;
    int32_t *        pages = nullptr;
    size_t           cap_q = 0, cap_k = 0, cap_v = 0, cap_o = 0, cap_pages = 0;
    prefill_plan_buf plan;
    // What the device buffers hold.
    const float *  last_q  = nullptr;
    const fp16_t * last_k  = nullptr;
    int64_t        last_nq = -1, last_nkv = -1;
    int            last_heads = -1;

    ~impl() {
        for (void * p : {static_cast<void *>(q), static_cast<void *>(k), static_cast<void *>(v), static_cast<void *>(o),
                         static_cast<void *>(pages)})
            if (p) cudaFree(p);
        if (ev0) cudaEventDestroy(ev0);
        if (ev1) cudaEventDestroy(ev1);
        if (stream) cudaStreamDestroy(stream);
    }

    template <class T> void grow(T *& p, size_t & cap, size_t n) {
        if (n <= cap) return;
        if (p) LC_CUDA_CHECK(cudaFree(p));
        LC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void **>(&p), n * sizeof(T)));
        cap = n;
    }

    void upload(const float * qh, int64_t n_q, int n_head, const kv_view & kv) {
        const int     D       = kv.head_dim;
        const int64_t n_pages = (kv.n_kv + kv_page_tokens - 1) / kv_page_tokens;
        const size_t  qn      = size_t(n_q) * n_head * D;
        const size_t  kvn     = size_t(n_pages) * kv.n_head_kv * kv_page_tokens * D;
        grow(q, cap_q, qn);
        grow(k, cap_k, kvn);
        grow(v, cap_v, kvn);
        grow(o, cap_o, qn);
        grow(pages, cap_pages, size_t(n_pages));
        std::vector<bf16_t> h(std::max(qn, kvn));
        for (size_t i = 0; i < qn; ++i) h[i] = fp32_to_bf16(qh[i]);
        LC_CUDA_CHECK(cudaMemcpy(q, h.data(), qn * 2, cudaMemcpyHostToDevice));
        // Logical page p at physical page p; rows past n_kv zero (finite, as the kernels require).
        for (int pass = 0; pass < 2; ++pass) {
            std::fill(h.begin(), h.begin() + ptrdiff_t(kvn), bf16_t{});
            for (int64_t p = 0; p < n_pages; ++p)
                for (int g = 0; g < kv.n_head_kv; ++g) {
                    const fp16_t * src = pass == 0 ? kv.k_page(p, g) : kv.v_page(p, g);
                    bf16_t *       dst = h.data() + (size_t(p) * kv.n_head_kv + g) * kv_page_tokens * D;
                    const int64_t  n   = std::min<int64_t>(kv_page_tokens, kv.n_kv - p * kv_page_tokens);
                    for (int64_t i = 0; i < n * D; ++i) dst[i] = fp32_to_bf16(fp16_to_fp32(src[i]));
                }
            LC_CUDA_CHECK(cudaMemcpy(pass == 0 ? k : v, h.data(), kvn * 2, cudaMemcpyHostToDevice));
        }
        std::vector<int32_t> ids(static_cast<size_t>(n_pages));
        for (int64_t p = 0; p < n_pages; ++p) ids[size_t(p)] = int32_t(p);
        LC_CUDA_CHECK(cudaMemcpy(pages, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
        last_q     = qh;
        last_k     = kv.k_pool;
        last_nq    = n_q;
        last_nkv   = kv.n_kv;
        last_heads = n_head;
    }
};

plan_timer::plan_timer() : p_(std::make_unique<impl>()) {}
plan_timer::~plan_timer() = default;

result<std::unique_ptr<plan_timer>> plan_timer::create(int device) {
    if (!device_available()) return error(status_code::UNSUPPORTED, "cuda: no CUDA device to time plans on");
    std::unique_ptr<plan_timer> t(new plan_timer());
    t->p_->device = device;
    LC_CUDA_CHECK(cudaSetDevice(device));
    LC_CUDA_CHECK(cudaStreamCreateWithFlags(&t->p_->stream, cudaStreamNonBlocking));
    LC_CUDA_CHECK(cudaEventCreate(&t->p_->ev0));
    LC_CUDA_CHECK(cudaEventCreate(&t->p_->ev1));
    return t;
}

result<double> plan_timer::time(const prefill_plan & plan, const float * q, int64_t n_q, int n_head,
                                const kv_view & kv, float scale, int reps, std::vector<float> * o_out) {
    impl & s = *p_;
    LC_CUDA_CHECK(cudaSetDevice(s.device));
    if (n_q <= 0 || kv.n_kv < n_q)
        return error(status_code::INVALID_ARGUMENT, "plan_timer: %lld queries over %lld keys", (long long)n_q,
                     (long long)kv.n_kv);
    if (q != s.last_q || kv.k_pool != s.last_k || n_q != s.last_nq || kv.n_kv != s.last_nkv || n_head != s.last_heads)
        s.upload(q, n_q, n_head, kv);
    prefill_plan_upload(plan, s.plan);
    attn_sparse_prefill_args a;
    a.q     = s.q;
    a.plan  = s.plan.view;
    a.kv    = attn_kv_paged{s.k, s.v, s.pages, (kv.n_kv + kv_page_tokens - 1) / kv_page_tokens, kv.n_kv, kv.n_head_kv,
                         kv.head_dim};
    a.scale = scale;
    a.o     = s.o;
    a.o_f32 = true;
    LC_RETURN_IF_ERROR(attn_sparse_prefill(a, s.stream)); // warm-up
    std::vector<double> ms;
    for (int r = 0; r < std::max(1, reps); ++r) {
        LC_CUDA_CHECK(cudaEventRecord(s.ev0, s.stream));
        LC_RETURN_IF_ERROR(attn_sparse_prefill(a, s.stream));
        LC_CUDA_CHECK(cudaEventRecord(s.ev1, s.stream));
        LC_CUDA_CHECK(cudaEventSynchronize(s.ev1));
        float t = 0;
        LC_CUDA_CHECK(cudaEventElapsedTime(&t, s.ev0, s.ev1));
        ms.push_back(double(t));
    }
    if (o_out) {
        o_out->resize(size_t(n_q) * n_head * kv.head_dim);
        LC_CUDA_CHECK(cudaMemcpy(o_out->data(), s.o, o_out->size() * 4, cudaMemcpyDeviceToHost));
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2] * 1e-3;
}

} // namespace lc::cuda
