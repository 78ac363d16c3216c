// Sparse prefill attention over a device prefill plan (attn-sparse-prefill.cuh): the dense mma.sync kernel's
// FlashAttention-2 loop (4 warps of 16 query rows, m16n8k16 bf16, cp.async double buffer), fed 64-key steps that
// are either a window of a key range or 64 gathered columns. Every key row is addressed through the page table,
// so ranges need no page alignment; the key positions of a step sit in shared memory for the mask. The Hopper
// variant (namespace wg) runs the same steps on one warpgroup with wgmma; the paired one (namespace wgp) serves two
// adjacent query blocks per CTA and gathers each K/V window of the union of their keys once.
#include "backend/cuda/attn-sparse-prefill.cuh"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "backend/cuda/attn-prefill-impl.cuh"

namespace lc::cuda {

prefill_plan_buf::~prefill_plan_buf() {
    cudaFree(range_off);
    cudaFree(ranges);
    cudaFree(col_off);
    cudaFree(cols);
    cudaFree(counter);
}

void prefill_plan_buf::reserve(int64_t n_q, int64_t pos0, int n_head, int64_t n_ranges_, int64_t n_cols_) {
    const int64_t n_items = n_head * ((n_q + prefill_qblock - 1) / prefill_qblock) + 1;
    if (n_items > cap_items) {
        LC_CUDA_CHECK(cudaFree(range_off));
        LC_CUDA_CHECK(cudaFree(col_off));
        LC_CUDA_CHECK(cudaMalloc(&range_off, size_t(n_items) * sizeof(int64_t)));
        LC_CUDA_CHECK(cudaMalloc(&col_off, size_t(n_items) * sizeof(int64_t)));
        cap_items = n_items;
    }
    if (n_ranges_ > cap_ranges) {
        LC_CUDA_CHECK(cudaFree(ranges));
        LC_CUDA_CHECK(cudaMalloc(&ranges, size_t(n_ranges_) * 2 * sizeof(int32_t)));
        cap_ranges = n_ranges_;
    }
    if (n_cols_ > cap_cols) {
        LC_CUDA_CHECK(cudaFree(cols));
        LC_CUDA_CHECK(cudaMalloc(&cols, size_t(n_cols_) * sizeof(int32_t)));
        cap_cols = n_cols_;
    }
    n_ranges       = n_ranges_;
    n_cols         = n_cols_;
    view.n_q       = n_q;
    view.pos0      = pos0;
    view.n_head    = n_head;
    view.range_off = range_off;
    view.ranges    = ranges;
    view.col_off   = col_off;
    view.cols      = cols;
}

void prefill_plan_upload(const prefill_plan & plan, prefill_plan_buf & out) {
    const int64_t        n_qblk = plan.n_qblk();
    std::vector<int64_t> ro(1, 0), co(1, 0);
    std::vector<int32_t> rg, cl;
    for (int h = 0; h < plan.n_head; ++h) {
        const prefill_head_plan & hp = plan.heads[size_t(h)];
        for (int64_t b = 0; b < n_qblk; ++b) {
            for (int64_t i = hp.range_off[size_t(b)]; i < hp.range_off[size_t(b) + 1]; ++i) {
                rg.push_back(hp.ranges[size_t(i)].begin);
                rg.push_back(hp.ranges[size_t(i)].end);
            }
            for (int64_t i = hp.col_off[size_t(b)]; i < hp.col_off[size_t(b) + 1]; ++i) cl.push_back(hp.cols[size_t(i)]);
            ro.push_back(int64_t(rg.size() / 2));
            co.push_back(int64_t(cl.size()));
        }
    }
    out.reserve(plan.n_q, plan.pos0, plan.n_head, int64_t(rg.size() / 2), int64_t(cl.size()));
    LC_CUDA_CHECK(cudaMemcpy(out.range_off, ro.data(), ro.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    LC_CUDA_CHECK(cudaMemcpy(out.col_off, co.data(), co.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    if (!rg.empty())
        LC_CUDA_CHECK(cudaMemcpy(out.ranges, rg.data(), rg.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    if (!cl.empty())
        LC_CUDA_CHECK(cudaMemcpy(out.cols, cl.data(), cl.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
}

void prefill_plan_download(const prefill_plan_buf & in, prefill_plan & plan) {
    const prefill_plan_dev & v      = in.view;
    const int64_t            n_qblk = v.n_qblk();
    const size_t             n_it   = size_t(v.n_head * n_qblk + 1);
    std::vector<int64_t>     ro(n_it), co(n_it);
    LC_CUDA_CHECK(cudaMemcpy(ro.data(), v.range_off, n_it * sizeof(int64_t), cudaMemcpyDeviceToHost));
    LC_CUDA_CHECK(cudaMemcpy(co.data(), v.col_off, n_it * sizeof(int64_t), cudaMemcpyDeviceToHost));
    std::vector<int32_t> rg(size_t(ro.back()) * 2), cl(size_t(co.back()));
    if (!rg.empty())
        LC_CUDA_CHECK(cudaMemcpy(rg.data(), v.ranges, rg.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    if (!cl.empty()) LC_CUDA_CHECK(cudaMemcpy(cl.data(), v.cols, cl.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    plan.reset(v.n_q, v.pos0, v.n_head);
    for (int h = 0; h < v.n_head; ++h) {
        prefill_head_plan & hp = plan.heads[size_t(h)];
        hp.clear();
        for (int64_t b = 0; b < n_qblk; ++b) {
            const size_t it = size_t(h * n_qblk + b);
            for (int64_t i = ro[it]; i < ro[it + 1]; ++i)
                hp.ranges.push_back(key_range{rg[size_t(2 * i)], rg[size_t(2 * i + 1)]});
            for (int64_t i = co[it]; i < co[it + 1]; ++i) hp.cols.push_back(cl[size_t(i)]);
            hp.end_item();
        }
    }
}

namespace {

constexpr int n_threads = 128;
__host__ __device__ constexpr int tile_bytes_for(int D) {
    return 64 * D * 2;
}
__host__ __device__ constexpr int smem_bytes_for(int D) {
    return 5 * tile_bytes_for(D) + 2 * 64 * 4; // Q, K[2], V[2], key positions[2]
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The 64-key steps of one item: the ranges in order, each cut into windows of 64 keys, then the columns 64 at a
// time. All threads of the CTA walk the same sequence.
struct step_iter {
    const int32_t * ranges;
    const int32_t * cols;
    int64_t         ri, r_end; // range index
    int64_t         a, b;      // range: keys [a, b); columns: cols[a .. b)
    int64_t         c_begin, c_end;
    bool            col, done;

    __device__ void init(const int32_t * ranges_, const int32_t * cols_, int64_t r0, int64_t r1, int64_t c0,
                         int64_t c1) {
        ranges  = ranges_;
        cols    = cols_;
        ri      = r0;
        r_end   = r1;
        c_begin = c0;
        c_end   = c1;
        col     = false;
        done    = false;
        if (ri < r_end) {
            a = ranges[2 * ri];
            b = ranges[2 * ri + 1];
        } else {
            to_cols();
        }
    }
    __device__ void to_cols() {
        col = true;
        a   = c_begin;
        b   = c_end;
        if (a >= b) done = true;
    }
    __device__ void next() {
        a += 64;
        if (a < b) return;
        if (!col && ++ri < r_end) {
            a = ranges[2 * ri];
            b = ranges[2 * ri + 1];
        } else if (!col) {
            to_cols();
        } else {
            done = true;
        }
    }
    // Key position of row r of the current step, -1 past its end.
    __device__ int32_t key(int r) const {
        if (a + r >= b) return -1;
        return col ? cols[a + r] : int32_t(a + r);
    }
};

template <int D, bool O_F32>
__global__ void __launch_bounds__(n_threads)
    attn_sparse_prefill_kernel(const __nv_bfloat16 * __restrict__ q, prefill_plan_dev plan,
                               const __nv_bfloat16 * __restrict__ k_pool, const __nv_bfloat16 * __restrict__ v_pool,
                               const int32_t * __restrict__ pages, int n_head_kv, float scale_log2,
                               void * __restrict__ o, float * __restrict__ lse) {
    constexpr int tile_bytes = tile_bytes_for(D);
    constexpr int KD         = D / 16;
    extern __shared__ __align__(128) uint8_t smem[];
    int32_t * s_key = reinterpret_cast<int32_t *>(smem + 5 * tile_bytes); // [2][64]
    const int tid   = threadIdx.x;
    const int warp  = tid >> 5;
    const int lane  = tid & 31;
    const int g     = lane >> 2;
    const int t     = lane & 3;

    const int64_t n_q    = plan.n_q;
    const int     n_head = plan.n_head;
    const int64_t n_qt   = (n_q + 63) / 64;
    const int64_t qt     = n_qt - 1 - int64_t(blockIdx.x) / n_head; // longest rows first
    const int     h      = int(blockIdx.x % n_head);
    const int     hk     = h / (n_head / n_head_kv);
    const int64_t item   = int64_t(h) * n_qt + qt;

    const uint32_t s_q      = smem_u32(smem);
    const int64_t  q_row0   = qt * 64;
    const size_t   page_el  = size_t(n_head_kv) * 64 * D;
    const size_t   head_off = size_t(hk) * 64 * D;
    {
        constexpr int CPR = D / 8, RPI = n_threads / CPR;
        const int     c = tid % CPR;
#pragma unroll
        for (int i = 0; i < 64 / RPI; ++i) {
            const int     r   = tid / CPR + RPI * i;
            const int64_t row = min(q_row0 + r, n_q - 1);
            cp_async_16(s_q + tile_off<D>(r, c), q + (size_t(row) * n_head + h) * D + c * 8, q_row0 + r < n_q ? 16 : 0);
        }
    }
    step_iter it;
    it.init(plan.ranges, plan.cols, plan.range_off[item], plan.range_off[item + 1], plan.col_off[item],
            plan.col_off[item + 1]);
    auto load_step = [&](const step_iter & s, int buf) {
        constexpr int CPR = D / 8, RPI = n_threads / CPR;
        const int     c     = tid % CPR;
        const uint32_t s_kb = s_q + (1 + buf) * tile_bytes, s_vb = s_q + (3 + buf) * tile_bytes;
#pragma unroll
        for (int i = 0; i < 64 / RPI; ++i) {
            const int     r   = tid / CPR + RPI * i;
            const int32_t key = s.key(r);
            const int32_t kk  = key < 0 ? 0 : key;
            const size_t  off = size_t(pages[kk >> 6]) * page_el + head_off + size_t(kk & 63) * D + c * 8;
            cp_async_16(s_kb + tile_off<D>(r, c), k_pool + off, key < 0 ? 0 : 16);
            cp_async_16(s_vb + tile_off<D>(r, c), v_pool + off, key < 0 ? 0 : 16);
            if (c == 0) s_key[buf * 64 + r] = key;
        }
    };
    if (!it.done) load_step(it, 0);
    cp_async_commit();

    uint32_t qf[KD][4];
    float    acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float         m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const int64_t row_pos0    = plan.pos0 + q_row0 + warp * 16 + g;
    const int64_t cta_min_pos = plan.pos0 + q_row0;
    bool          first    = true;
    int           buf      = 0;

    while (!it.done) {
        step_iter nx = it;
        nx.next();
        if (!nx.done) {
            load_step(nx, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const uint32_t s_kb = s_q + (1 + buf) * tile_bytes;
        const uint32_t s_vb = s_q + (3 + buf) * tile_bytes;
        if (first) {
#pragma unroll
            for (int kk = 0; kk < KD; ++kk)
                ldmatrix_x4(s_q + tile_off<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), qf[kk][0], qf[kk][1],
                        qf[kk][2], qf[kk][3]);
            first = false;
        }
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int nn = 0; nn < 4; ++nn) {
                uint32_t  b0, b1, b2, b3;
                const int key = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(s_kb + tile_off<D>(key, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_bf16(s[2 * nn], qf[kk], b0, b1);
                mma_bf16(s[2 * nn + 1], qf[kk], b2, b3);
            }
        }
        // mask: keys past the step's end (-1) and keys after the row (causality); a full window of a range that
        // ends at or before the block's first query needs none
        const bool need_mask = it.col || it.b - it.a < 64 || it.a + 63 > cta_min_pos;
#pragma unroll
        for (int j = 0; j < 8 && need_mask; ++j) {
            const int2    kp = *reinterpret_cast<const int2 *>(s_key + buf * 64 + j * 8 + 2 * t);
            const int64_t k0 = kp.x < 0 ? INT64_MAX : kp.x, k1 = kp.y < 0 ? INT64_MAX : kp.y;
            if (k0 > row_pos0) s[j][0] = -INFINITY;
            if (k1 > row_pos0) s[j][1] = -INFINITY;
            if (k0 > row_pos0 + 8) s[j][2] = -INFINITY;
            if (k1 > row_pos0 + 8) s[j][3] = -INFINITY;
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0   = fmaxf(m0, mx0 * scale_log2);
        const float mn1   = fmaxf(m1, mx1 * scale_log2);
        const float base0 = mn0 == -INFINITY ? 0.f : mn0;
        const float base1 = mn1 == -INFINITY ? 0.f : mn1;
        const float al0   = fast_exp2(m0 - base0);
        const float al1   = fast_exp2(m1 - base1);
        m0                = mn0;
        m1                = mn1;
        l0 *= al0;
        l1 *= al1;
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            acc[i][0] *= al0;
            acc[i][1] *= al0;
            acc[i][2] *= al1;
            acc[i][3] *= al1;
        }
        uint32_t pf[4][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float p0 = fast_exp2(s[j][0] * scale_log2 - base0);
            const float p1 = fast_exp2(s[j][1] * scale_log2 - base0);
            const float p2 = fast_exp2(s[j][2] * scale_log2 - base1);
            const float p3 = fast_exp2(s[j][3] * scale_log2 - base1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            pf[j >> 1][(j & 1) * 2 + 0] = pack_bf16x2(p0, p1);
            pf[j >> 1][(j & 1) * 2 + 1] = pack_bf16x2(p2, p3);
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
            for (int dd = 0; dd < KD; ++dd) {
                uint32_t  b0, b1, b2, b3;
                const int key = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                ldmatrix_x4_trans(s_vb + tile_off<D>(key, dd * 2 + (lane >> 4)), b0, b1, b2, b3);
                mma_bf16(acc[2 * dd], pf[kk], b0, b1);
                mma_bf16(acc[2 * dd + 1], pf[kk], b2, b3);
            }
        }
        __syncthreads();
        it = nx;
        buf ^= 1;
    }
    cp_async_wait<0>();

#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float   inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float   inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int64_t r0   = q_row0 + warp * 16 + g;
    const int64_t r1   = r0 + 8;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        const int col = i * 8 + 2 * t;
        if (O_F32) {
            float * of = static_cast<float *>(o);
            if (r0 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r0) * n_head + h) * D + col) =
                    make_float2(acc[i][0] * inv0, acc[i][1] * inv0);
            if (r1 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r1) * n_head + h) * D + col) =
                    make_float2(acc[i][2] * inv1, acc[i][3] * inv1);
        } else {
            uint32_t * ob = static_cast<uint32_t *>(o);
            if (r0 < n_q)
                ob[((size_t(r0) * n_head + h) * D + col) / 2] = pack_bf16x2(acc[i][0] * inv0, acc[i][1] * inv0);
            if (r1 < n_q)
                ob[((size_t(r1) * n_head + h) * D + col) / 2] = pack_bf16x2(acc[i][2] * inv1, acc[i][3] * inv1);
        }
    }
    if (lse != nullptr && t == 0) {
        constexpr float ln2 = 0.69314718055994531f;
        if (r0 < n_q) lse[size_t(r0) * n_head + h] = l0 > 0.f ? (m0 + __log2f(l0)) * ln2 : -INFINITY;
        if (r1 < n_q) lse[size_t(r1) * n_head + h] = l1 > 0.f ? (m1 + __log2f(l1)) * ln2 : -INFINITY;
    }
}

template <int D> void launch_sparse(const attn_sparse_prefill_args & a, cudaStream_t stream) {
    const float   scale_log2 = a.scale * 1.4426950408889634f;
    const auto *  q          = reinterpret_cast<const __nv_bfloat16 *>(a.q);
    const auto *  k          = reinterpret_cast<const __nv_bfloat16 *>(a.kv.k_pool);
    const auto *  v          = reinterpret_cast<const __nv_bfloat16 *>(a.kv.v_pool);
    auto          kern       = a.o_f32 ? attn_sparse_prefill_kernel<D, true> : attn_sparse_prefill_kernel<D, false>;
    constexpr int smem       = smem_bytes_for(D);
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(unsigned(a.plan.n_qblk() * a.plan.n_head)), n_threads, smem, stream>>>(
        q, a.plan, k, v, a.kv.pages, a.kv.n_head_kv, scale_log2, a.o, a.lse);
    LC_CUDA_CHECK_LAUNCH();
}

// ---- Hopper variant (sm_90a, head_dim 128): the same steps and masks, S = Q K^T as wgmma m64n64k16 and
// O += P V as wgmma m64n128k16 (P from registers), one warpgroup per (head, 64-query block). Tiles are gathered
// row by row with cp.async (keys through the page table) into the 128-byte-swizzled layout the tensor cores
// read: [2 halves of head_dim][64 rows][64 d], 16-byte chunk c of row r at chunk c ^ (r & 7) of its 128-byte row.
// K and V go through a ring of 3 stages (loads issued 2 steps ahead); Q sits in registers as wgmma A fragments.
namespace wg {

constexpr int half_bytes = 64 * 128;       // [64 rows][64 d] bf16
constexpr int tile_bytes = 2 * half_bytes; // one Q, K or V tile
constexpr int n_stages   = 3;                                               // K/V ring, loads 2 steps ahead
constexpr int smem_bytes = 2 * n_stages * tile_bytes + n_stages * 64 * 4 + 1024; // {K, V}[3], keys[3], alignment

__device__ __forceinline__ uint32_t tile_off(int r, int c) { // chunk c (0..15) of row r
    return (c >> 3) * half_bytes + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}
__device__ __forceinline__ void fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wait0() {
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Shared-memory matrix descriptor, 128-byte swizzle; offsets in bytes.
__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32) |
           (uint64_t(1) << 62);
}
// clang-format off
// D (64 x 64 f32) (+)= A (64 x 16, registers) * B (16 x 64, shared memory, K-major).
__device__ __forceinline__ void mma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}
// D (64 x 128 f32) += A (64 x 16, registers) * B (16 x 128, shared memory, MN-major).
__device__ __forceinline__ void mma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
    asm volatile("{\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}
// clang-format on

template <bool O_F32>
__global__ void __launch_bounds__(128, 2)
    kernel(const __nv_bfloat16 * __restrict__ q, prefill_plan_dev plan, const __nv_bfloat16 * __restrict__ k_pool,
           const __nv_bfloat16 * __restrict__ v_pool, const int32_t * __restrict__ pages, int n_head_kv,
           float scale_log2, void * __restrict__ o, float * __restrict__ lse) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int D = 128;
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t base  = (smem_u32(smem_raw) + 1023u) & ~1023u;
    int32_t *      s_key =
        reinterpret_cast<int32_t *>(smem_raw + (base - smem_u32(smem_raw)) + 2 * n_stages * tile_bytes);
    const int      tid   = threadIdx.x;
    const int      warp  = tid >> 5;
    const int      lane  = tid & 31;
    const int      g     = lane >> 2;
    const int      t     = lane & 3;

    const int64_t n_q      = plan.n_q;
    const int     n_head   = plan.n_head;
    const int64_t n_qt     = (n_q + 63) / 64;
    const int64_t qt       = n_qt - 1 - int64_t(blockIdx.x) / n_head; // longest rows first
    const int     h        = int(blockIdx.x % n_head);
    const int     hk       = h / (n_head / n_head_kv);
    const int64_t item     = int64_t(h) * n_qt + qt;
    const int64_t q_row0   = qt * 64;
    const size_t  page_el  = size_t(n_head_kv) * 64 * D;
    const size_t  head_off = size_t(hk) * 64 * D;
    const int     c        = tid & 15; // 16-byte chunk of a row this thread copies
    // Q goes through the K buffer of stage 2 (free until the first loop step loads into it) into registers
    const uint32_t s_qtmp = base + 2 * 2 * tile_bytes;
    {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int     r   = (tid >> 4) + 8 * i;
            const int64_t row = min(q_row0 + r, n_q - 1);
            cp_async_16(s_qtmp + tile_off(r, c), q + (size_t(row) * n_head + h) * D + c * 8,
                        q_row0 + r < n_q ? 16 : 0);
        }
        cp_async_commit();
    }
    auto load_step = [&](const step_iter & s, int st) {
        const uint32_t s_kb = base + st * 2 * tile_bytes, s_vb = s_kb + tile_bytes;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int     r   = (tid >> 4) + 8 * i;
            const int32_t key = s.key(r);
            const int32_t kk  = key < 0 ? 0 : key;
            const size_t  off = size_t(pages[kk >> 6]) * page_el + head_off + size_t(kk & 63) * D + c * 8;
            cp_async_16(s_kb + tile_off(r, c), k_pool + off, key < 0 ? 0 : 16);
            cp_async_16(s_vb + tile_off(r, c), v_pool + off, key < 0 ? 0 : 16);
            if (c == 0) s_key[st * 64 + r] = key;
        }
    };
    step_iter it;
    it.init(plan.ranges, plan.cols, plan.range_off[item], plan.range_off[item + 1], plan.col_off[item],
            plan.col_off[item + 1]);
    step_iter n1 = it;
    if (!n1.done) n1.next();
    if (!it.done) load_step(it, 0);
    cp_async_commit();
    if (!n1.done) load_step(n1, 1);
    cp_async_commit();

    uint32_t qf[8][4]; // A fragments of Q, m64k16 per 16 d (each warp: its 16 rows, the mma.sync A layout)
    cp_async_wait<2>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
        ldmatrix_x4(s_qtmp + tile_off(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), qf[kk][0], qf[kk][1], qf[kk][2],
                    qf[kk][3]);
    __syncthreads();

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    float         m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const int64_t row_pos0    = plan.pos0 + q_row0 + warp * 16 + g;
    const int64_t cta_min_pos = plan.pos0 + q_row0;
    int           stage       = 0;

    while (!it.done) {
        step_iter n2 = n1;
        if (!n1.done) n2.next();
        if (!n2.done && !n1.done) load_step(n2, stage == 0 ? 2 : stage - 1);
        cp_async_commit();
        cp_async_wait<2>(); // this step's group is complete
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // cp.async writes -> tensor core reads
        __syncthreads();
        const uint32_t s_kb = base + stage * 2 * tile_bytes;
        const uint32_t s_vb = s_kb + tile_bytes;
        float          sc[32];
        fence();
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
            const uint32_t koff = (kk >> 2) * half_bytes + (kk & 3) * 32; // 16 d within a 128-byte row
            mma_rs_n64(sc, qf[kk], desc(s_kb + koff, 16, 1024), kk > 0);
        }
        commit();
        wait0();
        fence_regs(sc);
        // sc[4 i + {0, 1}]: row g, keys 8 i + 2 t + {0, 1}; sc[4 i + {2, 3}]: row g + 8
        const bool need_mask = it.col || it.b - it.a < 64 || it.a + 63 > cta_min_pos;
        if (need_mask) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int2    kp = *reinterpret_cast<const int2 *>(s_key + stage * 64 + i * 8 + 2 * t);
                const int64_t k0 = kp.x < 0 ? INT64_MAX : kp.x, k1 = kp.y < 0 ? INT64_MAX : kp.y;
                if (k0 > row_pos0) sc[4 * i + 0] = -INFINITY;
                if (k1 > row_pos0) sc[4 * i + 1] = -INFINITY;
                if (k0 > row_pos0 + 8) sc[4 * i + 2] = -INFINITY;
                if (k1 > row_pos0 + 8) sc[4 * i + 3] = -INFINITY;
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            mx0 = fmaxf(mx0, fmaxf(sc[4 * i + 0], sc[4 * i + 1]));
            mx1 = fmaxf(mx1, fmaxf(sc[4 * i + 2], sc[4 * i + 3]));
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0   = fmaxf(m0, mx0 * scale_log2);
        const float mn1   = fmaxf(m1, mx1 * scale_log2);
        const float base0 = mn0 == -INFINITY ? 0.f : mn0;
        const float base1 = mn1 == -INFINITY ? 0.f : mn1;
        const float al0   = fast_exp2(m0 - base0);
        const float al1   = fast_exp2(m1 - base1);
        m0                = mn0;
        m1                = mn1;
        uint32_t pf[4][4];
        float    s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float p0 = fast_exp2(fmaf(sc[4 * i + 0], scale_log2, -base0));
            const float p1 = fast_exp2(fmaf(sc[4 * i + 1], scale_log2, -base0));
            const float p2 = fast_exp2(fmaf(sc[4 * i + 2], scale_log2, -base1));
            const float p3 = fast_exp2(fmaf(sc[4 * i + 3], scale_log2, -base1));
            s0 += p0 + p1;
            s1 += p2 + p3;
            pf[i >> 1][(i & 1) * 2 + 0] = pack_bf16x2(p0, p1);
            pf[i >> 1][(i & 1) * 2 + 1] = pack_bf16x2(p2, p3);
        }
        l0 = l0 * al0 + s0;
        l1 = l1 * al1 + s1;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            acc[4 * i + 0] *= al0;
            acc[4 * i + 1] *= al0;
            acc[4 * i + 2] *= al1;
            acc[4 * i + 3] *= al1;
        }
        fence_regs(acc);
        fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) mma_rs_n128(acc, pf[kk], desc(s_vb + kk * 2048, half_bytes, 1024));
        commit();
        wait0();
        fence_regs(acc);
        __syncthreads(); // every warp is done with this stage before a later step's loads overwrite it
        it    = n1;
        n1    = n2;
        stage = stage == n_stages - 1 ? 0 : stage + 1;
    }
    cp_async_wait<0>();

#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float   inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float   inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int64_t r0   = q_row0 + warp * 16 + g;
    const int64_t r1   = r0 + 8;
    // acc[4 i + {0, 1}]: row g, d 8 i + 2 t + {0, 1}; acc[4 i + {2, 3}]: row g + 8
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int col = i * 8 + 2 * t;
        if (O_F32) {
            float * of = static_cast<float *>(o);
            if (r0 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r0) * n_head + h) * D + col) =
                    make_float2(acc[4 * i + 0] * inv0, acc[4 * i + 1] * inv0);
            if (r1 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r1) * n_head + h) * D + col) =
                    make_float2(acc[4 * i + 2] * inv1, acc[4 * i + 3] * inv1);
        } else {
            uint32_t * ob = static_cast<uint32_t *>(o);
            if (r0 < n_q)
                ob[((size_t(r0) * n_head + h) * D + col) / 2] =
                    pack_bf16x2(acc[4 * i + 0] * inv0, acc[4 * i + 1] * inv0);
            if (r1 < n_q)
                ob[((size_t(r1) * n_head + h) * D + col) / 2] =
                    pack_bf16x2(acc[4 * i + 2] * inv1, acc[4 * i + 3] * inv1);
        }
    }
    if (lse != nullptr && t == 0) {
        constexpr float ln2 = 0.69314718055994531f;
        if (r0 < n_q) lse[size_t(r0) * n_head + h] = l0 > 0.f ? (m0 + __log2f(l0)) * ln2 : -INFINITY;
        if (r1 < n_q) lse[size_t(r1) * n_head + h] = l1 > 0.f ? (m1 + __log2f(l1)) * ln2 : -INFINITY;
    }
#else
    __trap(); // built without sm_90a
#endif
}

void launch(const attn_sparse_prefill_args & a, cudaStream_t stream) {
    const float scale_log2 = a.scale * 1.4426950408889634f;
    auto        kern       = a.o_f32 ? kernel<true> : kernel<false>;
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    kern<<<dim3(unsigned(a.plan.n_qblk() * a.plan.n_head)), 128, smem_bytes, stream>>>(
        reinterpret_cast<const __nv_bfloat16 *>(a.q), a.plan, reinterpret_cast<const __nv_bfloat16 *>(a.kv.k_pool),
        reinterpret_cast<const __nv_bfloat16 *>(a.kv.v_pool), a.kv.pages, a.kv.n_head_kv, scale_log2, a.o, a.lse);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace wg

// ---- Paired Hopper variant (sm_90a, head_dim 128): one CTA of two warpgroups serves two adjacent 64-query blocks
// b = 2p, 2p + 1 of one head (128 query rows). It walks the union of the two blocks' key ranges in windows of 64
// keys, then the union of their column lists 64 at a time, so each K/V window is gathered once for both; each
// warpgroup masks the keys its own block's plan does not hold, so every query sees exactly its block's keys (a
// column of one block that lies in a range of the other is walked twice: in the range phase for the one, in the
// column phase for the other). The union of the columns is merged in shared memory at the start (at most
// merge_cap entries; above that the two lists are walked one after the other, unshared). A producer warpgroup
// (4 warps of 16 rows each) gathers the K/V rows with cp.async into a ring of S stages guarded by mbarriers; the
// two consumer warpgroups run their steps independently of each other (one may compute S while the other runs
// its softmax). MODE 0 (WGMMA_PAIR_SERIAL): each consumer step runs S, mask and softmax, then P V, in turn;
// MODE 1 (WGMMA_PAIR): software-pipelined like the dense kernel's consumers: S of step n is issued before P V of
// step n - 1, and the softmax of step n runs while that P V is on the tensor cores (the producers hand registers
// to the consumers with setmaxnreg to hold S and P at once); MODE 2: 1 plus the dense kernel's ping-pong (named
// barriers hand the tensor cores from one warpgroup to the other; LC_SPARSE_PAIR_PINGPONG=1, measured no faster).
namespace wgp {

using wg::half_bytes;
using wg::tile_bytes;
using wg::tile_off;

constexpr int n_threads = 384;               // two consumer warpgroups and a producer warpgroup
constexpr int merge_cap = 4096;              // nA + nB at most for the shared column walk
constexpr int scratch_i = 2 * merge_cap + 8; // int32 words: both lists, then B's prefix counts
template <int S> struct layout {
    static constexpr int stages  = 0;                           // {K, V}[S]
    static constexpr int ukeys   = stages + 2 * S * tile_bytes; // union columns, int32[merge_cap]
    static constexpr int uflags  = ukeys + 4 * merge_cap;       // their owners, uint8[merge_cap]
    static constexpr int scratch = uflags + merge_cap;          // int32[scratch_i]
    static constexpr int keys    = scratch + 4 * scratch_i;     // int32[S][2][64]
    static constexpr int info    = keys + 4 * S * 2 * 64;       // int32[S]
    static constexpr int wsum    = info + 4 * S;                // int32[16]
    static constexpr int bars    = (wsum + 4 * 16 + 7) & ~7;    // uint64[2 S]: full, empty
    static constexpr int bytes   = bars + 8 * 2 * S + 1024;     // + alignment slack
};

// The steps of a pair of items (each producer warp walks the same sequence). Phases: 0 the union of both blocks' ranges
// in windows of 64 keys, 1 the merged columns (shared memory), 2 A's columns, 3 B's columns (when not merged),
// 4 done.
struct pair_iter {
    const int32_t * rg;
    const int32_t * cols;
    const int32_t * uk;
    const uint8_t * uf;
    int64_t         pa, ea, pb, eb; // next range of A / B not yet in a union range; ends
    int64_t         ma, mb;         // first range of A / B that may overlap the current window
    int64_t         a, b;           // phase 0: window start, end of the union range; else entry indices [a, b)
    int64_t         ca0, ca1, cb0, cb1;
    int             n_union; // merged columns, -1 when not merged
    int             phase;

    __device__ bool done() const { return phase == 4; }
    __device__ void advance_masks() {
        while (ma < ea && rg[2 * ma + 1] <= a) ++ma;
        while (mb < eb && rg[2 * mb + 1] <= a) ++mb;
    }
    __device__ void start_union() {
        int64_t ub, ue;
        if (pa < ea && (pb >= eb || rg[2 * pa] <= rg[2 * pb])) {
            ub = rg[2 * pa];
            ue = rg[2 * pa + 1];
            ++pa;
        } else {
            ub = rg[2 * pb];
            ue = rg[2 * pb + 1];
            ++pb;
        }
        for (;;) {
            if (pa < ea && rg[2 * pa] <= ue) {
                ue = max(ue, int64_t(rg[2 * pa + 1]));
                ++pa;
            } else if (pb < eb && rg[2 * pb] <= ue) {
                ue = max(ue, int64_t(rg[2 * pb + 1]));
                ++pb;
            } else {
                break;
            }
        }
        a = ub;
        b = ue;
        advance_masks();
    }
    __device__ void to_cols() {
        if (n_union >= 0) {
            phase = n_union > 0 ? 1 : 4;
            a     = 0;
            b     = n_union;
            return;
        }
        phase = 2;
        a     = ca0;
        b     = ca1;
        if (a < b) return;
        phase = 3;
        a     = cb0;
        b     = cb1;
        if (a >= b) phase = 4;
    }
    __device__ void start() {
        phase = 0;
        if (pa < ea || pb < eb)
            start_union();
        else
            to_cols();
    }
    __device__ void next() {
        a += 64;
        if (a < b) {
            if (phase == 0) advance_masks();
            return;
        }
        if (phase == 0) {
            if (pa < ea || pb < eb)
                start_union();
            else
                to_cols();
        } else if (phase == 2 && cb0 < cb1) {
            phase = 3;
            a     = cb0;
            b     = cb1;
        } else {
            phase = 4;
        }
    }
    __device__ static bool in_ranges(const int32_t * rg, int64_t j, int64_t e, int64_t k) {
        for (; j < e && rg[2 * j] <= k; ++j)
            if (k < rg[2 * j + 1]) return true;
        return false;
    }
    // Key of row r of the current step (-1 past its end).
    __device__ int32_t key(int r) const {
        if (a + r >= b) return -1;
        if (phase == 0) return int32_t(a + r);
        if (phase == 1) return uk[a + r];
        return cols[a + r];
    }
    // Which blocks hold key k of row r (bit 0: A, bit 1: B).
    __device__ int owners(int r, int32_t k) const {
        if (k < 0) return 0;
        if (phase == 0) return (in_ranges(rg, ma, ea, k) ? 1 : 0) | (in_ranges(rg, mb, eb, k) ? 2 : 0);
        if (phase == 1) return uf[a + r];
        return phase == 2 ? 1 : 2;
    }
    // Bit w: every key of the step belongs to block w and lies at or before pos_w (no mask needed).
    __device__ int full(int64_t pos_a, int64_t pos_b) const {
        if (phase != 0 || b - a < 64) return 0;
        int f = 0;
        if (ma < ea && rg[2 * ma] <= a && rg[2 * ma + 1] >= a + 64 && a + 63 <= pos_a) f |= 1;
        if (mb < eb && rg[2 * mb] <= a && rg[2 * mb + 1] >= a + 64 && a + 63 <= pos_b) f |= 2;
        return f;
    }
};

__device__ __forceinline__ int lower_bound(const int32_t * x, int n, int32_t v) {
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (x[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

// Merges the sorted, distinct lists A (nA) and B (nB) from global memory into uk (sorted, distinct) with owner
// bits uf (1: in A, 2: in B); returns the union's length. Position of A[i]: i + #B below it - #common below it;
// of B[j] (not in A): j + #A below it - #common below it, #common below B[j] being the prefix count over B of
// "in A" flags. All threads of the CTA call it.
__device__ int merge_cols(const int32_t * __restrict__ ga, int nA, const int32_t * __restrict__ gb, int nB,
                          int32_t * sA, int32_t * uk, uint8_t * uf, int32_t * wsum) {
    const int tid = threadIdx.x;
    int32_t * sB  = sA + nA;
    int32_t * pre = sB + nB; // [nB + 1]
    for (int i = tid; i < nA; i += n_threads) sA[i] = ga[i];
    for (int j = tid; j < nB; j += n_threads) sB[j] = gb[j];
    __syncthreads();
    for (int j = tid; j < nB; j += n_threads) {
        const int lb = lower_bound(sA, nA, sB[j]);
        pre[j]       = lb < nA && sA[lb] == sB[j] ? 1 : 0;
    }
    __syncthreads();
    const int per = (nB + n_threads - 1) / n_threads;
    const int j0 = min(tid * per, nB), j1 = min(j0 + per, nB);
    int       s = 0;
    for (int j = j0; j < j1; ++j) s += pre[j];
    int x = s; // inclusive scan over the warp, then over the warps
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, off);
        if ((tid & 31) >= off) x += y;
    }
    if ((tid & 31) == 31) wsum[tid >> 5] = x;
    __syncthreads();
    int run = x - s;
    for (int w = 0; w < (tid >> 5); ++w) run += wsum[w];
    for (int j = j0; j < j1; ++j) {
        const int f = pre[j];
        pre[j]      = run;
        run += f;
    }
    if (tid == n_threads - 1) pre[nB] = run;
    __syncthreads();
    for (int i = tid; i < nA; i += n_threads) {
        const int32_t v   = sA[i];
        const int     lb  = lower_bound(sB, nB, v);
        const int     pos = i + lb - pre[lb];
        uk[pos]           = v;
        uf[pos]           = uint8_t(lb < nB && sB[lb] == v ? 3 : 1);
    }
    for (int j = tid; j < nB; j += n_threads) {
        const int32_t v  = sB[j];
        const int     lb = lower_bound(sA, nA, v);
        if (lb < nA && sA[lb] == v) continue;
        const int pos = j + lb - pre[j];
        uk[pos]       = v;
        uf[pos]       = 2;
    }
    const int n = nA + nB - pre[nB];
    __syncthreads();
    return n;
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

constexpr int info_end = 4; // s_inf flag: no more steps
// Registers per thread of the pipelined kernel (setmaxnreg): the producers give theirs to the consumers, which hold
// S of one step and P of the previous one beside O and Q. The kernel starts at 168 a thread (65536 / 384, rounded
// down to 8) and setmaxnreg.inc draws only on what this CTA's decrease freed: an increase that the pool cannot serve
// waits forever (64 / 224 hung on the H100).
constexpr int prod_regs = 56;
constexpr int cons_regs = 224;
static_assert(128 * (168 - prod_regs) >= 256 * (cons_regs - 168), "setmaxnreg pool");

// Warps 0-7: two consumer warpgroups (block A, block B); warps 8-11: the producers, each of which walks the
// pair's steps and gathers 16 of each step's 64 K/V rows with cp.async into the ring, then signals the stage's
// "full" barrier (per lane one cp.async completion and one arrival after its key/owner stores: 256); consumers
// signal "empty" (256) when done with a stage.
template <bool O_F32, int S, int MODE>
__global__ void __launch_bounds__(n_threads, 1)
    kernel(const __nv_bfloat16 * __restrict__ q, prefill_plan_dev plan, const __nv_bfloat16 * __restrict__ k_pool,
           const __nv_bfloat16 * __restrict__ v_pool, const int32_t * __restrict__ pages, int n_head_kv,
           float scale_log2, void * __restrict__ o, float * __restrict__ lse) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr bool PIPE     = MODE >= 1;
    constexpr bool PINGPONG = MODE == 2;
    constexpr int D = 128;
    using L         = layout<S>;
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t                            base  = (smem_u32(smem_raw) + 1023u) & ~1023u;
    uint8_t *                                 sm    = smem_raw + (base - smem_u32(smem_raw));
    int32_t *                                 s_key = reinterpret_cast<int32_t *>(sm + L::keys);
    int32_t *                                 s_inf = reinterpret_cast<int32_t *>(sm + L::info);
    const uint32_t                            bar0  = base + L::bars; // full[S], then empty[S]
    const int                                 tid   = threadIdx.x;
    const int                                 warp  = tid >> 5;
    const int                                 lane  = tid & 31;

    const int64_t n_q    = plan.n_q;
    const int     n_head = plan.n_head;
    const int64_t n_qt   = (n_q + 63) / 64;
    const int64_t n_pair = (n_qt + 1) / 2;
    const int64_t pr     = n_pair - 1 - int64_t(blockIdx.x) / n_head; // longest rows first
    const int     h      = int(blockIdx.x % n_head);
    const int     hk     = h / (n_head / n_head_kv);
    const int64_t item_a = int64_t(h) * n_qt + 2 * pr;
    const bool    has_b  = 2 * pr + 1 < n_qt;
    const int64_t q_row0 = 2 * pr * 64;

    if (tid == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(bar0 + 8 * s, 256);       // full: 128 cp.async completions + 128 arrivals
            mbar_init(bar0 + 8 * (S + s), 256); // empty: every consumer thread
        }
    }
    // Q (128 rows) through the last stage, before the producer starts
    const uint32_t s_qtmp = base + (S - 1) * 2 * tile_bytes;
    if (tid < 256) {
        const int c = tid & 15;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int     r   = (tid >> 4) + 16 * i;
            const int64_t row = min(q_row0 + r, n_q - 1);
            cp_async_16(s_qtmp + (r >> 6) * tile_bytes + tile_off(r & 63, c),
                        q + (size_t(row) * n_head + h) * D + c * 8, q_row0 + r < n_q ? 16 : 0);
        }
    }
    cp_async_commit();
    const int64_t ca0 = plan.col_off[item_a], ca1 = plan.col_off[item_a + 1];
    const int64_t cb0 = has_b ? plan.col_off[item_a + 1] : 0, cb1 = has_b ? plan.col_off[item_a + 2] : 0;
    int           n_union = -1;
    {
        const int64_t n_a = ca1 - ca0, n_b = cb1 - cb0;
        if (n_a + n_b <= merge_cap) {
            if (n_b == 0) { // A's list alone: owners all A
                int32_t * uk = reinterpret_cast<int32_t *>(sm + L::ukeys);
                for (int i = tid; i < int(n_a); i += n_threads) {
                    uk[i]             = plan.cols[ca0 + i];
                    sm[L::uflags + i] = 1;
                }
                n_union = int(n_a);
            } else {
                n_union =
                    merge_cols(plan.cols + ca0, int(n_a), plan.cols + cb0, int(n_b),
                               reinterpret_cast<int32_t *>(sm + L::scratch), reinterpret_cast<int32_t *>(sm + L::ukeys),
                               sm + L::uflags, reinterpret_cast<int32_t *>(sm + L::wsum));
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // Q staged, columns merged, barriers initialised

    if (warp >= 8) { // ---- producers
        if constexpr (PIPE) asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(prod_regs));
        pair_iter ld;
        ld.rg   = plan.ranges;
        ld.cols = plan.cols;
        ld.uk   = reinterpret_cast<const int32_t *>(sm + L::ukeys);
        ld.uf   = sm + L::uflags;
        ld.pa = ld.ma = plan.range_off[item_a];
        ld.ea         = plan.range_off[item_a + 1];
        ld.ca0        = ca0;
        ld.ca1        = ca1;
        if (has_b) {
            ld.pb = ld.mb = plan.range_off[item_a + 1];
            ld.eb         = plan.range_off[item_a + 2];
        } else {
            ld.pb = ld.mb = ld.eb = 0;
        }
        ld.cb0     = cb0;
        ld.cb1     = cb1;
        ld.n_union = n_union;
        ld.start();
        const size_t  page_el  = size_t(n_head_kv) * 64 * D;
        const size_t  head_off = size_t(hk) * 64 * D;
        const int64_t pos_a = plan.pos0 + q_row0, pos_b = pos_a + 64; // first query position of each block
        const int     c = lane & 15, rh = lane >> 4;
        const int     r0 = (warp - 8) * 16; // this warp's rows r0 .. r0 + 15
        __syncwarp();
        // Q must be in the consumers' registers before stage S - 1 is refilled: the consumers arrive on its
        // "empty" barrier once (phase 0) after reading Q, so step S - 1 waits for that like any later reuse.
        for (int64_t n = 0;; ++n) {
            const int      st   = int(n % S);
            const uint32_t full = bar0 + 8 * st, empty = bar0 + 8 * (S + st);
            // row r0 + (lane & 15): key, owners and page entry (loads in flight while waiting)
            int32_t k = -1, p = 0;
            int     ow = 0, fl = info_end;
            if (!ld.done()) {
                k  = ld.key(r0 + c);
                p  = pages[(k < 0 ? 0 : k) >> 6];
                ow = ld.owners(r0 + c, k);
                fl = warp == 8 && lane == 0 ? ld.full(pos_a, pos_b) : 0;
            }
            // stage st last held step n - S (stage S - 1 also Q, released once before step S - 1)
            if (n >= S - 1) mbar_wait(empty, uint32_t(((n - (S - 1)) / S) & 1));
            if (ld.done()) {
                if (warp == 8 && lane == 0) s_inf[st] = info_end;
                mbar_arrive(full);
                asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(full) : "memory");
                break;
            }
            if (rh == 0) {
                s_key[(st * 2 + 0) * 64 + r0 + c] = ow & 1 ? k : -1;
                s_key[(st * 2 + 1) * 64 + r0 + c] = ow & 2 ? k : -1;
            }
            if (warp == 8 && lane == 0) s_inf[st] = fl;
            const uint32_t s_kb = base + st * 2 * tile_bytes, s_vb = s_kb + tile_bytes;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int     rl  = 2 * i + rh; // row r0 + rl; its key sits in lane rl
                const int32_t key = __shfl_sync(0xffffffffu, k, rl);
                const int32_t pg  = __shfl_sync(0xffffffffu, p, rl);
                const int     r   = r0 + rl;
                const size_t  off = size_t(pg) * page_el + head_off + size_t(key & 63) * D + c * 8;
                cp_async_16(s_kb + tile_off(r, c), k_pool + off, key < 0 ? 0 : 16);
                cp_async_16(s_vb + tile_off(r, c), v_pool + off, key < 0 ? 0 : 16);
            }
            mbar_arrive(full); // release: the key and flag stores above
            asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(full) : "memory");
            ld.next();
        }
        asm volatile("cp.async.wait_all;\n" ::: "memory");
        return;
    }

    // ---- consumers
    if constexpr (PIPE) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(cons_regs));
    const int wgi = warp >> 2; // 0 serves block A, 1 block B
    const int wq  = warp & 3;  // warp within its warpgroup
    const int g   = lane >> 2;
    const int t   = lane & 3;
    uint32_t  qf[8][4]; // A fragments of Q for this warpgroup's 64 rows
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
        ldmatrix_x4(s_qtmp + wgi * tile_bytes + tile_off(wq * 16 + (lane & 15), kk * 2 + (lane >> 4)), qf[kk][0],
                    qf[kk][1], qf[kk][2], qf[kk][3]);
    mbar_arrive(bar0 + 8 * (S + S - 1)); // stage S - 1 (Q) free

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    float         m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const int64_t row_pos0 = plan.pos0 + q_row0 + wgi * 64 + wq * 16 + g;
    const bool    active   = wgi == 0 || has_b;

    // S = Q K^T of stage st into sc (issued, committed, not waited for)
    auto issue_s = [&](float (&sc)[32], int st) {
        const uint32_t s_kb = base + st * 2 * tile_bytes;
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
            const uint32_t koff = (kk >> 2) * half_bytes + (kk & 3) * 32; // 16 d within a 128-byte row
            wg::mma_rs_n64(sc, qf[kk], wg::desc(s_kb + koff, 16, 1024), kk > 0);
        }
        wg::commit();
    };
    // O += P V of stage st (issued, committed, not waited for)
    auto issue_pv = [&](const uint32_t (&pf)[4][4], int st) {
        const uint32_t s_vb = base + st * 2 * tile_bytes + tile_bytes;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::mma_rs_n128(acc, pf[kk], wg::desc(s_vb + kk * 2048, half_bytes, 1024));
        wg::commit();
    };
    // Mask (keys outside this block's plan or past the row), new running max, sc -> probabilities in place,
    // al = rescale factors of O. sc[4 i + {0, 1}]: row g, keys 8 i + 2 t + {0, 1}; sc[4 i + {2, 3}]: row g + 8.
    auto softmax = [&](float (&sc)[32], int st, int info, float & al0, float & al1) {
        if (!((info >> wgi) & 1)) {
            const int32_t * kp_base = s_key + (st * 2 + wgi) * 64;
#pragma unroll
            for (int i2 = 0; i2 < 8; ++i2) {
                const int2    kp = *reinterpret_cast<const int2 *>(kp_base + i2 * 8 + 2 * t);
                const int64_t k0 = kp.x < 0 ? INT64_MAX : kp.x, k1 = kp.y < 0 ? INT64_MAX : kp.y;
                if (k0 > row_pos0) sc[4 * i2 + 0] = -INFINITY;
                if (k1 > row_pos0) sc[4 * i2 + 1] = -INFINITY;
                if (k0 > row_pos0 + 8) sc[4 * i2 + 2] = -INFINITY;
                if (k1 > row_pos0 + 8) sc[4 * i2 + 3] = -INFINITY;
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int i2 = 0; i2 < 8; ++i2) {
            mx0 = fmaxf(mx0, fmaxf(sc[4 * i2 + 0], sc[4 * i2 + 1]));
            mx1 = fmaxf(mx1, fmaxf(sc[4 * i2 + 2], sc[4 * i2 + 3]));
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0   = fmaxf(m0, mx0 * scale_log2);
        const float mn1   = fmaxf(m1, mx1 * scale_log2);
        const float base0 = mn0 == -INFINITY ? 0.f : mn0;
        const float base1 = mn1 == -INFINITY ? 0.f : mn1;
        al0               = fast_exp2(m0 - base0);
        al1               = fast_exp2(m1 - base1);
        m0                = mn0;
        m1                = mn1;
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int i2 = 0; i2 < 8; ++i2) {
            sc[4 * i2 + 0] = fast_exp2(fmaf(sc[4 * i2 + 0], scale_log2, -base0));
            sc[4 * i2 + 1] = fast_exp2(fmaf(sc[4 * i2 + 1], scale_log2, -base0));
            sc[4 * i2 + 2] = fast_exp2(fmaf(sc[4 * i2 + 2], scale_log2, -base1));
            sc[4 * i2 + 3] = fast_exp2(fmaf(sc[4 * i2 + 3], scale_log2, -base1));
            s0 += sc[4 * i2 + 0] + sc[4 * i2 + 1];
            s1 += sc[4 * i2 + 2] + sc[4 * i2 + 3];
        }
        l0 = l0 * al0 + s0;
        l1 = l1 * al1 + s1;
    };
    auto rescale = [&](float al0, float al1) {
        if (__any_sync(0xffffffffu, al0 != 1.f || al1 != 1.f)) { // no row max of the warp moved: skip
#pragma unroll
            for (int i2 = 0; i2 < 16; ++i2) {
                acc[4 * i2 + 0] *= al0;
                acc[4 * i2 + 1] *= al0;
                acc[4 * i2 + 2] *= al1;
                acc[4 * i2 + 3] *= al1;
            }
        }
    };
    auto pack = [&](const float (&sc)[32], uint32_t (&pf)[4][4]) {
#pragma unroll
        for (int i2 = 0; i2 < 8; ++i2) {
            pf[i2 >> 1][(i2 & 1) * 2 + 0] = pack_bf16x2(sc[4 * i2 + 0], sc[4 * i2 + 1]);
            pf[i2 >> 1][(i2 & 1) * 2 + 1] = pack_bf16x2(sc[4 * i2 + 2], sc[4 * i2 + 3]);
        }
    };

    if (!active) { // the last block of an odd count: release each stage
        for (int64_t n = 0;; ++n) {
            const int st = int(n % S);
            mbar_wait(bar0 + 8 * st, uint32_t((n / S) & 1));
            if (s_inf[st] & info_end) break;
            mbar_arrive(bar0 + 8 * (S + st));
        }
        return;
    }
    if constexpr (!PIPE) { // S, softmax, P V of each step in turn
        for (int64_t n = 0;; ++n) {
            const int st = int(n % S);
            mbar_wait(bar0 + 8 * st, uint32_t((n / S) & 1));
            const int info = s_inf[st];
            if (info & info_end) break;
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // cp.async writes -> tensor core reads
            float sc[32];
            wg::fence();
            issue_s(sc, st);
            wg::wait0();
            wg::fence_regs(sc);
            float al0, al1;
            softmax(sc, st, info, al0, al1);
            uint32_t pf[4][4];
            pack(sc, pf);
            rescale(al0, al1);
            wg::fence_regs(acc);
            wg::fence();
            issue_pv(pf, st);
            wg::wait0();
            wg::fence_regs(acc);
            mbar_arrive(bar0 + 8 * (S + st)); // this stage may be refilled
        }
    } else { // S of step n issued before P V of step n - 1; the softmax of n runs while P V n - 1 is in flight
        // ping-pong (both warpgroups active; they walk the same steps): warpgroup wgi issues its products after
        // bar.sync on barrier 1 + wgi, then arrives on the other's, so one's softmax overlaps the other's products
        const bool pp        = PINGPONG && has_b;
        auto       turn_wait = [&] {
            if (pp) asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wgi) : "memory");
        };
        auto turn_pass = [&] {
            if (pp) asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - wgi) : "memory");
        };
        float    sc[32];
        uint32_t pf[4][4];
        int      st_prev = 0;
        if (wgi == 1) turn_pass(); // warpgroup 0 goes first
        {
            mbar_wait(bar0, 0);
            const int info = s_inf[0];
            if (!(info & info_end)) {
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                turn_wait();
                wg::fence();
                issue_s(sc, 0);
                turn_pass();
                wg::wait0();
                wg::fence_regs(sc);
                float al0, al1;
                softmax(sc, 0, info, al0, al1); // acc is 0: no rescale
                pack(sc, pf);
                for (int64_t n = 1;; ++n) {
                    const int st = int(n % S);
                    mbar_wait(bar0 + 8 * st, uint32_t((n / S) & 1));
                    const int info_n = s_inf[st];
                    if (info_n & info_end) break;
                    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                    wg::fence_regs(acc);
                    turn_wait();
                    wg::fence();
                    issue_s(sc, st);       // S of this step ...
                    issue_pv(pf, st_prev); // ... then O takes the previous step's P
                    turn_pass();
                    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
                    wg::fence_regs(sc);
                    softmax(sc, st, info_n, al0, al1);
                    wg::wait0();
                    wg::fence_regs(acc);
                    mbar_arrive(bar0 + 8 * (S + st_prev)); // the previous stage may be refilled
                    rescale(al0, al1);
                    pack(sc, pf);
                    st_prev = st;
                }
                wg::fence_regs(acc);
                turn_wait();
                wg::fence();
                issue_pv(pf, st_prev);
                turn_pass();
                wg::wait0();
                wg::fence_regs(acc);
                mbar_arrive(bar0 + 8 * (S + st_prev));
            }
        }
        if (wgi == 0) turn_wait(); // takes warpgroup 1's last hand-over, so both barriers end balanced
    }

#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float   inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    const float   inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int64_t r0   = q_row0 + wgi * 64 + wq * 16 + g;
    const int64_t r1   = r0 + 8;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int col = i * 8 + 2 * t;
        if (O_F32) {
            float * of = static_cast<float *>(o);
            if (r0 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r0) * n_head + h) * D + col) =
                    make_float2(acc[4 * i + 0] * inv0, acc[4 * i + 1] * inv0);
            if (r1 < n_q)
                *reinterpret_cast<float2 *>(of + (size_t(r1) * n_head + h) * D + col) =
                    make_float2(acc[4 * i + 2] * inv1, acc[4 * i + 3] * inv1);
        } else {
            uint32_t * ob = static_cast<uint32_t *>(o);
            if (r0 < n_q)
                ob[((size_t(r0) * n_head + h) * D + col) / 2] =
                    pack_bf16x2(acc[4 * i + 0] * inv0, acc[4 * i + 1] * inv0);
            if (r1 < n_q)
                ob[((size_t(r1) * n_head + h) * D + col) / 2] =
                    pack_bf16x2(acc[4 * i + 2] * inv1, acc[4 * i + 3] * inv1);
        }
    }
    if (lse != nullptr && t == 0) {
        constexpr float ln2 = 0.69314718055994531f;
        if (r0 < n_q) lse[size_t(r0) * n_head + h] = l0 > 0.f ? (m0 + __log2f(l0)) * ln2 : -INFINITY;
        if (r1 < n_q) lse[size_t(r1) * n_head + h] = l1 > 0.f ? (m1 + __log2f(l1)) * ln2 : -INFINITY;
    }
#else
    __trap(); // built without sm_90a
#endif
}

template <int S, int MODE> void launch_s(const attn_sparse_prefill_args & a, cudaStream_t stream) {
    const float   scale_log2 = a.scale * 1.4426950408889634f;
    auto          kern       = a.o_f32 ? kernel<true, S, MODE> : kernel<false, S, MODE>;
    constexpr int smem       = layout<S>::bytes;
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const int64_t n_pair = (a.plan.n_qblk() + 1) / 2;
    kern<<<dim3(unsigned(n_pair * a.plan.n_head)), n_threads, smem, stream>>>(
        reinterpret_cast<const __nv_bfloat16 *>(a.q), a.plan, reinterpret_cast<const __nv_bfloat16 *>(a.kv.k_pool),
        reinterpret_cast<const __nv_bfloat16 *>(a.kv.v_pool), a.kv.pages, a.kv.n_head_kv, scale_log2, a.o, a.lse);
    LC_CUDA_CHECK_LAUNCH();
}

// Stages of the K/V ring: 4 (LC_SPARSE_PAIR_STAGES=3..5 overrides, for measurements). pipe: the consumer loop
// with S of step n issued before P V of step n - 1 (else each step's S, softmax and P V in turn);
// LC_SPARSE_PAIR_PINGPONG=0/1 turns the hand-over of the tensor cores between the two warpgroups off/on.
template <int MODE> void launch_p(const attn_sparse_prefill_args & a, cudaStream_t stream, int stages) {
    if (stages == 3)
        launch_s<3, MODE>(a, stream);
    else if (stages == 5)
        launch_s<5, MODE>(a, stream);
    else
        launch_s<4, MODE>(a, stream);
}
void launch(const attn_sparse_prefill_args & a, cudaStream_t stream, bool pipe) {
    static int stages = 0;
    if (stages == 0) {
        const char * e = std::getenv("LC_SPARSE_PAIR_STAGES");
        stages         = e != nullptr ? std::atoi(e) : 4;
        if (stages < 3 || stages > 5) stages = 4;
    }
    static int pingpong = -1;
    if (pingpong < 0) {
        const char * e = std::getenv("LC_SPARSE_PAIR_PINGPONG");
        pingpong       = e != nullptr ? (std::atoi(e) != 0 ? 1 : 0) : 0;
    }
    if (!pipe)
        launch_p<0>(a, stream, stages);
    else if (pingpong == 0)
        launch_p<1>(a, stream, stages);
    else
        launch_p<2>(a, stream, stages);
}

} // namespace wgp

// One warp per item: 64-key windows of its ranges plus its column steps, added into *out.
__global__ void plan_steps_kernel(prefill_plan_dev plan, int64_t n_items, unsigned long long * out) {
    const int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int     lane = threadIdx.x & 31;
    if (item >= n_items) return;
    unsigned long long n = 0;
    for (int64_t i = plan.range_off[item] + lane; i < plan.range_off[item + 1]; i += 32)
        n += static_cast<unsigned long long>(plan.ranges[2 * i + 1] - plan.ranges[2 * i] + 63) / 64;
    if (lane == 0) n += static_cast<unsigned long long>(plan.col_off[item + 1] - plan.col_off[item] + 63) / 64;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) n += __shfl_xor_sync(0xffffffffu, n, off);
    if (lane == 0 && n > 0) atomicAdd(out, n);
}

} // namespace

prefill_plan_steps prefill_plan_steps_gpu(prefill_plan_buf & plan, cudaStream_t stream) {
    const prefill_plan_dev & v       = plan.view;
    const int64_t            n_qblk  = v.n_qblk();
    const int64_t            n_items = n_qblk * v.n_head;
    prefill_plan_steps       r;
    for (int64_t b = 0; b < n_qblk; ++b)
        r.dense += (v.pos0 + std::min(v.n_q, (b + 1) * prefill_qblock) + 63) / 64 * v.n_head;
    if (n_items == 0) return r;
    if (plan.counter == nullptr) LC_CUDA_CHECK(cudaMalloc(&plan.counter, sizeof(int64_t)));
    LC_CUDA_CHECK(cudaMemsetAsync(plan.counter, 0, sizeof(int64_t), stream));
    plan_steps_kernel<<<unsigned((n_items + 7) / 8), 256, 0, stream>>>(
        v, n_items, reinterpret_cast<unsigned long long *>(plan.counter));
    LC_CUDA_CHECK_LAUNCH();
    LC_CUDA_CHECK(cudaMemcpyAsync(&r.sparse, plan.counter, sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
    LC_CUDA_CHECK(cudaStreamSynchronize(stream));
    return r;
}

status attn_sparse_prefill(const attn_sparse_prefill_args & a, cudaStream_t stream) {
    const int D = a.kv.head_dim;
    if (D != 64 && D != 128)
        return error(status_code::UNSUPPORTED, "cuda attn_sparse_prefill: head_dim %d; supported: 64, 128", D);
    if (a.kv.n_head_kv <= 0 || a.plan.n_head % a.kv.n_head_kv != 0)
        return error(status_code::UNSUPPORTED, "cuda attn_sparse_prefill: n_head %d is not a multiple of n_head_kv %d",
                     a.plan.n_head, a.kv.n_head_kv);
    if (a.plan.n_q < 0 || a.plan.pos0 < 0 || a.kv.n_kv < a.plan.pos0 + a.plan.n_q)
        return error(status_code::INVALID_ARGUMENT, "cuda attn_sparse_prefill: n_kv %lld < pos0 %lld + n_q %lld",
                     (long long)a.kv.n_kv, (long long)a.plan.pos0, (long long)a.plan.n_q);
    if (a.plan.n_q == 0) return status::ok();
    bool use_wgmma = D == 128 && a.kernel != attn_sparse_prefill_kernel::MMA_SYNC;
    bool use_pair  = a.kernel == attn_sparse_prefill_kernel::WGMMA_PAIR ||
                    a.kernel == attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL ||
                    a.kernel == attn_sparse_prefill_kernel::AUTO;
    if (use_wgmma && a.kernel == attn_sparse_prefill_kernel::AUTO) {
        static int cc_major = -1; // compute capability of the current device, read once
        if (cc_major < 0) {
            int dev = 0;
            LC_CUDA_CHECK(cudaGetDevice(&dev));
            LC_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
        }
        use_wgmma = cc_major == 9;
    }
    if ((a.kernel == attn_sparse_prefill_kernel::WGMMA || a.kernel == attn_sparse_prefill_kernel::WGMMA_PAIR ||
         a.kernel == attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL) &&
        D != 128)
        return error(status_code::UNSUPPORTED, "cuda attn_sparse_prefill: the wgmma kernels need head_dim 128");
    if (use_wgmma && use_pair) {
        wgp::launch(a, stream, a.kernel != attn_sparse_prefill_kernel::WGMMA_PAIR_SERIAL);
    } else if (use_wgmma) {
        wg::launch(a, stream);
    } else if (D == 64) {
        launch_sparse<64>(a, stream);
    } else {
        launch_sparse<128>(a, stream);
    }
    return status::ok();
}

} // namespace lc::cuda
