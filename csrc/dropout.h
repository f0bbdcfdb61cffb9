// Keyed dropout: a dropout mask that is a function of (key, the row's index in the global batch, the
// element's index in its row) instead of a draw from a generator's state. The trainer makes the key
// from (seed, iteration, layer), so every image of a global batch gets the same mask whatever the
// number of processes that share the batch, a resumed run the masks of an uninterrupted one, and the
// backward pass regenerates the mask instead of storing it (it is the same kernel on the gradient).
//
//   row_key(key, g) = fold(mix64(key + (g + 1) * kGolden64))     g = row_offset + row * row_stride
//   bits(r, e)      = lowbias32(r ^ (e * kGolden32))             e = the element's index in its row
//   y = bits >= threshold ? x * scale : 0                        threshold = round(p * 2^32)
//
// mix64 is splitmix64's finaliser, lowbias32 Wellons' two-multiply 32-bit hash: a few integer
// operations per element, no state, vectorisable; pylth/ops/dropout.py holds the same functions in
// torch (the reference). Tensors are contiguous, [rows, per_row] with per_row < 2^32.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PYLTH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYLTH_HOST_DEVICE inline
#endif

namespace pylth {

// Rows of the table, columns (data address, number of elements).
enum DropoutRow : int {
  kDropoutInput = 0,  // x [rows, per_row]: the activations, or the output's gradient in the backward pass
  kDropoutOutput,     // y [rows, per_row]
  kDropoutRows
};

constexpr int kDropoutTableWidth = 2;
constexpr std::uint64_t kGolden64 = 0x9E3779B97F4A7C15ull;
constexpr std::uint32_t kGolden32 = 0x9E3779B9u;

PYLTH_HOST_DEVICE std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

PYLTH_HOST_DEVICE std::uint32_t dropout_row_key(std::uint64_t key, std::uint64_t global_row) {
  const std::uint64_t z = mix64(key + (global_row + 1) * kGolden64);
  return static_cast<std::uint32_t>(z ^ (z >> 32));
}

PYLTH_HOST_DEVICE std::uint32_t lowbias32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

PYLTH_HOST_DEVICE std::uint32_t dropout_bits(std::uint32_t row_key, std::uint32_t element) {
  return lowbias32(row_key ^ (element * kGolden32));
}

// The element types of dropout_cuda (dropout_cpu takes float32 only).
enum DropoutDtype : int { kDropoutFloat32 = 0, kDropoutFloat16 = 1, kDropoutBFloat16 = 2 };

// One launch of the CUDA kernel, checked by the binding in dropout.cpp.
struct DropoutLaunch {
  const void* x;
  void* y;
  std::int64_t rows, per_row;
  std::uint64_t key;
  std::int64_t row_offset, row_stride;
  std::uint32_t threshold;
  float scale;
  int dtype;  // a DropoutDtype
};

#ifdef PYLTH_WITH_CUDA
// On the current CUDA device and `stream` (a cudaStream_t as an integer).
void dropout_cuda(const DropoutLaunch& launch, std::uintptr_t stream);
#endif

}  // namespace pylth
