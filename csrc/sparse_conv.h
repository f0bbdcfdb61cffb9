// Sparse-weight Conv2d forward and weight gradient (and Linear, as a 1x1 conv over the transposed batch),
// fp32, dense NCHW activations. pylth/ops/sparse_conv.py compresses the weight once, builds the input
// layout below and launches through pylth/ops/dispatch.py; pylth/ops/sparse_grad.py launches the
// gradients.
//
// Compressed weight (one CSR row per output channel, entries in increasing tap order):
//   row_ptr  int64 [Co + 1]  entries of channel co are row_ptr[co] .. row_ptr[co + 1]
//   taps     int32 [nnz]     ci * KH * KW + kh * KW + kw of each kept weight (the CUDA kernel reads these)
//   values   float [nnz]
// The taps describe the mask completely, so the transposed form (backward-input) and the kept positions
// (weight gradient) derive from them.
//
// CPU: the input is read as "slabs", per image and input channel kinds_rows x kinds_cols slabs of
// slab_rows x slab_pitch floats, slab[r][c] = x[r * row_step + i - pad][c * col_step + j - pad] for
// kind (i, j), zero outside the image. Each kept weight becomes one input offset into an image's slabs
// (computed once per input geometry in Python), chosen so that a run of consecutive outputs of one
// output row (or, in flat layouts, of the whole output plane) reads consecutive floats: the vector
// dimension is the output row. The output plane is unit_rows x unit_len (unit_rows = Ho and
// unit_len = Wo, or 1 and Ho * Wo for flat layouts); consecutive unit rows start unit_row_stride
// floats apart in the slabs.
// A kernel reads at most 7 floats past a unit row's last input; with a workspace it builds the slabs
// of G images at a time there, followed by 8 floats of slack. Without one (workspace address 0) the
// input itself is the one slab per channel, which needs unit_len % 8 == 0 so that nothing is read past
// its end.
//
// Gradients. The weight gradient at the kept entries (*_grad_weight_*) takes the forward's table and
// sizes, with dy (laid out as the forward's y) in the output row, read, and dL/d values in the values
// row, written; the bias row is address 0. Each kept weight's gradient is the sum, over the batch's
// output positions, of dy times the input its offset pairs with that output; dy's lanes past a unit row
// are never read. The input gradient needs no entry point of its own: it is the forward on the
// transposed weight (per input channel and stride phase, the kept (co, kh, kw)), which
// pylth/ops/sparse_grad.py derives from the taps.
#pragma once
#include <cstdint>

namespace pylth {

// Columns of the CPU table: one row per tensor, (data address, number of elements).
enum SparseConvCpuRow : int {
  kScInput = 0,   // float x [N, Ci, H, W]
  kScWorkspace,   // float [G * Ci * kinds_rows * kinds_cols * slab_rows * slab_pitch + 8], G >= 1 images
                  // at a time (G = min(N, what fits)), or address 0 to read the input in place
  kScOutput,      // float y [N, Co, unit_rows, unit_len]
  kScRowPtr,      // int64 [Co + 1]
  kScOffsets,     // int32 [nnz], input offsets within one image's slabs
  kScValues,      // float [nnz]
  kScBias,        // float [Co], or address 0 for no bias
  kScCpuRows
};
// The weight gradient's reading of the same rows: dy where the forward writes y, dL/d values where it
// reads the values.
enum SparseConvGradCpuRow : int {
  kScGradOutput = kScOutput,  // float dy [N, Co, unit_rows, unit_len]
  kScGradValues = kScValues,  // float [nnz], written
};

// Columns of the CUDA table (device memory addresses, numbers of elements); the CUDA kernels read the
// taps and pad implicitly, so they need no workspace. The weight gradient reads dy from the output row
// and writes dL/d values into the values row, as on the CPU.
enum SparseConvCudaRow : int {
  kSgInput = 0,  // float x [N, Ci, H, W]
  kSgOutput,     // float y [N, Co, Ho, Wo]
  kSgRowPtr,     // int64 [Co + 1]
  kSgTaps,       // int32 [nnz]
  kSgValues,     // float [nnz]
  kSgBias,       // float [Co], or address 0
  kSgCudaRows
};

constexpr int kSparseConvTableWidth = 2;  // address, numel

#ifdef PYLTH_WITH_CUDA
// Rows as in SparseConvCudaRow, read on the host (addresses only); the CUDA kernels never see the table.
void sparse_conv2d_cuda_launch(const std::int64_t* table, std::int64_t n, std::int64_t ci, std::int64_t h,
                               std::int64_t w, std::int64_t co, std::int64_t ho, std::int64_t wo, std::int64_t kh,
                               std::int64_t kw, std::int64_t stride, std::int64_t pad, std::uintptr_t stream);
void sparse_conv2d_grad_weight_cuda_launch(const std::int64_t* table, std::int64_t n, std::int64_t ci,
                                           std::int64_t h, std::int64_t w, std::int64_t co, std::int64_t ho,
                                           std::int64_t wo, std::int64_t kh, std::int64_t kw, std::int64_t stride,
                                           std::int64_t pad, std::uintptr_t stream);
#endif

}  // namespace pylth
