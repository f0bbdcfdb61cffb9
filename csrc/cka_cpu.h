// The CPU CKA's inner loops, one set per vector instruction set (csrc/cpu_dispatch.h): cka_loops.cpp
// builds the portable set for the baseline and AVX2 paths, cka_avx512.cpp and cka_gram_avx512.cpp
// write AVX-512's. cka.cpp runs the pipeline on the set that active_cpu_isa() picks.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu_dispatch.h"

namespace pylth {

// A matrix's nonzeros in row order: row i's are entries [row_start[i], row_start[i + 1]) of cols and
// values. cols and values are buffers with room to spare (a vector scan stores whole vectors), grown
// and never shrunk: one Nonzeros serves pair after pair.
struct Nonzeros {
  std::vector<int64_t> row_start;
  std::vector<int32_t> cols;
  std::vector<double> values;

  // Room for `more` entries after the first `used`.
  void reserve_more(int64_t used, int64_t more) {
    const auto need = static_cast<size_t>(used + more);
    if (cols.size() < need) {
      cols.resize(need + need / 2);
      values.resize(need + need / 2);
    }
  }
};

// Scratch of the dense Gram kernel (per thread, grown and never shrunk).
struct GramScratch {
  std::vector<float> panels;
  std::vector<double> product;
};

// The sums one row of the kernel matrices adds (right of the diagonal): sum k*l, k*k, l*l, k, l.
struct RowSums {
  double kl = 0, kk = 0, ll = 0, k = 0, l = 0;
};

struct CkaLoops {
  // row[k] = max(gii + diag_right[k] - 2 row[k], 0) for k < count: a Gram row's squared distances
  // (clamped: rounding can make them negative).
  void (*squared_distances)(double* row, const double* diag_right, double gii, int64_t count);
  // Row i's kernel values right of the diagonal (count of them) for both sides, from squared distances
  // (rbf: exp(scale * d2)) or Gram values (linear: themselves): adds each value into its column's sum
  // (rk, rl, offset to column i + 1) and returns the row's sums. scratch: room for 2 * count doubles.
  RowSums (*hsic_row)(const double* gx, const double* gy, int64_t count, double x_scale, double y_scale, bool rbf,
                      double* rk, double* rl, double* scratch);
  // Copies the values of u[0..m) in [low, high] to gathered (room for m) and counts those below
  // low (`below`); returns how many it copied.
  int64_t (*gather_bracket)(const double* u, int64_t m, double low, double high, double* gathered, int64_t& below);
  // The nonzeros of a row-major n x d matrix (NaN counts as nonzero, so that it reaches the Gram).
  void (*scan_nonzeros_f32)(const float* x, int64_t n, int64_t d, Nonzeros& out);
  void (*scan_nonzeros_f64)(const double* x, int64_t n, int64_t d, Nonzeros& out);
  // How many of p[0..count) are nonzero.
  int64_t (*count_nonzeros_f32)(const float* p, int64_t count);
  int64_t (*count_nonzeros_f64)(const double* p, int64_t count);
  // The Gram X X^T of a dense row-major n x d float32 matrix: its diagonal (n values) and its strict
  // upper triangle packed by rows; nullptr on paths that leave dense Grams to BLAS.
  void (*dense_gram_f32)(const float* x, int64_t n, int64_t d, GramScratch& scratch, double* diag, double* upper);
};

// The loops of `isa` (cka_loops.cpp).
const CkaLoops& cka_loops(CpuIsa isa);

#ifdef PYLTH_ISA_VARIANTS
extern const CkaLoops kCkaLoopsAvx512;  // cka_avx512.cpp
void dense_gram_f32_avx512(const float* x, int64_t n, int64_t d, GramScratch& scratch, double* diag, double* upper);
#endif

// Where row i of a strict upper triangle packed by rows begins (its entries for columns i+1..n-1).
inline int64_t packed_row(int64_t i, int64_t n) { return i * (2 * n - i - 1) / 2; }

}  // namespace pylth
