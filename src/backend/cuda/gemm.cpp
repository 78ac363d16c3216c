// cuBLASLt wrapper of gemm.cuh. In cuBLAS's column-major terms y (n_out x n_tok, ld ldy) = Wᵀᵀ x: A is W stored
// as an n_in x n_out matrix (ld n_in) taken transposed, B is x stored as n_in x n_tok (ld ldx).
#include "backend/cuda/gemm.cuh"

#include <cublasLt.h>

#include <map>
#include <tuple>

#include "backend/cuda/cuda-common.cuh"

#define LC_CUBLAS_CHECK(expr)                                                                                          \
    do {                                                                                                               \
        cublasStatus_t lc_cublas_st_ = (expr);                                                                         \
        LC_ASSERT(lc_cublas_st_ == CUBLAS_STATUS_SUCCESS, "cuBLASLt: %s failed: status %d", #expr,                     \
                  int(lc_cublas_st_));                                                                                 \
    } while (0)

namespace lc::cuda {

namespace {
// 32 MiB: what cuBLAS asks for on Hopper for its split-K and stream-K kernels.
constexpr size_t k_workspace_bytes = size_t(32) << 20;

struct plan {
    cublasLtMatmulDesc_t   op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t   algo{};
};
} // namespace

struct gemm_runner::impl {
    cublasLtHandle_t handle    = nullptr;
    void *           workspace = nullptr;
    using key                  = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>;
    std::map<key, plan> plans;

    const plan & get(int64_t n_out, int64_t n_in, int64_t ldx, int64_t n_tok, int64_t ldy, bool accumulate) {
        const key k{n_out, n_in, ldx, n_tok, ldy, accumulate};
        auto      it = plans.find(k);
        if (it != plans.end()) return it->second;
        plan p;
        LC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
        LC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
        LC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, uint64_t(n_in), uint64_t(n_out), n_in));
        LC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, uint64_t(n_in), uint64_t(n_tok), ldx));
        LC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, uint64_t(n_out), uint64_t(n_tok), ldy));
        cublasLtMatmulPreference_t pref = nullptr;
        LC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        size_t ws = k_workspace_bytes;
        LC_CUBLAS_CHECK(
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
        cublasLtMatmulHeuristicResult_t res{};
        int                             n_res = 0;
        LC_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &n_res));
        cublasLtMatmulPreferenceDestroy(pref);
        LC_ASSERT(n_res > 0, "cuBLASLt: no algorithm for bf16 GEMM n_out %lld n_in %lld n_tok %lld", (long long)n_out,
                  (long long)n_in, (long long)n_tok);
        p.algo = res.algo;
        return plans.emplace(k, p).first->second;
    }
};

gemm_runner::gemm_runner() : p_(std::make_unique<impl>()) {
    LC_CUBLAS_CHECK(cublasLtCreate(&p_->handle));
    LC_CUDA_CHECK(cudaMalloc(&p_->workspace, k_workspace_bytes));
}

gemm_runner::~gemm_runner() {
    for (auto & [k, p] : p_->plans) {
        cublasLtMatrixLayoutDestroy(p.a);
        cublasLtMatrixLayoutDestroy(p.b);
        cublasLtMatrixLayoutDestroy(p.c);
        cublasLtMatmulDescDestroy(p.op);
    }
    cudaFree(p_->workspace);
    cublasLtDestroy(p_->handle);
}

void gemm_runner::run(const bf16_t * w, int64_t n_out, int64_t n_in, const bf16_t * x, int64_t ldx, int64_t n_tok,
                      float * y, int64_t ldy, float beta, cudaStream_t stream) {
    if (n_tok <= 0 || n_out <= 0) return;
    const plan & p     = p_->get(n_out, n_in, ldx, n_tok, ldy, beta != 0.0f);
    const float  alpha = 1.0f;
    LC_CUBLAS_CHECK(cublasLtMatmul(p_->handle, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                                   p_->workspace, k_workspace_bytes, stream));
}

} // namespace lc::cuda
