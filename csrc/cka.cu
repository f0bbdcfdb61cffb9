// CKA on the GPU, batched: one thread block per pair. Squared distances are recomputed from the Gram
// matrices where needed (diagonal + strict upper triangle, never written), the median comes from a
// radix select on the bit patterns of the non-negative doubles (their unsigned order is their
// numeric order), and the kernel sums use one warp per row so that row sums need no atomics.
#include <cstdint>

#include "cka.h"
#include "cuda_check.h"

namespace pylth {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

struct Side {
  const double* g;
  int64_t n;
  __device__ double diag(int64_t i) const { return g[i * n + i]; }
  // Gram entry (i, j) read from the upper triangle (the CPU path writes only that half).
  __device__ double gram(int64_t i, int64_t j) const { return i < j ? g[i * n + j] : g[j * n + i]; }
  __device__ double sq_distance(int64_t i, int64_t j) const {
    if (i == j) return 0.0;
    return fmax(diag(i) + diag(j) - 2.0 * gram(i, j), 0.0);
  }
};

__device__ unsigned long long bits(double v) { return static_cast<unsigned long long>(__double_as_longlong(v)); }

// The q-th smallest strict-upper squared distance (q < n(n-1)/2), 8 bits per pass.
__device__ double select_upper(const Side& side, int64_t q) {
  __shared__ unsigned int histogram[256];
  __shared__ unsigned long long prefix_shared;
  __shared__ long long rank_shared;
  if (threadIdx.x == 0) {
    prefix_shared = 0;
    rank_shared = q;
  }
  unsigned long long mask = 0;
  const int64_t count = side.n * side.n;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) histogram[b] = 0;
    __syncthreads();
    const unsigned long long prefix = prefix_shared;
    for (int64_t t = threadIdx.x; t < count; t += blockDim.x) {
      const int64_t i = t / side.n, j = t % side.n;
      if (j <= i) continue;
      const unsigned long long v = bits(side.sq_distance(i, j));
      if ((v & mask) == prefix) atomicAdd(&histogram[(v >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long rank = rank_shared;
      int bin = 0;
      while (rank >= histogram[bin]) rank -= histogram[bin++];
      rank_shared = rank;
      prefix_shared = prefix | (static_cast<unsigned long long>(bin) << shift);
    }
    mask |= 255ull << shift;
    __syncthreads();
  }
  const double value = __longlong_as_double(static_cast<long long>(prefix_shared));
  __syncthreads();  // prefix_shared is reused by the next call
  return value;
}

// Block-wide sums of `count` doubles per thread (count <= 8); the totals land in every thread's v.
template <int kCount>
__device__ void block_sum(double (&v)[kCount]) {
  __shared__ double partial[kWarps][8];
  for (int c = 0; c < kCount; ++c)
    for (int offset = 16; offset > 0; offset /= 2) v[c] += __shfl_down_sync(0xffffffffu, v[c], offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0)
    for (int c = 0; c < kCount; ++c) partial[warp][c] = v[c];
  __syncthreads();
  for (int c = 0; c < kCount; ++c) {
    double total = 0;
    for (int w = 0; w < kWarps; ++w) total += partial[w][c];
    v[c] = total;
  }
  __syncthreads();
}

// Strict-upper values equal to 0 (identical rows).
__device__ int64_t count_zero_upper(const Side& side) {
  double zeros[1] = {0};
  const int64_t count = side.n * side.n;
  for (int64_t t = threadIdx.x; t < count; t += blockDim.x) {
    const int64_t i = t / side.n, j = t % side.n;
    if (j > i && side.sq_distance(i, j) == 0.0) zeros[0] += 1;
  }
  block_sum(zeros);
  return static_cast<int64_t>(zeros[0]);
}

__device__ double middle_pair(const Side& side, int64_t lo, int64_t hi) {
  const double upper = hi < 0 ? 0.0 : select_upper(side, hi);
  if (lo == hi) return upper;
  return 0.5 * ((lo < 0 ? 0.0 : select_upper(side, lo)) + upper);
}

// Same rule as the CPU path: median of all n^2 squared distances, else of the positive ones, else NaN.
__device__ double median_squared_distance(const Side& side) {
  const MedianIndices mid = median_indices(side.n);
  const double median = middle_pair(side, mid.lo, mid.hi);
  if (median > 0.0) return median;
  const int64_t upper = side.n * (side.n - 1) / 2;
  const int64_t zeros = count_zero_upper(side);
  const int64_t positives = upper - zeros;
  if (positives == 0) return nan("");
  return middle_pair(side, zeros + (positives - 1) / 2, zeros + positives / 2);
}

template <CkaKernel kKernel>
__device__ double kernel_value(const Side& side, int64_t i, int64_t j, double scale, bool unbiased) {
  if (i == j) {
    if (unbiased) return 0.0;  // the unbiased estimator works on kernels with zeroed diagonals
    return kKernel == CkaKernel::rbf ? 1.0 : side.diag(i);
  }
  return kKernel == CkaKernel::rbf ? exp(side.sq_distance(i, j) * scale) : side.gram(i, j);
}

template <CkaKernel kKernel>
__global__ void __launch_bounds__(kThreads, 1) cka_pairs_kernel(const double* gram, const int64_t* offsets, const int64_t* sizes, int64_t pairs,
                                 double threshold, bool unbiased, double* out) {
  const int64_t p = blockIdx.x;
  const int64_t n = sizes[p];
  const Side x{gram + offsets[p], n}, y{gram + offsets[pairs + p], n};
  double scale_x = 0.0, scale_y = 0.0;
  if (kKernel == CkaKernel::rbf) {
    const double median_x = median_squared_distance(x);
    const double median_y = median_squared_distance(y);
    if (isnan(median_x) || isnan(median_y)) {
      if (threadIdx.x == 0) out[p] = nan("");
      return;  // uniform across the block
    }
    scale_x = -1.0 / (2.0 * threshold * threshold * median_x);
    scale_y = -1.0 / (2.0 * threshold * threshold * median_y);
  }
  // sums: <K,L>, <K,K>, <L,L>, 1'K1, 1'L1, r.s, r.r, s.s
  double sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t i = warp; i < n; i += kWarps) {
    double row[5] = {0, 0, 0, 0, 0};  // kl, kk, ll, r_i, s_i
    for (int64_t j = lane; j < n; j += 32) {
      const double k = kernel_value<kKernel>(x, i, j, scale_x, unbiased);
      const double l = kernel_value<kKernel>(y, i, j, scale_y, unbiased);
      row[0] += k * l;
      row[1] += k * k;
      row[2] += l * l;
      row[3] += k;
      row[4] += l;
    }
    for (int c = 0; c < 5; ++c)
      for (int offset = 16; offset > 0; offset /= 2) row[c] += __shfl_xor_sync(0xffffffffu, row[c], offset);
    if (lane == 0) {
      for (int c = 0; c < 5; ++c) sums[c] += row[c];
      sums[5] += row[3] * row[4];
      sums[6] += row[3] * row[3];
      sums[7] += row[4] * row[4];
    }
  }
  block_sum(sums);
  if (threadIdx.x == 0) {
    HsicSums t;
    t.kl = sums[0];
    t.kk = sums[1];
    t.ll = sums[2];
    t.r = sums[3];
    t.s = sums[4];
    t.rs = sums[5];
    t.rr = sums[6];
    t.ss = sums[7];
    out[p] = cka_from_sums(t, n, unbiased);
  }
}

}  // namespace

void cka_from_grams_cuda(double* gram, const int64_t* offsets, const int64_t* sizes, int64_t pairs,
                         CkaKernel kernel, double threshold, bool unbiased, double* out, std::uintptr_t stream) {
  if (pairs == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned int>(pairs));
  if (kernel == CkaKernel::rbf)
    cka_pairs_kernel<CkaKernel::rbf><<<grid, kThreads, 0, s>>>(gram, offsets, sizes, pairs, threshold, unbiased, out);
  else
    cka_pairs_kernel<CkaKernel::linear><<<grid, kThreads, 0, s>>>(gram, offsets, sizes, pairs, threshold, unbiased,
                                                                  out);
  PYLTH_CUDA_CHECK_LAUNCH();
}

}  // namespace pylth
