// CUDA error checking for .cu files: a failed call raises std::runtime_error naming the call.
#pragma once
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>

#define PYLTH_CUDA_CHECK(expr)                                                                   \
  do {                                                                                           \
    cudaError_t pylth_err_ = (expr);                                                             \
    if (pylth_err_ != cudaSuccess)                                                               \
      throw std::runtime_error(std::string("CUDA error in ") + #expr + ": " +                   \
                               cudaGetErrorString(pylth_err_));                                  \
  } while (0)

// Launch errors surface at the next call; check right after each launch.
#define PYLTH_CUDA_CHECK_LAUNCH() PYLTH_CUDA_CHECK(cudaGetLastError())
