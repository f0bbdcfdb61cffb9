// CKA on the CPU, batched over pairs and fused per pair (OpenMP over pairs): each side's Gram matrix
// (from BLAS for dense inputs, computed here on the AVX-512 path, or gathered here from a mostly-zero
// matrix's nonzeros), squared distances, the median bandwidth by selection, the RBF (or linear) kernel
// and the HSIC sums with float64 accumulation, all in per-thread buffers that stay in cache from one
// step to the next. The inner loops come from the active CPU path (cka_cpu.h).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cka.h"
#include "cka_cpu.h"
#include "common.h"
#include "omp_error.h"

namespace py = pybind11;

namespace pylth {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The q-th smallest of u (reordering u); -1 means one of the diagonal zeros.
double order_statistic(std::vector<double>& u, int64_t q) {
  if (q < 0) return 0.0;
  std::nth_element(u.begin(), u.begin() + q, u.end());
  return u[q];
}

// Scratch of the median selections (per thread, grown and never shrunk: a resize back up from the last
// count would zero-fill most of it every time).
struct MedianScratch {
  std::vector<double> work, sample;
};

// The mean of the lo-th and hi-th smallest of u (see middle_pair) without reordering u, faster on large u
// (Floyd-Rivest): two values from a strided sample bracket ranks lo..hi; one pass (gather_bracket)
// counts what lies below the bracket and gathers what lies in it, and only that small part is selected
// from. False (nothing computed) when the sample misses.
bool middle_pair_sampled(const std::vector<double>& u, int64_t lo, int64_t hi, const CkaLoops& loops,
                         MedianScratch& scratch, double& result) {
  const auto m = static_cast<int64_t>(u.size());
  if (lo < 0 || m < 8192) return false;  // smaller: a selection in a copy costs about as much
  // s ~ (2m)^(2/3) samples balance their two selections against the selection among the ~4m/sqrt(s)
  // values that a bracket of 4 standard deviations of the sample rank each side lets through.
  const double root = std::cbrt(2.0 * static_cast<double>(m));
  const int64_t count = std::clamp<int64_t>(static_cast<int64_t>(root * root), 256, 32768);
  const int64_t margin = static_cast<int64_t>(2.0 * std::sqrt(static_cast<double>(count))) + 2;
  std::vector<double>& sample = scratch.sample;
  sample.resize(count);
  for (int64_t s = 0; s < count; ++s) sample[s] = u[s * (m / count)];
  // Two order statistics of the sample (selections, cheaper than sorting it).
  const int64_t rank = lo * count / m;
  const int64_t high_rank = std::min<int64_t>(rank + margin, count - 1);
  const int64_t low_rank = std::max<int64_t>(rank - margin, 0);
  std::nth_element(sample.begin(), sample.begin() + high_rank, sample.end());
  const double high = sample[high_rank];
  std::nth_element(sample.begin(), sample.begin() + low_rank, sample.begin() + high_rank);
  const double low = sample[low_rank];
  if (static_cast<int64_t>(scratch.work.size()) < m) scratch.work.resize(m);
  double* gathered = scratch.work.data();
  int64_t below;
  const int64_t inside = loops.gather_bracket(u.data(), m, low, high, gathered, below);
  if (lo < below || hi >= below + inside) return false;
  double* at_hi = gathered + (hi - below);
  std::nth_element(gathered, at_hi, gathered + inside);
  result = lo == hi ? *at_hi : 0.5 * (*std::max_element(gathered, at_hi) + *at_hi);
  return true;
}

// Mean of the lo-th and hi-th smallest of u (hi is lo or lo + 1; lo == -1 stands for a diagonal zero);
// u is only read. The sampled bracket when it holds, else in a copy: one selection for hi, then the
// maximum of the part below it for lo.
double middle_pair(const std::vector<double>& u, int64_t lo, int64_t hi, const CkaLoops& loops,
                   MedianScratch& scratch) {
  double sampled;
  if (middle_pair_sampled(u, lo, hi, loops, scratch, sampled)) return sampled;
  std::vector<double>& work = scratch.work;
  work.assign(u.begin(), u.end());
  const double upper = order_statistic(work, hi);
  if (lo == hi) return upper;
  const double lower = lo < 0 ? 0.0 : *std::max_element(work.begin(), work.begin() + hi);
  return 0.5 * (lower + upper);
}

// Median of all n*n squared distances (Kornblith et al. 2019); when it is 0, the median of the
// positive ones; NaN when there are none (all rows identical). u: the strict upper triangle, only
// read.
double median_squared_distance(const std::vector<double>& u, int64_t n, const CkaLoops& loops,
                               MedianScratch& scratch) {
  const MedianIndices mid = median_indices(n);
  const double median = middle_pair(u, mid.lo, mid.hi, loops, scratch);
  if (median > 0.0) return median;
  // The positives' median: each positive appears twice in the full matrix, which leaves it unchanged,
  // and the zeros (distances are clamped at 0) rank below every positive, as in csrc/cka.cu.
  const int64_t zeros = std::count_if(u.begin(), u.end(), [](double v) { return v <= 0.0; });
  const int64_t positives = static_cast<int64_t>(u.size()) - zeros;
  if (positives == 0) return kNaN;
  return middle_pair(u, zeros + (positives - 1) / 2, zeros + positives / 2, loops, scratch);
}

// One side of a pair: the Gram diagonal and strict upper triangle (packed by rows); for the RBF
// kernel the triangle is then overwritten with squared distances and scale = -1 / (2 sigma^2).
struct Side {
  std::vector<double> diag, upper;
  double scale = 0.0;
};

// Per-thread buffers, reused from pair to pair: a call touches a few MB per thread that stay in
// cache, instead of a float64 Gram buffer for every matrix (page faults, a round trip to memory).
struct Workspace {
  explicit Workspace(const CkaLoops& l) : loops(l) {}
  const CkaLoops& loops;                     // the active CPU path's, chosen once per call
  Side x, y;
  Nonzeros found;                            // a mostly-zero matrix's nonzeros in row order
  std::vector<int64_t> column_start, cursor;  // counting sort by column
  std::vector<int32_t> rows;                 // the nonzeros grouped by column, rows increasing
  std::vector<double> values;
  GramScratch gram;                          // the dense Gram kernel's
  MedianScratch median;
  std::vector<double> row_scratch, rk, rl;   // kernel_sums
};

// Squared distances G_ii + G_jj - 2 G_ij in place of the upper triangle (clamped at 0: rounding can
// make them negative), then the bandwidth; false when it is undefined.
bool prepare(Side& s, int64_t n, CkaKernel kernel, double threshold, const CkaLoops& loops, MedianScratch& scratch) {
  if (kernel == CkaKernel::linear) return true;
  for (int64_t i = 0; i < n; ++i)
    loops.squared_distances(s.upper.data() + packed_row(i, n), s.diag.data() + i + 1, s.diag[i], n - i - 1);
  const double median = median_squared_distance(s.upper, n, loops, scratch);
  if (std::isnan(median)) return false;
  s.scale = -1.0 / (2.0 * threshold * threshold * median);
  return true;
}

template <CkaKernel kKernel>
HsicSums kernel_sums(const Side& x, const Side& y, int64_t n, bool unbiased, Workspace& w) {
  std::vector<double>& rk = w.rk;
  std::vector<double>& rl = w.rl;
  rk.assign(n, 0.0);
  rl.assign(n, 0.0);
  w.row_scratch.resize(2 * n);
  HsicSums t;
  for (int64_t i = 0; i < n; ++i) {
    // Kernel values of row i right of the diagonal; the lower triangle is their mirror image.
    const RowSums row = w.loops.hsic_row(x.upper.data() + packed_row(i, n), y.upper.data() + packed_row(i, n),
                                         n - i - 1, x.scale, y.scale, kKernel == CkaKernel::rbf, rk.data() + i + 1,
                                         rl.data() + i + 1, w.row_scratch.data());
    t.kl += 2.0 * row.kl;
    t.kk += 2.0 * row.kk;
    t.ll += 2.0 * row.ll;
    rk[i] += row.k;
    rl[i] += row.l;
  }
  if (!unbiased) {  // the diagonal: exp(0) = 1 for RBF, the squared row norms for linear
    for (int64_t i = 0; i < n; ++i) {
      const double k = kKernel == CkaKernel::rbf ? 1.0 : x.diag[i];
      const double l = kKernel == CkaKernel::rbf ? 1.0 : y.diag[i];
      t.kl += k * l;
      t.kk += k * k;
      t.ll += l * l;
      rk[i] += k;
      rl[i] += l;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    t.r += rk[i];
    t.s += rl[i];
    t.rs += rk[i] * rl[i];
    t.rr += rk[i] * rk[i];
    t.ss += rl[i] * rl[i];
  }
  return t;
}

// A dense n x n Gram (a BLAS product, float32 or float64) into a side.
template <typename T>
void dense_gram_side(const T* g, int64_t n, Side& s) {
  s.diag.resize(n);
  s.upper.resize(n * (n - 1) / 2);
  for (int64_t i = 0; i < n; ++i) {
    s.diag[i] = static_cast<double>(g[i * n + i]);
    std::copy(g + i * n + i + 1, g + (i + 1) * n, s.upper.begin() + packed_row(i, n));
  }
}

// The float64 Gram of a mostly-zero n x d matrix into a side: one scan in row order gathers the
// nonzeros (the path's scan_nonzeros), a stable counting sort groups them by column, and each column
// adds the products of its pairs of nonzeros: the cost is ~ the sum over columns of nnz^2, not n^2 d.
template <typename T>
void sparse_gram_side(const T* x, int64_t n, int64_t d, Workspace& w, Side& s) {
  Nonzeros& found = w.found;
  if constexpr (std::is_same_v<T, float>)
    w.loops.scan_nonzeros_f32(x, n, d, found);
  else
    w.loops.scan_nonzeros_f64(x, n, d, found);
  const int64_t count = found.row_start[n];
  w.column_start.assign(d + 1, 0);
  for (int64_t e = 0; e < count; ++e) ++w.column_start[found.cols[e] + 1];
  std::partial_sum(w.column_start.begin(), w.column_start.end(), w.column_start.begin());
  w.cursor.assign(w.column_start.begin(), w.column_start.end() - 1);
  w.rows.resize(count);
  w.values.resize(count);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t e = found.row_start[i]; e < found.row_start[i + 1]; ++e) {
      const int64_t slot = w.cursor[found.cols[e]]++;
      w.rows[slot] = static_cast<int32_t>(i);
      w.values[slot] = found.values[e];
    }
  s.diag.assign(n, 0.0);
  s.upper.assign(n * (n - 1) / 2, 0.0);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t a = w.column_start[c]; a < w.column_start[c + 1]; ++a) {
      const int64_t ra = w.rows[a];
      const double va = w.values[a];
      s.diag[ra] += va * va;
      // Row ra's packed entries, indexed by the column (a later row, > ra) they pair with.
      const int64_t base = packed_row(ra, n) - ra - 1;
      for (int64_t b = a + 1; b < w.column_start[c + 1]; ++b) s.upper[base + w.rows[b]] += va * w.values[b];
    }
}

// One input matrix: its address, where its Gram comes from (csrc/cka.h) and, for a given one, its
// address.
struct Matrix {
  std::uintptr_t x, gram;
  int64_t rows, cols;
  bool is_double;
  CkaGramSource source;
};

// A side's Gram; false when its diagonal (the squared row norms, which a NaN or infinity anywhere in
// the matrix reaches, at O(n) instead of O(n d)) is not finite.
bool load_side(const Matrix& m, Workspace& w, Side& s) {
  switch (m.source) {
    case CkaGramSource::given:
      if (m.is_double) dense_gram_side(as_ptr<const double>(m.gram), m.rows, s);
      else dense_gram_side(as_ptr<const float>(m.gram), m.rows, s);
      break;
    case CkaGramSource::nonzeros:
      if (m.is_double) sparse_gram_side(as_ptr<const double>(m.x), m.rows, m.cols, w, s);
      else sparse_gram_side(as_ptr<const float>(m.x), m.rows, m.cols, w, s);
      break;
    case CkaGramSource::dense:  // float32 on a path with the kernel: matrices_of checked both
      s.diag.resize(m.rows);
      s.upper.resize(m.rows * (m.rows - 1) / 2);
      w.loops.dense_gram_f32(as_ptr<const float>(m.x), m.rows, m.cols, w.gram, s.diag.data(), s.upper.data());
      break;
  }
  return std::all_of(s.diag.begin(), s.diag.end(), [](double v) { return std::isfinite(v); });
}

// The CKA of one pair; non_finite[side] is set (and NaN returned) for a side with non-finite values.
double pair_cka(const Matrix& mx, const Matrix& my, CkaKernel kernel, double threshold, bool unbiased,
                Workspace& w, uint8_t& x_non_finite, uint8_t& y_non_finite) {
  const int64_t n = mx.rows;
  // An error about xs takes precedence over all about ys: y need not be looked at when x is bad.
  if (!load_side(mx, w, w.x)) return x_non_finite = 1, kNaN;
  if (!load_side(my, w, w.y)) return y_non_finite = 1, kNaN;
  if (!prepare(w.x, n, kernel, threshold, w.loops, w.median) || !prepare(w.y, n, kernel, threshold, w.loops, w.median))
    return kNaN;
  const HsicSums t = kernel == CkaKernel::rbf ? kernel_sums<CkaKernel::rbf>(w.x, w.y, n, unbiased, w)
                                              : kernel_sums<CkaKernel::linear>(w.x, w.y, n, unbiased, w);
  return cka_from_sums(t, n, unbiased);
}

// Indices 0..count-1 by decreasing cost, so that the dynamic schedule balances the threads.
std::vector<int64_t> largest_first(const std::vector<int64_t>& cost) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

// The matrices of a CPU table (csrc/cka.h), checked: shapes in int32 range, every matrix's address, each
// Gram's source, and that the path computes those it is asked to.
std::vector<Matrix> matrices_of(const ArgTable& table, int64_t min_cols, const CkaLoops& loops, const char* kernel) {
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  std::vector<Matrix> mats(table.rows());
  for (int64_t m = 0; m < table.rows(); ++m) {
    const int64_t rows = table.at(m, kCkaRows), cols = table.at(m, kCkaCols);
    require(rows >= 0 && rows <= kInt32Max && cols >= min_cols && cols <= kInt32Max,
            std::string(kernel) + ": bad shape in row " + std::to_string(m));
    require(table.at(m, kCkaMatrix) != 0 || rows * cols == 0,
            std::string(kernel) + ": null matrix address in row " + std::to_string(m));
    const int64_t source = table.at(m, kCkaGramFrom);
    const bool is_double = table.at(m, kCkaIsDouble) != 0;
    require(source >= 0 && source <= 2, std::string(kernel) + ": bad Gram source in row " + std::to_string(m));
    require(source != static_cast<int64_t>(CkaGramSource::given) || table.at(m, kCkaGram) != 0,
            std::string(kernel) + ": null Gram address in row " + std::to_string(m));
    require(source != static_cast<int64_t>(CkaGramSource::dense) || (!is_double && loops.dense_gram_f32),
            std::string(kernel) + ": row " + std::to_string(m) + " asks for a dense Gram, which the " +
                cpu_isa_name(active_cpu_isa()) + " path computes only for float32 on AVX-512");
    mats[m] = {static_cast<std::uintptr_t>(table.at(m, kCkaMatrix)), static_cast<std::uintptr_t>(table.at(m, kCkaGram)),
               rows, cols, is_double, static_cast<CkaGramSource>(source)};
  }
  return mats;
}

// Pair p compares table row p with row pairs + p; out: float64 [pairs].
void cka_cpu(std::uintptr_t table_address, int64_t rows, int64_t width, int kernel_id, double threshold, bool unbiased,
             std::uintptr_t out_address, int num_threads) {
  const ArgTable table(table_address, rows, width, kCkaColumns, "cka_cpu");
  require(rows % 2 == 0, "cka_cpu: the table must hold an even number of rows (xs, then ys)");
  require(kernel_id == 0 || kernel_id == 1, "kernel must be 0 (linear) or 1 (rbf)");
  require(threshold > 0.0 && std::isfinite(threshold), "threshold must be a positive finite number");
  require(num_threads >= 1, "cka_cpu: num_threads must be >= 1");
  require(rows == 0 || out_address != 0, "cka_cpu: null out");
  const int64_t pairs = rows / 2;
  const CkaLoops& loops = cka_loops(active_cpu_isa());
  const std::vector<Matrix> mats = matrices_of(table, 1, loops, "cka_cpu");
  double* out = as_ptr<double>(out_address);
  std::vector<int64_t> cost(pairs);
  for (int64_t p = 0; p < pairs; ++p) {
    const Matrix &x = mats[p], &y = mats[pairs + p];
    const int64_t n = x.rows;
    require(y.rows == n, "cka: pair " + std::to_string(p) + " has unequal row counts");
    require(n >= (unbiased ? 4 : 2), "every pair needs at least " + std::string(unbiased ? "4" : "2") + " rows");
    // Roughly: an exp per distance, a fraction of that per value a mostly-zero side's scan reads, and
    // per multiply-add of a Gram computed here.
    const auto scanned = [](const Matrix& m) { return m.source == CkaGramSource::nonzeros ? m.cols : 0; };
    const auto multiplied = [](const Matrix& m) { return m.source == CkaGramSource::dense ? m.cols : 0; };
    cost[p] = n * n + n * (scanned(x) + scanned(y)) / 8 + n * n * (multiplied(x) + multiplied(y)) / 64;
  }
  const CkaKernel kernel = static_cast<CkaKernel>(kernel_id);
  const std::vector<int64_t> order = largest_first(cost);
  std::vector<uint8_t> non_finite(2 * pairs, 0);
  {
    py::gil_scoped_release release;
    FirstError error;
#pragma omp parallel num_threads(num_threads)
    {
      Workspace w(loops);
#pragma omp for schedule(dynamic, 1)
      for (int64_t k = 0; k < pairs; ++k) {
        const int64_t p = order[k];
        error.run([&] {
          out[p] = pair_cka(mats[p], mats[pairs + p], kernel, threshold, unbiased, w, non_finite[p],
                            non_finite[pairs + p]);
        });
      }
    }
    error.rethrow();
  }
  for (int64_t m = 0; m < 2 * pairs; ++m)
    require(!non_finite[m], std::string(m < pairs ? "xs[" : "ys[") + std::to_string(m < pairs ? m : m - pairs) +
                                "] has non-finite values (or values whose squares overflow)");
}

// Whether every stride-th row of x holds at most limit nonzeros in all; stops as soon as they pass
// it (a dense matrix after its first row).
template <typename T>
bool sampled_rows_within(const T* x, int64_t n, int64_t d, int64_t stride, double limit, const CkaLoops& loops) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += stride) {
    if constexpr (std::is_same_v<T, float>)
      count += loops.count_nonzeros_f32(x + i * d, d);
    else
      count += loops.count_nonzeros_f64(x + i * d, d);
    if (static_cast<double>(count) > limit) return false;
  }
  return true;
}

// mostly_zero[m] = 1 where at most max_density of matrix m's values are nonzero, judged from every
// 16th row (every row of a matrix under 64 rows): reading 1/16 of a matrix decides whether its Gram
// is cheaper to gather from its nonzeros than to multiply out. A wrong guess costs time (and a dense
// matrix taken for sparse, memory for its nonzeros), never accuracy.
void mostly_zero_cpu(std::uintptr_t table_address, int64_t rows, int64_t width, double max_density,
                     std::uintptr_t mostly_zero_address, int num_threads) {
  const ArgTable table(table_address, rows, width, kCkaColumns, "mostly_zero_cpu");
  require(num_threads >= 1, "mostly_zero_cpu: num_threads must be >= 1");
  require(rows == 0 || mostly_zero_address != 0, "mostly_zero_cpu: null mostly_zero");
  const CkaLoops& loops = cka_loops(active_cpu_isa());
  const std::vector<Matrix> mats = matrices_of(table, 0, loops, "mostly_zero_cpu");
  uint8_t* mostly_zero = as_ptr<uint8_t>(mostly_zero_address);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t n = mats[m].rows, d = mats[m].cols;
    const int64_t stride = n >= 64 ? 16 : 1;
    const double limit = max_density * static_cast<double>((n + stride - 1) / stride * d);
    mostly_zero[m] = mats[m].is_double
                         ? sampled_rows_within(as_ptr<const double>(mats[m].x), n, d, stride, limit, loops)
                         : sampled_rows_within(as_ptr<const float>(mats[m].x), n, d, stride, limit, loops);
  }
}

#ifdef PYLTH_WITH_CUDA
static_assert(kCkaCudaColumns == 2, "cka.cu's kernels read rows of 2 values: Gram address, n");

void cka_cuda(std::uintptr_t table_address, int64_t rows, int64_t width, int64_t units, int64_t unit_entries,
              bool gram_double, int kernel_id, double threshold, bool unbiased, std::uintptr_t workspace,
              std::uintptr_t flags, std::uintptr_t out, std::uintptr_t stream) {
  const ArgTable table(table_address, rows, width, kCkaCudaColumns, "cka_cuda");
  require(rows % 2 == 0, "cka_cuda: the table must hold an even number of rows (xs, then ys)");
  const int64_t pairs = rows / 2;
  require(units >= pairs, "cka_cuda: need at least one work unit per pair");
  require(unit_entries > 0, "unit_entries must be positive");
  require(2 * pairs <= std::numeric_limits<int32_t>::max() && units <= std::numeric_limits<int32_t>::max(),
          "too many pairs or work units for one launch");
  require(kernel_id == 0 || kernel_id == 1, "kernel must be 0 (linear) or 1 (rbf)");
  require(threshold > 0.0 && std::isfinite(threshold), "threshold must be a positive finite number");
  require(pairs == 0 || (workspace && flags && out), "cka_cuda: null workspace, flags or out");
  cka_from_grams_cuda(table.data(), pairs, units, unit_entries, gram_double, static_cast<CkaKernel>(kernel_id),
                      threshold, unbiased, as_ptr<double>(workspace), as_ptr<int32_t>(flags), as_ptr<double>(out),
                      stream);
}
#endif

}  // namespace

void register_cka(py::module_& m) {
  m.def("cka_cpu", &cka_cpu, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("kernel"),
        py::arg("threshold"), py::arg("unbiased"), py::arg("out"), py::arg("num_threads"),
        "CKA of each pair (table row p against row rows/2 + p; layout: csrc/cka.h); kernel 0 linear, 1 rbf. "
        "Each matrix's Gram is read from its Gram column, gathered from its nonzeros or computed here, as its "
        "gram_from column says.");
  m.def("cka_cpu_dense_gram", [] { return cka_loops(active_cpu_isa()).dense_gram_f32 != nullptr; },
        "Whether cka_cpu computes dense float32 Grams itself on the active CPU path (gram_from 2).");
  m.def("mostly_zero_cpu", &mostly_zero_cpu, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("max_density"), py::arg("mostly_zero"), py::arg("num_threads"),
        "mostly_zero[m] = 1 where a row sample of table row m's matrix has at most max_density nonzeros.");
#ifdef PYLTH_WITH_CUDA
  m.def("cka_cuda", &cka_cuda, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("units"),
        py::arg("unit_entries"), py::arg("gram_double"), py::arg("kernel"), py::arg("threshold"),
        py::arg("unbiased"), py::arg("workspace"), py::arg("flags"), py::arg("out"), py::arg("stream"),
        "CKA of each pair from Gram matrices on the device (layout: csrc/cka.h); asynchronous on stream.");
#endif
}

}  // namespace pylth
