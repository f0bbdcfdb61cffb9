// Segmented magnitude selection: the table layout shared by select.cpp (CPU kernel and bindings) and
// select.cu (CUDA kernels), and the CUDA launcher's plain C++ interface.
#pragma once
#include <cstdint>

#include "common.h"

namespace pylth {

// One row per segment (tensor): the address of its float32 weights, of its uint8/bool mask of active
// entries (0: every entry is active), of its uint8 output mask, and its element count.
//   select_cpu(table, rows, width, ratios, global_mode, use_bracket, num_threads) -> first segment
//     with a non-finite weight, or -1. The table in host memory; ratios: the address of one float64 per
//     segment, or of one in global mode (all segments ranked as one); use_bracket false leaves the
//     exact radix select alone (tests use it).
//   select_cuda(table, rows, width, ratios, workspace, bad, chunks, global_mode, stream): table in
//     device memory, followed in the same allocation by rows + 1 chunk offsets (segment s owns
//     chunks [start[s], start[s+1]) of kSelectCudaChunk elements, `chunks` in all). ratios: device
//     float64 as above; workspace: select_cuda_workspace_words zeroed int64 words; bad: one zeroed
//     int32 per segment, set to 1 for segments holding inf/NaN. All launches go to `stream`.
enum SelectColumn : int { kSelectWeight = 0, kSelectMask, kSelectOut, kSelectSize, kSelectColumns };

// Elements handled by one CUDA thread block; the caller sizes its chunk offsets with it.
constexpr int64_t kSelectCudaChunk = 8192;

#ifdef PYLTH_WITH_CUDA
// int64 words of zeroed workspace select_cuda needs.
int64_t select_cuda_workspace_words(int64_t segments, int64_t groups, int64_t chunks);

void select_cuda(const ArgTable& segments, std::uintptr_t ratios, std::uintptr_t workspace, std::uintptr_t bad,
                 int64_t chunks, bool global_mode, std::uintptr_t stream);
#endif

}  // namespace pylth
