// Shared helpers for the native kernels: argument errors and CUDA error checks that raise, never abort.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pylth {

// pybind11 maps std::invalid_argument to ValueError and std::runtime_error to RuntimeError.
inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// Raw device/host pointers travel from Python as integers (tensor.data_ptr()).
template <typename T>
inline T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace pylth
