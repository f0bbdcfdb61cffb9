// Shared helpers for the native kernels: argument errors and CUDA error checks that raise, never abort.
#pragma once
#include <cstdint>
#include <exception>
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

// An exception (std::bad_alloc) must not escape an OpenMP region, where it would terminate the
// process: run each iteration's body through run(), then call rethrow() after the region.
class FirstError {
 public:
  template <typename F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
#pragma omp critical(pylth_first_error)
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
};

}  // namespace pylth
