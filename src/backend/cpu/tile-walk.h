// How the integer GEMM kernels of every ISA cover an output block with register tiles: a tile computes R weight
// rows x C activation rows over the whole reduction, y[c * ldy + r]. Each output is computed by exactly one tile
// with the same per-element arithmetic, so the tiling never changes results.
// Everything here has internal linkage: the header is included by translation units compiled for different
// instruction sets, and a shared inline symbol could let the linker run AVX-512 code on an AVX2-only CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lc::cpu {
namespace {

using tile_fn = void (*)(int64_t nb, const uint8_t * w, size_t w_stride, const uint8_t * a, size_t a_stride, float * y,
                         int64_t ldy);

// `get::fn<R, C>` is the tile function of shape R x C. The first n_cols - n_cols % CM activation rows run in
// RM x CM tiles (1 x CM for the last rows), the remaining columns (all of them for matrix-vector products) in
// RV x 1 tiles (1 x 1 for the last rows).
template <typename get, int RM, int CM, int RV>
void walk_tiles(int64_t nb, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a, size_t a_stride,
                int64_t n_cols, float * y, int64_t ldy) {
    const tile_fn main = get::template fn<RM, CM>, main_row = get::template fn<1, CM>, vec = get::template fn<RV, 1>,
                  one    = get::template fn<1, 1>;
    const int64_t n_main = n_cols - n_cols % CM;
    int64_t       r      = 0;
    for (; r + RM <= n_rows; r += RM)
        for (int64_t c = 0; c < n_main; c += CM)
            main(nb, w + r * w_stride, w_stride, a + c * a_stride, a_stride, y + c * ldy + r, ldy);
    for (; r < n_rows; ++r)
        for (int64_t c = 0; c < n_main; c += CM)
            main_row(nb, w + r * w_stride, w_stride, a + c * a_stride, a_stride, y + c * ldy + r, ldy);
    for (int64_t c = n_main; c < n_cols; ++c) {
        int64_t rv = 0;
        for (; rv + RV <= n_rows; rv += RV)
            vec(nb, w + rv * w_stride, w_stride, a + c * a_stride, a_stride, y + c * ldy + rv, ldy);
        for (; rv < n_rows; ++rv)
            one(nb, w + rv * w_stride, w_stride, a + c * a_stride, a_stride, y + c * ldy + rv, ldy);
    }
}

// For kernels whose weight blocks carry per-block data that takes work to unpack (the K-quants' 6-bit scales):
// `get::prep(nb, w, w_stride, n_rows, out)` unpacks it for n_rows rows into out[row * nb + block] once per row
// tile, and `get::pfn<R, C>` (tile_fn with the unpacked rows after w_stride) reuses it for every column tile.
// Matrix-vector products (one column tile per row tile) keep the plain `get::fn` tiles.
template <typename get, int RM, int CM, int RV>
void walk_tiles_prep(int64_t nb, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                     size_t a_stride, int64_t n_cols, float * y, int64_t ldy) {
    using prep_t                       = typename get::prep_t;
    static thread_local std::vector<prep_t> rows;
    if (rows.size() < size_t(RM * nb)) rows.resize(size_t(RM * nb));
    const int64_t n_main = n_cols - n_cols % CM;
    if (n_main > 0) {
        int64_t r = 0;
        for (; r + RM <= n_rows; r += RM) {
            get::prep(nb, w + r * w_stride, w_stride, RM, rows.data());
            for (int64_t c = 0; c < n_main; c += CM)
                get::template pfn<RM, CM>(nb, w + r * w_stride, w_stride, rows.data(), a + c * a_stride, a_stride,
                                          y + c * ldy + r, ldy);
        }
        for (; r < n_rows; ++r) {
            get::prep(nb, w + r * w_stride, w_stride, 1, rows.data());
            for (int64_t c = 0; c < n_main; c += CM)
                get::template pfn<1, CM>(nb, w + r * w_stride, w_stride, rows.data(), a + c * a_stride, a_stride,
                                         y + c * ldy + r, ldy);
        }
    }
    if (n_main < n_cols)
        walk_tiles<get, RM, CM, RV>(nb, w, w_stride, n_rows, a + n_main * a_stride, a_stride, n_cols - n_main,
                                    y + n_main * ldy, ldy);
}

} // namespace
} // namespace lc::cpu
