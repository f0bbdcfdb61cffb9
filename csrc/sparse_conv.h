// Sparse-weight Conv2d forward and backward (and Linear, as a 1x1 conv over the transposed batch), fp32,
// dense NCHW activations. pylth/ops/sparse_conv.py compresses the weight once and builds, per input
// size, the plan below; pylth/ops/sparse_grad.py launches the backward.
//
// Compressed weight (one CSR row per output channel, entries in increasing tap order):
//   row_ptr  int64 [Co + 1]  entries of channel co are row_ptr[co] .. row_ptr[co + 1]
//   taps     int32 [nnz]     ci * KH * KW + kh * KW + kw of each kept weight (the CUDA kernels read these)
//   values   float [nnz]
//
// CPU. The vector dimension runs along output rows: a "unit row" of row_len consecutive outputs (one
// output row, or in flat layouts the whole plane, L = Ho * Wo) is cut into vectors; where row_len is not
// a whole number of vectors the last vector starts at row_len - lanes and overlaps the one before it (it
// recomputes the same values), so every store is a whole vector and nothing is computed for lanes outside
// the row. A row shorter than one vector is one partial vector. Output row r of channel co of image n
// starts at out + n * out_image + co * out_pitch + r * out_row_stride.
//
// The input is read from "slabs": per (image, input channel) a block of plane_floats floats holding the
// plane inside pad zero rows and columns, each padded row split into col_step column phases:
// slab[j][r][c] = x[r - pad_rows][c * col_step + j - pad_cols] (zero outside the image) at
// (j * slab_rows + r) * slab_pitch + c, slab_rows = H + 2 pad_rows. Every kept weight has one offset such
// that the input its product needs for output c of unit row r is at slab + offset + r * in_row_stride + c:
// for a conv of stride s, unit rows are output rows (in_row_stride = s * slab_pitch) and tap (kh, kw)
// reads phase kw % s, row s * oy + kh, column ox + kw / s. The borders are written once per call, each
// image only copies (and splits) its rows. A 1x1 conv of stride 1 without padding reads its input planes
// in place instead ("direct", flat: the plane is one unit row).
//
// Forward (sparse_conv2d_cpu): tiles of output vectors (several units of consecutive vectors, from one
// or more rows and images) keep their accumulators in registers while every output channel's kept
// weights stream past, one broadcast and one multiply-add per vector each; the tile's inputs stay in
// cache from one channel to the next. Backward (sparse_conv2d_backward_cpu): dL/dx is the forward on the
// transposed weight over dy (its own plan: per input channel and stride phase the kept (co, kh, kw),
// built by pylth/ops/sparse_grad.py), dL/d values one dot product per kept weight of dy with the input
// its offset pairs with each output; both run image group by image group in one pass, so that dy and x
// are read from memory once. Images are taken `group` at a time: their slabs are built into the
// workspace and stay in cache while they are read.
#pragma once
#include <cstdint>

namespace pylth {

// The int64 plan row of one conv (one input size), fields in this order.
enum SparseConvPlanField : int {
  kPlanImages = 0,    // N
  kPlanInChannels,    // Ci (dy's Co for the input gradient)
  kPlanHeight,        // H, W of the input plane
  kPlanWidth,
  kPlanOutChannels,   // Co
  kPlanUnitRows,      // unit rows per output plane (Ho, or 1 in flat layouts)
  kPlanRowLength,     // outputs per unit row (Wo, or Ho * Wo)
  kPlanInRowStride,   // floats between consecutive unit rows' inputs in a slab
  kPlanOutRowStride,  // floats between consecutive unit rows' outputs
  kPlanOutPitch,      // floats between the outputs of consecutive channels (Ho * Wo for a conv)
  kPlanOutImage,      // floats between the outputs of consecutive images (Co * Ho * Wo for a conv)
  kPlanDirect,        // 1: read the input in place (direct layout)
  kPlanPlaneFloats,   // floats per slab (direct: the input's plane stride)
  kPlanPadRows,
  kPlanPadCols,
  kPlanColStep,       // column phases per slab row (the conv's stride)
  kPlanSlabRows,
  kPlanSlabPitch,
  kPlanGroup,         // images whose slabs the workspace holds at a time (>= 1)
  kPlanFields
};

// Floats of slack past the slabs (a partial vector reads a whole vector) and for aligning the weight
// gradient's accumulators: enough for 16-float vectors.
constexpr std::int64_t kSlabSlack = 16;
// Floats per kept weight in the weight gradient's accumulators (one vector of partial sums).
constexpr std::int64_t kGradAccFloats = 16;

// Rows of the forward's table, columns (data address, number of elements).
enum SparseConvCpuRow : int {
  kScInput = 0,   // float x [N, Ci, H, W]
  kScWorkspace,   // float [group * Ci * plane_floats + kSlabSlack], or address 0 for the direct layout
  kScOutput,      // float y [N, Co, Ho, Wo]
  kScRowPtr,      // int64 [Co + 1]
  kScOffsets,     // int32 [nnz]
  kScValues,      // float [nnz]
  kScBias,        // float [Co], or address 0 for no bias
  kScPlan,        // int64 [kPlanFields]
  kScCpuRows
};

// Rows of the backward's table: the forward's weight (for dL/d values) and the transposed one (for
// dL/dx), which share dy. A gradient not wanted has address 0 in its output row (the rows only it reads
// are then not read).
enum SparseConvBackwardRow : int {
  kSbInput = 0,     // float x [N, Ci, H, W], the forward's input
  kSbGradOutput,    // float dy [N, Co, Ho, Wo]
  kSbWorkspace,     // float: the x slabs (weight gradient, not direct), dy slabs (input gradient, not
                    // direct), each group * Ci * plane_floats + kSlabSlack; the transposed values (nnz);
                    // the accumulators (kGradAccFloats * (nnz + 1)); the bias sums (N * Co); only the parts
                    // the gradients use
  kSbGradValues,    // float [nnz], dL/d values (written), or address 0
  kSbRowPtr,        // the forward weight's row_ptr, offsets and plan, as in SparseConvCpuRow
  kSbOffsets,
  kSbPlan,
  kSbGradInput,     // float: dL/dx as the transposed conv's output (its plan's layout), or address 0
  kSbValues,        // float [nnz], the forward's values
  kSbTRowPtr,       // the transposed weight's row_ptr, offsets and plan, and the forward entry of each
  kSbTOffsets,      // of its entries (int32 [nnz]: its values are values[order])
  kSbTOrder,
  kSbTPlan,
  kSbGradBias,      // float [Co], dL/d bias (written): per image and channel the sum of dy, then over the
                    // images in order; or address 0
  kSbRows
};

// The linear's table: SparseConvCpuRow without the plan; the workspace holds x^T and y^T (or dy^T),
// their rows `pitch` floats apart (the batch rounded up to 16), then kSlabSlack floats and, for the
// weight gradient, the accumulators.
enum SparseLinearCpuRow : int {
  kSlInput = 0,   // float x [B, I]
  kSlWorkspace,   // float [(I + O) * pitch + kSlabSlack (+ kGradAccFloats * (nnz + 1))]
  kSlOutput,      // float y [B, O] (the weight gradient reads dy here)
  kSlRowPtr,      // int64 [O + 1]
  kSlOffsets,     // int32 [nnz]: tap * pitch
  kSlValues,      // float [nnz]: read by the forward, written by the weight gradient
  kSlBias,        // float [O], or address 0
  kSlRows
};

// Columns of the CUDA table (device memory addresses, numbers of elements); the CUDA kernels read the
// taps and pad implicitly, so they need no workspace. The weight gradient reads dy from the output row
// and writes dL/d values into the values row.
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
