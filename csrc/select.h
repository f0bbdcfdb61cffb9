// CUDA launcher of the segmented magnitude selection (plain C++ interface; select.cpp binds it).
#pragma once
#include <cstdint>

namespace pylth {

// Elements handled by one thread block; the caller sizes its chunk table with it.
constexpr int64_t kSelectCudaChunk = 8192;

// int64 words of zeroed workspace select_cuda needs.
int64_t select_cuda_workspace_words(int64_t segments, int64_t groups, int64_t chunks);

// meta (device int64): per segment {weight ptr, mask ptr or 0, out ptr, size}, then segments + 1
// chunk offsets (segment s owns chunks [start[s], start[s+1]) of kSelectCudaChunk elements).
// ratios (device float64): one per segment, or one in global mode. bad (device int32, zeroed):
// set to 1 for segments holding inf/NaN. All launches go to `stream`.
void select_cuda(std::uintptr_t meta, std::uintptr_t ratios, std::uintptr_t workspace, std::uintptr_t bad,
                 int64_t segments, int64_t chunks, bool global_mode, std::uintptr_t stream);

}  // namespace pylth
