// Device forward pass (cuda-model.h): the ops of arch-llama.cpp / arch-gemma3.cpp in the same order, with the
// Q/K/V and gate/up projections fused into one GEMM each and the residual adds of llama folded into the output
// projections (cuBLASLt beta = 1). Activations between ops are f32 (the residual stream, GEMM outputs) or bf16
// (GEMM inputs, Q, the KV cache, the attention output).
#include "backend/cuda/cuda-model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "attn/attention.h"
#include "backend/cpu/ref/dequant.h"
#include "backend/cuda/attn-decode.cuh"
#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/attn-sparse-decode.cuh"
#include "backend/cuda/attn-sparse-prefill.cuh"
#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/decode-select.cuh"
#include "backend/cuda/gemm.cuh"
#include "backend/cuda/ops.cuh"
#include "backend/cuda/sampling.cuh"
#include "backend/cuda/vslash-index.cuh"

namespace lc::cuda {

bool device_available() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return n > 0;
}

result<model_hparams> synthetic_hparams(const std::string & name) {
    model_hparams hp;
    hp.arch        = model_arch::LLAMA;
    hp.arch_name   = "llama";
    hp.name        = "synthetic " + name;
    hp.rope_mode   = cpu::rope_mode::NORM;
    hp.norm_eps    = 1e-5f;
    hp.n_ctx_train = 131072;
    auto shape     = [&](int n_layer, int n_embd, int n_head, int n_head_kv, int head_dim, int n_ff, int n_vocab,
                     float base) {
        hp.n_layer        = n_layer;
        hp.n_embd         = n_embd;
        hp.n_head         = n_head;
        hp.n_head_kv      = n_head_kv;
        hp.head_dim       = head_dim;
        hp.n_rot          = head_dim;
        hp.n_ff           = n_ff;
        hp.n_vocab        = n_vocab;
        hp.rope_freq_base = base;
    };
    if (name == "llama3-8b") {
        shape(32, 4096, 32, 8, 128, 14336, 128256, 500000.0f);
    } else if (name == "llama3-1b") {
        shape(16, 2048, 32, 8, 64, 8192, 128256, 500000.0f);
        hp.tied_embeddings = true;
    } else if (name == "smollm2-135m") {
        shape(30, 576, 9, 3, 64, 1536, 49152, 100000.0f);
        hp.tied_embeddings = true;
        hp.n_ctx_train     = 8192;
    } else if (name == "qwen2.5-7b") {
        shape(28, 3584, 28, 4, 128, 18944, 152064, 1000000.0f);
        hp.arch      = model_arch::QWEN2;
        hp.arch_name = "qwen2";
        hp.rope_mode = cpu::rope_mode::NEOX;
        hp.norm_eps  = 1e-6f;
    } else {
        return error(status_code::INVALID_ARGUMENT,
                     "cuda: unknown synthetic model '%s'; known: llama3-8b, llama3-1b, smollm2-135m, qwen2.5-7b",
                     name.c_str());
    }
    return hp;
}

namespace {

struct dev_layer {
    float *  attn_norm = nullptr;
    bf16_t * wqkv      = nullptr; // [n_q + 2 n_kv][n_embd]
    float *  bq = nullptr, *bk = nullptr, *bv = nullptr;
    float *  q_norm = nullptr, *k_norm = nullptr;
    bf16_t * wo             = nullptr; // [n_embd][n_q]
    float *  attn_post_norm = nullptr;
    float *  ffn_norm       = nullptr;
    bf16_t * wgu            = nullptr; // [2 n_ff][n_embd]: gate rows, then up rows
    bf16_t * wdown          = nullptr; // [n_embd][n_ff]
    float *  ffn_post_norm  = nullptr;
    bool     swa            = false;
    bf16_t * k_pool = nullptr, *v_pool = nullptr; // [n_pages][n_head_kv][64][head_dim]
    // Sparse decode metadata (cuda_model_options::decode) of a full-attention layer: Loki's rotated keys and
    // projection, or Quest's page bounds. sparse: the layer decodes through a selector.
    bool     sparse      = false;
    loki_store_gpu  loki  = {};
    quest_store_gpu quest = {};
};

// Output-head rows per GEMM (bounds the logits buffer: 256 x 128256 x 4 B = 131 MB).
constexpr int64_t k_logit_rows = 256;

} // namespace

struct cuda_model::impl {
    model_hparams                hp;
    cuda_model_options           opt;
    bool                         synthetic = false;
    cudaStream_t                 stream    = nullptr;
    std::vector<void *>          allocs;
    uint64_t                     n_weight_bytes = 0, n_kv_bytes = 0;
    std::unique_ptr<gemm_runner> gemm;

    bf16_t *               tok_embd = nullptr, *output = nullptr;
    float *                output_norm = nullptr;
    std::vector<dev_layer> layers;

    int64_t  n_pages = 0, n_ub = 0;
    int32_t *pages = nullptr, *d_tok = nullptr, *d_pos = nullptr, *d_nkv = nullptr, *d_next = nullptr;
    int32_t *h_in = nullptr, *h_next = nullptr; // pinned: [tok, pos, n_kv], [next]
    float *  x_all     = nullptr; // opt.layer_major: hidden states of the whole prompt [n_ctx][n_embd]
    int32_t *h_pos_all = nullptr; // opt.layer_major: positions 0 .. n_ctx - 1 (pinned)
    float *  x = nullptr, *qkv = nullptr, *tmp = nullptr, *gu = nullptr, *logits = nullptr;
    bf16_t * xn = nullptr, *q = nullptr, *att = nullptr, *h = nullptr;
    void *   dec_ws       = nullptr;
    size_t   dec_ws_bytes = 0;
    void *   smp_ws       = nullptr; // sample_row's workspace
    size_t   smp_ws_bytes = 0;
    sample_params *d_smp = nullptr, *h_smp = nullptr; // the draw's settings (h_smp pinned)
    int64_t        last_row = -1; // row of the device logits buffer holding the last token's logits (-1: none)
    vslash_workspace           sp_ws;   // MInference index scratch (opt.prefill_heads)
    prefill_plan_buf           sp_plan; // the plan of the current chunk and layer
    std::vector<head_spec_dev> sp_spec; // the current layer's heads, budgets effective for the chunk
    int64_t                    n_sparse_layers = 0, n_sparse_dense = 0; // (chunk, layer) pairs run, of which dense
    decode_select_workspace sel_ws;          // sparse decode selection scratch (opt.decode)
    decode_plan_buf         sel_plan;        // the plan of the current decode step and layer
    void *                  sdec_ws       = nullptr; // the sparse decode kernel's split-K workspace
    size_t                  sdec_ws_bytes = 0;
    std::vector<int64_t>    eager_spans;     // decode spans that ran eagerly once (workspaces sized before capture)

    int64_t n_past         = 0;
    int64_t n_decode_eager = 0;
    // Decode graphs by key span and sampler (key 4 span + 0 with argmax, + 1 + sample_row_path() with the sampler): the split-K decode is sized for the span, so one graph
    // per power of two from 4096 up to n_ctx (at most ~6) keeps short contexts from paying for the whole cache's
    // splits (measured on llama3-8b with a 131k cache at depth 8k: 97.8 t/s with the full span, 136 sized to 33k).
    std::map<int64_t, std::pair<cudaGraph_t, cudaGraphExec_t>> graphs;

    ~impl() {
        for (auto & [span, g] : graphs) {
            cudaGraphExecDestroy(g.second);
            cudaGraphDestroy(g.first);
        }
        gemm.reset();
        for (void * p : allocs) cudaFree(p);
        if (h_in) cudaFreeHost(h_in);
        if (h_smp) cudaFreeHost(h_smp);
        if (h_pos_all) cudaFreeHost(h_pos_all);
        if (stream) cudaStreamDestroy(stream);
    }

    template <typename T> result<T *> alloc(int64_t n, uint64_t * counter = nullptr) {
        void *            p  = nullptr;
        const size_t      nb = size_t(std::max<int64_t>(n, 1)) * sizeof(T);
        const cudaError_t e  = cudaMalloc(&p, nb);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            return error(
                status_code::RESOURCE_EXHAUSTED,
                "cuda: allocating %.1f MiB failed (%s), %.1f of %.1f GiB free; lower -c or use a smaller model",
                double(nb) / (1 << 20), cudaGetErrorString(e), double(free_b) / (1 << 30), double(total_b) / (1 << 30));
        }
        allocs.push_back(p);
        if (counter) *counter += nb;
        return static_cast<T *>(p);
    }

    status init_common() {
        LC_CUDA_CHECK(cudaSetDevice(opt.device));
        LC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        gemm = std::make_unique<gemm_runner>();
        LC_ASSERT(hp.n_head_kv > 0 && hp.n_head % hp.n_head_kv == 0, "cuda: n_head %d, n_head_kv %d", hp.n_head,
                  hp.n_head_kv);
        if (opt.n_ctx <= 0) return error(status_code::INVALID_ARGUMENT, "cuda: n_ctx %lld", (long long)opt.n_ctx);
        if (opt.layer_major && opt.decode != decode_method_gpu::DENSE)
            return error(status_code::INVALID_ARGUMENT, "cuda: a layer-major prefill keeps no cache to decode from");
        if (!opt.prefill_heads.empty() && opt.prefill_heads.size() != size_t(hp.n_layer) * size_t(hp.n_head))
            return error(status_code::INVALID_ARGUMENT, "cuda: %zu prefill head patterns for %d layers x %d heads",
                         opt.prefill_heads.size(), hp.n_layer, hp.n_head);
        layers.resize(size_t(hp.n_layer));
        return status::ok();
    }

    // KV pools, page table and activation buffers (after the weights).
    status init_buffers() {
        const int64_t E = hp.n_embd, D = hp.head_dim, n_q = int64_t(hp.n_head) * D, n_kv = int64_t(hp.n_head_kv) * D;
        n_pages                  = (opt.n_ctx + kv_page_tokens - 1) / kv_page_tokens;
        const int64_t pool_elems = n_pages * hp.n_head_kv * kv_page_tokens * D;
        for (auto & L : layers) {
            if (opt.layer_major && &L != &layers[0]) { // one pool for every layer
                L.k_pool = layers[0].k_pool;
                L.v_pool = layers[0].v_pool;
                continue;
            }
            LC_ASSIGN_OR_RETURN(L.k_pool, alloc<bf16_t>(pool_elems, &n_kv_bytes));
            LC_ASSIGN_OR_RETURN(L.v_pool, alloc<bf16_t>(pool_elems, &n_kv_bytes));
            // Zero pages: rows past n_kv must be finite (kv-paged.cuh).
            LC_CUDA_CHECK(cudaMemsetAsync(L.k_pool, 0, size_t(pool_elems) * 2, stream));
            LC_CUDA_CHECK(cudaMemsetAsync(L.v_pool, 0, size_t(pool_elems) * 2, stream));
        }
        if (opt.layer_major) {
            LC_ASSIGN_OR_RETURN(x_all, alloc<float>(opt.n_ctx * E));
            LC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void **>(&h_pos_all), size_t(opt.n_ctx) * sizeof(int32_t)));
            for (int64_t i = 0; i < opt.n_ctx; ++i) h_pos_all[i] = int32_t(i);
        }
        LC_ASSIGN_OR_RETURN(pages, alloc<int32_t>(n_pages));
        std::vector<int32_t> ids(static_cast<size_t>(n_pages));
        for (int64_t i = 0; i < n_pages; ++i) ids[size_t(i)] = int32_t(i);
        LC_CUDA_CHECK(cudaMemcpy(pages, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));

        n_ub            = std::max<int64_t>(1, std::min(opt.n_ubatch, opt.n_ctx));
        const int64_t U = n_ub;
        LC_ASSIGN_OR_RETURN(d_tok, alloc<int32_t>(U));
        LC_ASSIGN_OR_RETURN(d_pos, alloc<int32_t>(U));
        LC_ASSIGN_OR_RETURN(d_nkv, alloc<int32_t>(1));
        LC_ASSIGN_OR_RETURN(d_next, alloc<int32_t>(1));
        LC_ASSIGN_OR_RETURN(x, alloc<float>(U * E));
        LC_ASSIGN_OR_RETURN(tmp, alloc<float>(U * E));
        LC_ASSIGN_OR_RETURN(xn, alloc<bf16_t>(U * E));
        LC_ASSIGN_OR_RETURN(qkv, alloc<float>(U * (n_q + 2 * n_kv)));
        LC_ASSIGN_OR_RETURN(q, alloc<bf16_t>(U * n_q));
        LC_ASSIGN_OR_RETURN(att, alloc<bf16_t>(U * n_q));
        LC_ASSIGN_OR_RETURN(gu, alloc<float>(U * 2 * hp.n_ff));
        LC_ASSIGN_OR_RETURN(h, alloc<bf16_t>(U * hp.n_ff));
        LC_ASSIGN_OR_RETURN(logits, alloc<float>(std::min(U, k_logit_rows) * hp.n_vocab));
        const int n_split = attn_decode_n_split(1, hp.n_head, hp.n_head_kv, int(D), opt.n_ctx);
        dec_ws_bytes      = attn_decode_workspace_bytes(1, hp.n_head, int(D), n_split);
        LC_ASSIGN_OR_RETURN(dec_ws, alloc<uint8_t>(int64_t(dec_ws_bytes)));
        smp_ws_bytes = sample_workspace_bytes(hp.n_vocab);
        LC_ASSIGN_OR_RETURN(smp_ws, alloc<uint8_t>(int64_t(smp_ws_bytes)));
        LC_ASSIGN_OR_RETURN(d_smp, alloc<sample_params>(1));
        LC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void **>(&h_in), 8 * sizeof(int32_t)));
        LC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void **>(&h_smp), sizeof(sample_params)));
        h_next = h_in + 4;
        LC_RETURN_IF_ERROR(init_sparse_decode());
        LC_CUDA_CHECK(cudaStreamSynchronize(stream));
        return status::ok();
    }

    // The metadata stores of the sparse decode method in every full-attention layer, and the gather kernel's
    // workspace for the largest plan any span can hold.
    status init_sparse_decode() {
        if (opt.decode == decode_method_gpu::DENSE) return status::ok();
        const int D = int(hp.head_dim);
        if (opt.decode == decode_method_gpu::QUEST && (opt.quest_page < 1 || 64 % opt.quest_page != 0))
            return error(status_code::INVALID_ARGUMENT, "cuda: Quest page %d must divide 64", opt.quest_page);
        if (opt.decode == decode_method_gpu::LOKI &&
            (opt.loki_d.size() != size_t(hp.n_layer) ||
             opt.loki_basis.size() != size_t(hp.n_layer) * hp.n_head_kv * size_t(D) * D))
            return error(status_code::INVALID_ARGUMENT, "cuda: Loki needs a rank per layer and the bases of %d layers",
                         hp.n_layer);
        for (int il = 0; il < hp.n_layer; ++il) {
            dev_layer & L = layers[size_t(il)];
            if (L.swa) continue;
            if (opt.decode == decode_method_gpu::LOKI) {
                const int d = opt.loki_d[size_t(il)];
                if (d <= 0) continue;
                const int          dp = std::min(D, (d + 7) / 8 * 8);
                std::vector<float> proj(size_t(hp.n_head_kv) * D * dp, 0.0f);
                for (int g = 0; g < hp.n_head_kv; ++g) {
                    const float * P = opt.loki_basis.data() + (size_t(il) * hp.n_head_kv + g) * size_t(D) * D;
                    for (int i = 0; i < D; ++i)
                        for (int j = 0; j < std::min(d, D); ++j)
                            proj[(size_t(g) * D + i) * dp + j] = P[size_t(i) * D + j];
                }
                LC_ASSIGN_OR_RETURN(float * dproj, alloc<float>(int64_t(proj.size()), &n_kv_bytes));
                LC_CUDA_CHECK(cudaMemcpy(dproj, proj.data(), proj.size() * 4, cudaMemcpyHostToDevice));
                LC_ASSIGN_OR_RETURN(fp16_t * keys,
                                    alloc<fp16_t>(n_pages * hp.n_head_kv * int64_t(dp) * kv_page_tokens, &n_kv_bytes));
                LC_CUDA_CHECK(cudaMemsetAsync(keys, 0, size_t(n_pages * hp.n_head_kv * dp * kv_page_tokens) * 2, stream));
                L.loki = loki_store_gpu{keys, dproj, dp, n_pages};
            } else if (opt.decode == decode_method_gpu::QUEST) {
                const int64_t n = n_pages * hp.n_head_kv * (kv_page_tokens / opt.quest_page) * 2 * D;
                LC_ASSIGN_OR_RETURN(bf16_t * b, alloc<bf16_t>(n, &n_kv_bytes));
                LC_CUDA_CHECK(cudaMemsetAsync(b, 0, size_t(n) * 2, stream));
                L.quest = quest_store_gpu{b, opt.quest_page, n_pages};
            }
            L.sparse = true;
        }
        const int group = opt.decode_kv_select ? hp.n_head / hp.n_head_kv : 1;
        for (int64_t span = 4096;; span *= 2) {
            const int64_t           sp = std::min(span, opt.n_ctx);
            const decode_select_args a = select_args(0, nullptr, sp);
            const int64_t rows = decode_select_rows_max(a, opt.decode == decode_method_gpu::QUEST ? opt.quest_page : 1);
            const int     ns   = attn_sparse_decode_n_split(1, hp.n_head, group, D, rows);
            sdec_ws_bytes      = std::max(sdec_ws_bytes, attn_sparse_decode_workspace_bytes(1, hp.n_head, D, ns));
            if (sp == opt.n_ctx) break;
        }
        LC_ASSIGN_OR_RETURN(sdec_ws, alloc<uint8_t>(int64_t(sdec_ws_bytes)));
        return status::ok();
    }

    // The selectors' view of layer L (k_pool, nullptr for none) with n_kv read from d_nkv.
    decode_select_args select_args(int il, const bf16_t * k_pool, int64_t n_kv_max) const {
        decode_select_args a;
        a.q             = q;
        a.n_seq         = 1;
        a.n_head        = hp.n_head;
        a.n_head_kv     = hp.n_head_kv;
        a.head_dim      = int(hp.head_dim);
        a.k_pool        = k_pool;
        a.pages         = pages;
        a.pages_stride  = n_pages;
        a.n_kv          = d_nkv;
        a.n_kv_max      = n_kv_max;
        a.group         = opt.decode_kv_select ? hp.n_head / hp.n_head_kv : 1;
        a.n_sink        = opt.decode_sink;
        a.n_local       = opt.decode_local;
        a.budget_frac   = opt.decode_frac;
        a.budget_tokens = opt.decode_tokens;
        a.scale         = hp.attn_scale > 0.0f ? hp.attn_scale : 1.0f / std::sqrt(float(hp.head_dim));
        (void)il;
        return a;
    }

    // Rotated keys (Loki) or page bounds (Quest) of tokens [t0, n_kv) in every sparse layer, n_kv from d_nkv.
    // Runs after the forward pass that wrote those keys: the newest tokens are in the local window, which every
    // step attends densely, so a step never selects among keys it has not taken in.
    status enqueue_take_in(int64_t t0, int64_t n_kv_max) {
        for (const dev_layer & L : layers) {
            if (!L.sparse) continue;
            const decode_select_args a = select_args(0, L.k_pool, n_kv_max);
            if (opt.decode == decode_method_gpu::LOKI) LC_RETURN_IF_ERROR(loki_take_in_gpu(a, L.loki, t0, stream));
            if (opt.decode == decode_method_gpu::QUEST) LC_RETURN_IF_ERROR(quest_take_in_gpu(a, L.quest, t0, stream));
        }
        return status::ok();
    }

    // Uploads rows of a weight matrix (any GGUF type) as bf16 into dst + row0 * n_in.
    static void dequant_upload(const cpu::matmul_weight & w, bf16_t * dst, int64_t row0, cudaStream_t s) {
        const int64_t            n_in = w.n_in, n_out = w.n_out;
        std::vector<bf16_t>      host(size_t(n_in * n_out));
        const int                n_thr = int(std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
        std::vector<std::thread> thr;
        for (int it = 0; it < n_thr; ++it) {
            thr.emplace_back([&, it] {
                std::vector<float> row(static_cast<size_t>(n_in));
                for (int64_t r = it; r < n_out; r += n_thr) {
                    ref::dequantize_row(w.type, static_cast<const uint8_t *>(w.data) + size_t(r) * w.row_bytes(),
                                        row.data(), n_in);
                    for (int64_t i = 0; i < n_in; ++i) host[size_t(r * n_in + i)] = fp32_to_bf16(row[size_t(i)]);
                }
            });
        }
        for (auto & t : thr) t.join();
        LC_CUDA_CHECK(cudaMemcpyAsync(dst + row0 * n_in, host.data(), host.size() * 2, cudaMemcpyHostToDevice, s));
        LC_CUDA_CHECK(cudaStreamSynchronize(s)); // host buffer goes out of scope
    }

    result<float *> upload_vec(const float * v, int64_t n) {
        if (!v) return static_cast<float *>(nullptr);
        LC_ASSIGN_OR_RETURN(float * d, alloc<float>(n, &n_weight_bytes));
        LC_CUDA_CHECK(cudaMemcpy(d, v, size_t(n) * 4, cudaMemcpyHostToDevice));
        return d;
    }

    result<bf16_t *> upload_mat(std::initializer_list<const cpu::matmul_weight *> ws) {
        int64_t n_rows = 0, n_in = ws.begin()[0]->n_in;
        for (auto * w : ws) {
            LC_ASSERT(w->n_in == n_in, "cuda: fused weights with n_in %lld and %lld", (long long)w->n_in,
                      (long long)n_in);
            if (!ref::dequantize_supported(w->type))
                return error(status_code::UNSUPPORTED, "cuda: no dequantizer for weight type %s", dtype_name(w->type));
            n_rows += w->n_out;
        }
        LC_ASSIGN_OR_RETURN(bf16_t * d, alloc<bf16_t>(n_rows * n_in, &n_weight_bytes));
        int64_t row0 = 0;
        for (auto * w : ws) {
            dequant_upload(*w, d, row0, stream);
            row0 += w->n_out;
        }
        return d;
    }

    status upload(const model & m) {
        const int64_t E = hp.n_embd, D = hp.head_dim;
        LC_ASSIGN_OR_RETURN(tok_embd, upload_mat({&m.tok_embd()}));
        if (hp.tied_embeddings) {
            output = tok_embd;
        } else {
            LC_ASSIGN_OR_RETURN(output, upload_mat({&m.output()}));
        }
        LC_ASSIGN_OR_RETURN(output_norm, upload_vec(m.output_norm(), E));
        for (int il = 0; il < hp.n_layer; ++il) {
            const layer_weights & W   = m.layers()[size_t(il)];
            dev_layer &           L   = layers[size_t(il)];
            const int64_t         n_q = int64_t(hp.n_head) * D, n_kv = int64_t(hp.n_head_kv) * D;
            LC_ASSIGN_OR_RETURN(L.attn_norm, upload_vec(W.attn_norm, E));
            LC_ASSIGN_OR_RETURN(L.wqkv, upload_mat({&W.wq, &W.wk, &W.wv}));
            LC_ASSIGN_OR_RETURN(L.bq, upload_vec(W.bq, n_q));
            LC_ASSIGN_OR_RETURN(L.bk, upload_vec(W.bk, n_kv));
            LC_ASSIGN_OR_RETURN(L.bv, upload_vec(W.bv, n_kv));
            LC_ASSIGN_OR_RETURN(L.q_norm, upload_vec(W.attn_q_norm, D));
            LC_ASSIGN_OR_RETURN(L.k_norm, upload_vec(W.attn_k_norm, D));
            LC_ASSIGN_OR_RETURN(L.wo, upload_mat({&W.wo}));
            LC_ASSIGN_OR_RETURN(L.attn_post_norm, upload_vec(W.attn_post_norm, E));
            LC_ASSIGN_OR_RETURN(L.ffn_norm, upload_vec(W.ffn_norm, E));
            LC_ASSIGN_OR_RETURN(L.wgu, upload_mat({&W.ffn_gate, &W.ffn_up}));
            LC_ASSIGN_OR_RETURN(L.wdown, upload_mat({&W.ffn_down}));
            LC_ASSIGN_OR_RETURN(L.ffn_post_norm, upload_vec(W.ffn_post_norm, E));
            L.swa = W.swa;
        }
        return status::ok();
    }

    status make_synthetic(uint64_t seed) {
        const int64_t E = hp.n_embd, D = hp.head_dim, F = hp.n_ff, V = hp.n_vocab;
        const int64_t n_q = int64_t(hp.n_head) * D, n_kv = int64_t(hp.n_head_kv) * D;
        uint64_t      k   = seed * 1000003ull;
        auto          mat = [&](int64_t rows, int64_t n_in) -> result<bf16_t *> {
            LC_ASSIGN_OR_RETURN(bf16_t * d, alloc<bf16_t>(rows * n_in, &n_weight_bytes));
            fill_uniform_bf16(d, rows * n_in, ++k, std::sqrt(3.0f / float(n_in)), stream);
            return d;
        };
        auto ones = [&](int64_t n) -> result<float *> {
            LC_ASSIGN_OR_RETURN(float * d, alloc<float>(n, &n_weight_bytes));
            fill_f32(d, n, 1.0f, stream);
            return d;
        };
        LC_ASSIGN_OR_RETURN(tok_embd, mat(V, E));
        if (hp.tied_embeddings) {
            output = tok_embd;
        } else {
            LC_ASSIGN_OR_RETURN(output, mat(V, E));
        }
        LC_ASSIGN_OR_RETURN(output_norm, ones(E));
        for (auto & L : layers) {
            LC_ASSIGN_OR_RETURN(L.attn_norm, ones(E));
            LC_ASSIGN_OR_RETURN(L.wqkv, mat(n_q + 2 * n_kv, E));
            LC_ASSIGN_OR_RETURN(L.wo, mat(E, n_q));
            LC_ASSIGN_OR_RETURN(L.ffn_norm, ones(E));
            LC_ASSIGN_OR_RETURN(L.wgu, mat(2 * F, E));
            LC_ASSIGN_OR_RETURN(L.wdown, mat(E, F));
        }
        LC_CUDA_CHECK(cudaStreamSynchronize(stream));
        return status::ok();
    }

    // Whether layer il prefills sparsely for a chunk ending at n_keys tokens; if so, sp_spec holds its heads with
    // their budgets effective for n_keys. A layer whose heads are all dense is not sparse.
    bool sparse_prefill_layer(int il, int64_t n_keys) {
        if (opt.prefill_heads.empty() || n_keys < opt.sparse_min_len) return false;
        sp_spec.resize(size_t(hp.n_head));
        bool any = false;
        for (int h = 0; h < hp.n_head; ++h) {
            const head_budget hb = head_budget_effective(
                opt.prefill_heads[size_t(il) * size_t(hp.n_head) + size_t(h)], opt.prefill_budget, n_keys);
            sp_spec[size_t(h)]     = head_spec_effective(int32_t(hb.pattern), hb.a, hb.b, n_keys);
            any                    = any || hb.pattern != head_pattern::DENSE;
        }
        return any;
    }

    // Enqueues the forward pass of n tokens already in d_tok / d_pos at positions pos0.. (n_kv after it:
    // pos0 + n). decode: n == 1 through attn_decode reading n_kv (<= span) from d_nkv (graph-capturable). Leaves the
    // final hidden states in x.
    status enqueue_layers(int64_t n, int64_t pos0, bool decode, int64_t span = 0) {
        embed_rows(tok_embd, d_tok, n, int(hp.n_embd), hp.embd_scale, x, stream);
        for (int il = 0; il < hp.n_layer; ++il) LC_RETURN_IF_ERROR(enqueue_layer(il, n, pos0, decode, span));
        return status::ok();
    }

    // Layer il of the forward pass on the hidden states in x (n rows, positions in d_pos), updated in place.
    status enqueue_layer(int il, int64_t n, int64_t pos0, bool decode, int64_t span) {
        const int64_t E = hp.n_embd, D = hp.head_dim, n_q = int64_t(hp.n_head) * D, n_kv = int64_t(hp.n_head_kv) * D;
        const int64_t F     = hp.n_ff;
        const int64_t ld    = n_q + 2 * n_kv;
        const float   scale = hp.attn_scale > 0.0f ? hp.attn_scale : 1.0f / std::sqrt(float(D));
        const bool    gemma = hp.arch == model_arch::GEMMA3;
        {
            const dev_layer & L = layers[size_t(il)];
            // attention block
            rmsnorm_rows(x, E, L.attn_norm, n, int(E), hp.norm_eps, xn, E, true, stream);
            gemm->run(L.wqkv, ld, E, xn, E, n, qkv, ld, 0.0f, stream);
            const float     base = L.swa ? hp.rope_freq_base_swa : hp.rope_freq_base;
            qkv_finish_args qa;
            qa.qkv         = qkv;
            qa.ld          = ld;
            qa.n           = n;
            qa.pos         = d_pos;
            qa.n_head      = hp.n_head;
            qa.n_head_kv   = hp.n_head_kv;
            qa.head_dim    = int(D);
            qa.n_rot       = hp.n_rot;
            qa.theta_scale = std::pow(base, -2.0f / float(hp.n_rot));
            qa.neox        = hp.rope_mode == cpu::rope_mode::NEOX;
            qa.bq          = L.bq;
            qa.bk          = L.bk;
            qa.bv          = L.bv;
            qa.q_norm      = L.q_norm;
            qa.k_norm      = L.k_norm;
            qa.eps         = hp.norm_eps;
            qa.q_out       = q;
            qa.k_pool      = L.k_pool;
            qa.v_pool      = L.v_pool;
            qa.pages       = pages;
            qkv_finish(qa, stream);
            const int64_t window = L.swa ? hp.n_swa : 0;
            if (decode && L.sparse) {
                const decode_select_args a = select_args(il, L.k_pool, span > 0 ? span : opt.n_ctx);
                const int page = opt.decode == decode_method_gpu::QUEST ? opt.quest_page : 1;
                if (opt.decode == decode_method_gpu::LOKI)
                    LC_RETURN_IF_ERROR(loki_select_gpu(a, L.loki, sel_ws, sel_plan, stream));
                else if (opt.decode == decode_method_gpu::QUEST)
                    LC_RETURN_IF_ERROR(quest_select_gpu(a, L.quest, sel_ws, sel_plan, stream));
                else
                    LC_RETURN_IF_ERROR(topk_select_gpu(a, sel_ws, sel_plan, stream));
                attn_sparse_decode_args sd;
                sd.q               = q;
                sd.n_seq           = 1;
                sd.n_head          = hp.n_head;
                sd.k_pool          = L.k_pool;
                sd.v_pool          = L.v_pool;
                sd.n_head_kv       = hp.n_head_kv;
                sd.head_dim        = int(D);
                sd.pages           = pages;
                sd.pages_stride    = n_pages;
                sd.plan            = decode_plan_view(sel_plan, a.group, decode_select_rows_max(a, page), false);
                sd.scale           = scale;
                sd.o               = att;
                sd.o_f32           = false;
                sd.workspace       = sdec_ws;
                sd.workspace_bytes = sdec_ws_bytes;
                LC_RETURN_IF_ERROR(attn_sparse_decode(sd, stream));
            } else if (decode) {
                attn_decode_args da;
                da.q               = q;
                da.n_seq           = 1;
                da.n_head          = hp.n_head;
                da.k_pool          = L.k_pool;
                da.v_pool          = L.v_pool;
                da.n_head_kv       = hp.n_head_kv;
                da.head_dim        = int(D);
                da.pages           = pages;
                da.pages_stride    = n_pages;
                da.n_kv            = d_nkv;
                da.n_kv_max        = span > 0 ? span : opt.n_ctx;
                da.scale           = scale;
                da.window          = window;
                da.o               = att;
                da.o_f32           = false;
                da.workspace       = dec_ws;
                da.workspace_bytes = dec_ws_bytes;
                LC_RETURN_IF_ERROR(attn_decode(da, stream));
            } else if (window == 0 && sparse_prefill_layer(il, pos0 + n)) {
                vslash_attention_args va;
                va.q           = q;
                va.n_q         = n;
                va.pos0        = pos0;
                va.n_head      = hp.n_head;
                va.kv          = attn_kv_paged{L.k_pool, L.v_pool, pages, n_pages, pos0 + n, hp.n_head_kv, int(D)};
                va.scale       = scale;
                va.dense_ratio = opt.prefill_dense_ratio;
                va.o           = att;
                va.o_f32       = false;
                vslash_attention_info info;
                LC_RETURN_IF_ERROR(minference_attention_gpu(va, sp_spec.data(), sp_ws, sp_plan, stream, &info));
                ++n_sparse_layers;
                n_sparse_dense += info.dense ? 1 : 0;
            } else {
                attn_prefill_args pa;
                pa.q      = q;
                pa.n_q    = n;
                pa.pos0   = pos0;
                pa.n_head = hp.n_head;
                pa.kv     = attn_kv_paged{L.k_pool, L.v_pool, pages, n_pages, pos0 + n, hp.n_head_kv, int(D)};
                pa.scale  = scale;
                pa.window = window;
                pa.o      = att;
                pa.o_f32  = false;
                LC_RETURN_IF_ERROR(attn_prefill(pa, attn_prefill_kernel::AUTO, stream));
            }
            if (gemma) {
                gemm->run(L.wo, E, n_q, att, n_q, n, tmp, E, 0.0f, stream);
                rmsnorm_add_rows(x, tmp, L.attn_post_norm, n, int(E), hp.norm_eps, stream);
            } else {
                gemm->run(L.wo, E, n_q, att, n_q, n, x, E, 1.0f, stream); // x += attn · Woᵀ
            }
            // FFN block
            rmsnorm_rows(x, E, L.ffn_norm, n, int(E), hp.norm_eps, xn, E, true, stream);
            gemm->run(L.wgu, 2 * F, E, xn, E, n, gu, 2 * F, 0.0f, stream);
            glu_rows(gu, n, int(F), gemma ? glu_act::GELU_TANH : glu_act::SILU, h, stream);
            if (gemma) {
                gemm->run(L.wdown, E, F, h, F, n, tmp, E, 0.0f, stream);
                rmsnorm_add_rows(x, tmp, L.ffn_post_norm, n, int(E), hp.norm_eps, stream);
            } else {
                gemm->run(L.wdown, E, F, h, F, n, x, E, 1.0f, stream); // x += h · Wdownᵀ
            }
        }
        return status::ok();
    }

    // Logits of rows r0..r0+nr of x (nr <= k_logit_rows) into the device logits buffer.
    void enqueue_head(int64_t r0, int64_t nr) {
        const int64_t E = hp.n_embd;
        rmsnorm_rows(x + r0 * E, E, output_norm, nr, int(E), hp.norm_eps, xn, E, true, stream);
        gemm->run(output, hp.n_vocab, E, xn, E, nr, logits, hp.n_vocab, 0.0f, stream);
    }

    // The next token from the logits in row 0 of the logits buffer: argmax, or the sampler chain with the
    // settings in d_smp (copied there before the step).
    void enqueue_sample(bool sample) {
        if (sample)
            sample_row(logits, hp.n_vocab, d_smp, h_smp->top_k, smp_ws, smp_ws_bytes, d_next, stream);
        else
            argmax_rows(logits, 1, hp.n_vocab, d_next, stream);
        LC_CUDA_CHECK(cudaMemcpyAsync(h_next, d_next, 4, cudaMemcpyDeviceToHost, stream));
    }

    // Settings of one draw into the pinned buffer and on to the device (before the graph that reads them).
    void upload_sampling(const device_sampling & s) {
        *h_smp = make_sample_params(s.temp, s.top_k, s.top_p, s.min_p, s.u);
        LC_CUDA_CHECK(cudaMemcpyAsync(d_smp, h_smp, sizeof(sample_params), cudaMemcpyHostToDevice, stream));
    }

    status decode_step(int32_t token, float * logits_host, int32_t * next, const device_sampling * smp) {
        const bool sample = smp != nullptr;
        if (sample) upload_sampling(*smp);
        h_in[0] = token;
        h_in[1] = int32_t(n_past);
        h_in[2] = int32_t(n_past + 1);
        LC_CUDA_CHECK(cudaMemcpyAsync(d_tok, &h_in[0], 4, cudaMemcpyHostToDevice, stream));
        LC_CUDA_CHECK(cudaMemcpyAsync(d_pos, &h_in[1], 4, cudaMemcpyHostToDevice, stream));
        LC_CUDA_CHECK(cudaMemcpyAsync(d_nkv, &h_in[2], 4, cudaMemcpyHostToDevice, stream));
        int64_t span = 4096;
        while (span < n_past + 1) span *= 2;
        span      = std::min(span, opt.n_ctx);
        auto body = [&]() -> status {
            LC_RETURN_IF_ERROR(enqueue_layers(1, n_past, true, span));
            enqueue_head(0, 1);
            enqueue_sample(sample);
            return status::ok();
        };
        // The first step runs eagerly (GEMM plans, kernel attributes), and with sparse decode the first of each span
        // (the selectors size their workspaces for it); later ones capture a graph per span.
        const bool seen = opt.decode == decode_method_gpu::DENSE ||
                          std::find(eager_spans.begin(), eager_spans.end(), span) != eager_spans.end();
        if (!opt.graphs || n_decode_eager == 0 || !seen) {
            LC_RETURN_IF_ERROR(body());
            ++n_decode_eager;
            if (!seen) eager_spans.push_back(span);
        } else {
            const int64_t key = 4 * span + (sample ? 1 + sample_row_path(int(hp.n_vocab), h_smp->top_k) : 0);
            auto          it  = graphs.find(key);
            if (it == graphs.end()) {
                cudaGraph_t     g  = nullptr;
                cudaGraphExec_t ge = nullptr;
                LC_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
                const status st = body();
                LC_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
                if (!st.is_ok()) {
                    cudaGraphDestroy(g);
                    return st;
                }
                LC_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
                it = graphs.emplace(key, std::make_pair(g, ge)).first;
            }
            LC_CUDA_CHECK(cudaGraphLaunch(it->second.second, stream));
        }
        LC_RETURN_IF_ERROR(enqueue_take_in(n_past, span));
        if (logits_host)
            LC_CUDA_CHECK(cudaMemcpyAsync(logits_host, logits, size_t(hp.n_vocab) * 4, cudaMemcpyDeviceToHost, stream));
        LC_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (next) *next = *h_next;
        n_past += 1;
        last_row = 0;
        return status::ok();
    }

    // opt.layer_major: the whole prompt through layer 0 chunk by chunk, then through layer 1, ...; the same chunks
    // and the same kernels as forward(), so the same result.
    status forward_layer_major(const int32_t * tokens, int64_t n, int64_t pos0, int64_t n_logits, float * logits_host,
                               int32_t * next, const device_sampling * smp) {
        if (pos0 != 0)
            return error(status_code::INVALID_ARGUMENT,
                         "cuda: a layer-major prefill runs one prompt from position 0 and keeps no cache to continue "
                         "from (clear() to start over)");
        if (n_logits > 1)
            return error(status_code::INVALID_ARGUMENT, "cuda: a layer-major prefill gives the last token's logits only");
        if (next && smp) upload_sampling(*smp);
        const int64_t E     = hp.n_embd;
        float * const x_own = x;
        for (int64_t c0 = 0; c0 < n; c0 += n_ub) {
            const int64_t nc = std::min(n_ub, n - c0);
            LC_CUDA_CHECK(cudaMemcpyAsync(d_tok, tokens + c0, size_t(nc) * 4, cudaMemcpyHostToDevice, stream));
            embed_rows(tok_embd, d_tok, nc, int(E), hp.embd_scale, x_all + c0 * E, stream);
        }
        status st = status::ok();
        for (int il = 0; il < hp.n_layer && st.is_ok(); ++il)
            for (int64_t c0 = 0; c0 < n && st.is_ok(); c0 += n_ub) {
                const int64_t nc = std::min(n_ub, n - c0);
                LC_CUDA_CHECK(cudaMemcpyAsync(d_pos, h_pos_all + c0, size_t(nc) * 4, cudaMemcpyHostToDevice, stream));
                x  = x_all + c0 * E;
                st = enqueue_layer(il, nc, c0, false, 0);
            }
        if (st.is_ok()) {
            x = x_all + (n - 1) * E;
            enqueue_head(0, 1);
            if (logits_host && n_logits == 1)
                LC_CUDA_CHECK(
                    cudaMemcpyAsync(logits_host, logits, size_t(hp.n_vocab) * 4, cudaMemcpyDeviceToHost, stream));
            if (next) enqueue_sample(smp != nullptr);
            last_row = 0;
        }
        x = x_own;
        LC_RETURN_IF_ERROR(st);
        LC_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (next) *next = *h_next;
        n_past = n;
        return status::ok();
    }

    status forward(const int32_t * tokens, int64_t n, int64_t pos0, int64_t n_logits, float * logits_host,
                   int32_t * next, const device_sampling * smp) {
        if (pos0 != n_past)
            return error(status_code::INVALID_ARGUMENT, "cuda: forward at position %lld but the sequence holds %lld",
                         (long long)pos0, (long long)n_past);
        if (n <= 0) return status::ok();
        if (pos0 + n > opt.n_ctx)
            return error(status_code::OUT_OF_RANGE, "cuda: %lld tokens exceed the KV cache of %lld; raise -c",
                         (long long)(pos0 + n), (long long)opt.n_ctx);
        if (n_logits < 0 || n_logits > n)
            return error(status_code::INVALID_ARGUMENT, "cuda: n_logits %lld of %lld tokens", (long long)n_logits,
                         (long long)n);
        for (int64_t i = 0; i < n; ++i)
            if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
                return error(status_code::INVALID_ARGUMENT, "cuda: token %d out of the vocabulary (%d)", tokens[i],
                             hp.n_vocab);
        if (smp && !(smp->temp > 0.0f && smp->top_k >= 0 && smp->top_p > 0.0f && smp->top_p <= 1.0f &&
                     smp->min_p >= 0.0f && smp->min_p <= 1.0f && smp->u >= 0.0 && smp->u < 1.0))
            return error(status_code::INVALID_ARGUMENT,
                         "cuda: sampling settings temp %g, top_k %d, top_p %g, min_p %g, u %g out of range",
                         double(smp->temp), smp->top_k, double(smp->top_p), double(smp->min_p), smp->u);
        last_row = -1;
        if (opt.layer_major) return forward_layer_major(tokens, n, pos0, n_logits, logits_host, next, smp);
        if (n == 1) return decode_step(tokens[0], n_logits ? logits_host : nullptr, next, smp);
        if (next && smp) upload_sampling(*smp);

        std::vector<int32_t> pos(static_cast<size_t>(n_ub));
        const int64_t        first_logit = n - n_logits; // token index of the first logits row
        for (int64_t c0 = 0; c0 < n; c0 += n_ub) {
            const int64_t nc = std::min(n_ub, n - c0);
            for (int64_t i = 0; i < nc; ++i) pos[size_t(i)] = int32_t(pos0 + c0 + i);
            LC_CUDA_CHECK(cudaMemcpyAsync(d_tok, tokens + c0, size_t(nc) * 4, cudaMemcpyHostToDevice, stream));
            LC_CUDA_CHECK(cudaMemcpyAsync(d_pos, pos.data(), size_t(nc) * 4, cudaMemcpyHostToDevice, stream));
            LC_RETURN_IF_ERROR(enqueue_layers(nc, pos0 + c0, false));
            if (opt.decode != decode_method_gpu::DENSE) {
                h_in[3] = int32_t(pos0 + c0 + nc);
                LC_CUDA_CHECK(cudaMemcpyAsync(d_nkv, &h_in[3], 4, cudaMemcpyHostToDevice, stream));
                LC_RETURN_IF_ERROR(enqueue_take_in(pos0 + c0, opt.n_ctx));
            }
            // logits rows in this chunk
            for (int64_t r = std::max<int64_t>(first_logit - c0, 0); r < nc && logits_host; r += k_logit_rows) {
                const int64_t nr = std::min(k_logit_rows, nc - r);
                enqueue_head(r, nr);
                LC_CUDA_CHECK(cudaMemcpyAsync(logits_host + (c0 + r - first_logit) * hp.n_vocab, logits,
                                              size_t(nr * hp.n_vocab) * 4, cudaMemcpyDeviceToHost, stream));
                if (c0 + nc == n && r + nr == nc) last_row = nr - 1;
            }
            if (next && c0 + nc == n) {
                enqueue_head(nc - 1, 1);
                enqueue_sample(smp != nullptr);
                last_row = 0;
            }
            LC_CUDA_CHECK(cudaStreamSynchronize(stream)); // pos[] is reused
        }
        if (next) *next = *h_next;
        n_past = pos0 + n;
        return status::ok();
    }
};

cuda_model::cuda_model() : p_(std::make_unique<impl>()) {}
cuda_model::~cuda_model() = default;

result<std::unique_ptr<cuda_model>> cuda_model::upload(const model & m, const cuda_model_options & opt) {
    if (!device_available()) return error(status_code::UNSUPPORTED, "cuda: no CUDA device found");
    std::unique_ptr<cuda_model> cm(new cuda_model());
    cm->p_->hp  = m.hparams();
    cm->p_->opt = opt;
    LC_RETURN_IF_ERROR(cm->p_->init_common());
    LC_RETURN_IF_ERROR(cm->p_->upload(m));
    LC_RETURN_IF_ERROR(cm->p_->init_buffers());
    return cm;
}

result<std::unique_ptr<cuda_model>> cuda_model::synthetic(const model_hparams & hp, const cuda_model_options & opt,
                                                          uint64_t seed) {
    if (!device_available()) return error(status_code::UNSUPPORTED, "cuda: no CUDA device found");
    std::unique_ptr<cuda_model> cm(new cuda_model());
    cm->p_->hp        = hp;
    cm->p_->opt       = opt;
    cm->p_->synthetic = true;
    LC_RETURN_IF_ERROR(cm->p_->init_common());
    LC_RETURN_IF_ERROR(cm->p_->make_synthetic(seed));
    LC_RETURN_IF_ERROR(cm->p_->init_buffers());
    return cm;
}

const model_hparams & cuda_model::hparams() const {
    return p_->hp;
}
bool cuda_model::is_synthetic() const {
    return p_->synthetic;
}
std::string cuda_model::device_name() const {
    cudaDeviceProp prop{};
    LC_CUDA_CHECK(cudaGetDeviceProperties(&prop, p_->opt.device));
    return prop.name;
}
uint64_t cuda_model::weight_bytes() const {
    return p_->n_weight_bytes;
}
uint64_t cuda_model::kv_bytes() const {
    return p_->n_kv_bytes;
}
status cuda_model::forward(const int32_t * tokens, int64_t n, int64_t pos0, int64_t n_logits, float * logits,
                           int32_t * next, const device_sampling * sampling) {
    return p_->forward(tokens, n, pos0, n_logits, logits, next, sampling);
}
status cuda_model::last_logits(float * logits) {
    if (p_->last_row < 0)
        return error(status_code::INVALID_ARGUMENT, "cuda: the last forward() computed no logits of its last token");
    LC_CUDA_CHECK(cudaMemcpyAsync(logits, p_->logits + p_->last_row * p_->hp.n_vocab, size_t(p_->hp.n_vocab) * 4,
                                  cudaMemcpyDeviceToHost, p_->stream));
    LC_CUDA_CHECK(cudaStreamSynchronize(p_->stream));
    return status::ok();
}
int64_t cuda_model::n_past() const {
    return p_->n_past;
}
void cuda_model::clear() {
    p_->n_past   = 0;
    p_->last_row = -1;
}
cuda_model::prefill_counts cuda_model::sparse_prefill_stats() const {
    return {p_->n_sparse_layers, p_->n_sparse_dense};
}
void cuda_model::truncate(int64_t n) {
    p_->n_past   = std::clamp<int64_t>(n, 0, p_->n_past);
    p_->last_row = -1;
}
void cuda_model::sync() {
    LC_CUDA_CHECK(cudaStreamSynchronize(p_->stream));
}

} // namespace lc::cuda
