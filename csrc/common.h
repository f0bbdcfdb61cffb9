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

// Whether every one of n entries satisfies `ok` (checked in one branch-free pass). For per-entry checks:
// a require() per entry builds its message string on every call, which cost the sparse conv more than
// its multiply-adds on small planes (a malloc and free per kept weight).
template <typename Index, typename Ok>
inline bool all_of_entries(Index n, Ok ok) {
  bool all = true;
  for (Index i = 0; i < n; ++i) all &= static_cast<bool>(ok(i));
  return all;
}

// Raw device/host pointers travel from Python as integers (tensor.data_ptr()).
template <typename T>
inline T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// The one calling convention of _pylth's entry points (pylth/ops/dispatch.py builds the calls):
//   name_cpu(table, rows, width, scalars..., num_threads)
//   name_cuda(table, rows, width, scalars..., stream)
// The per-tensor arguments travel as one table: a contiguous int64 array of rows x width values
// (data addresses as integers, sizes, flags), in host memory, or in device memory for a CUDA
// launcher whose kernels read it (its header says so); each kernel's header names its columns.
// The scalars follow, then the OpenMP thread count or the cudaStream_t as an integer.
class ArgTable {
 public:
  ArgTable(std::uintptr_t address, int64_t rows, int64_t width, int64_t expected_width, const char* kernel)
      : data_(as_ptr<const int64_t>(address)), rows_(rows), width_(width) {
    require(width == expected_width, std::string(kernel) + ": the table must have " +
                                         std::to_string(expected_width) + " columns, got " + std::to_string(width));
    require(rows >= 0, std::string(kernel) + ": the table has a negative row count");
    require(rows == 0 || address != 0, std::string(kernel) + ": null table");
  }
  int64_t rows() const { return rows_; }
  const int64_t* data() const { return data_; }
  // Only for tables in host memory.
  int64_t at(int64_t row, int64_t column) const { return data_[row * width_ + column]; }
  template <typename T>
  T* ptr(int64_t row, int64_t column) const {
    return as_ptr<T>(static_cast<std::uintptr_t>(at(row, column)));
  }

 private:
  const int64_t* data_;
  int64_t rows_, width_;
};

}  // namespace pylth
