// Exceptions and OpenMP for the .cpp kernels (kept out of common.h, which the .cu files include too).
#pragma once
#include <exception>

namespace pylth {

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
