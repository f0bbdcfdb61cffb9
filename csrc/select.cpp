// Exact segmented magnitude selection on the CPU (OpenMP), without sorting.
//
// For each group of segments (one segment per group, or all segments in global mode) prune the
// k = floor(r * n_active + 0.5) active entries with the smallest |w|, ties broken by lower flat
// index. Entries are ranked by the 64-bit key (|w| bits << 33) | flat index: the float bits of a
// non-negative float order like the float, -0.0 and 0.0 share the bits 0, and the index makes every
// key distinct, so "the k smallest keys" is exact and unique.
//
// Per group: a small random sample brackets the threshold [lo, hi); one vectorised pass writes
// every mask bit (below lo: pruned, from lo on: kept) and collects the few active entries inside
// the bracket; nth_element among those picks the exact ones to prune. If the bracket missed, a
// two-pass radix select on the key bits finds the exact threshold and the pass is repeated. The
// pass comes from the active CPU path (select_cpu.h); every path selects the same entries.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#include <cstring>

#include "common.h"
#include "omp_error.h"
#include "select.h"
#include "select_cpu.h"

namespace pylth {
namespace {

constexpr uint32_t kKeyEnd = 0x80000000u;  // one past every key
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
constexpr int64_t kBlock = 256;          // pass granularity: candidates are rare, blocks skip them
constexpr int64_t kExactBelow = 4096;    // groups this small take every active entry as candidate

// The product is stored before the add so no FMA contraction changes k: Python and CUDA round the
// multiply and the add separately too.
int64_t count_to_prune(double ratio, int64_t active) {
  volatile double product = ratio * static_cast<double>(active);
  return static_cast<int64_t>(std::floor(product + 0.5));
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The portable pass (DecideFn in select_cpu.h). The block loop has no branches so it vectorises.
template <bool kHasMask>
inline __attribute__((always_inline)) void decide_segment(const Segment& s, uint32_t lo, uint32_t hi,
                                                          PassCounts& counts, std::vector<uint64_t>& candidates) {
  const uint32_t width = hi - lo;
  uint32_t bad = 0;
  alignas(8) uint8_t inside[kBlock];
  for (int64_t start = 0; start < s.size; start += kBlock) {
    const int64_t len = std::min(kBlock, s.size - start);
    const uint32_t* __restrict bits = s.bits + start;
    const uint8_t* __restrict mask = kHasMask ? s.mask + start : nullptr;
    uint8_t* __restrict out = s.out + start;
    uint32_t active = 0, below = 0, any_inside = 0;
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t key = bits[j] & kAbsBits;
      const uint32_t a = kHasMask ? uint32_t(mask[j] != 0) : 1u;
      const uint32_t ge = uint32_t(key >= lo);
      const uint32_t in = a & uint32_t(key - lo < width);
      out[j] = static_cast<uint8_t>(a & ge);
      inside[j] = static_cast<uint8_t>(in);
      active += a;
      below += a & (ge ^ 1u);
      any_inside |= in;
      bad |= uint32_t(key >= kInfKey);
    }
    counts.active += active;
    counts.below += below;
    if (!any_inside) continue;
    // Candidates are rare: find their flag bytes eight at a time.
    for (int64_t j = len; j < kBlock; ++j) inside[j] = 0;
    for (int64_t w = 0; w < kBlock; w += 8) {
      uint64_t word;
      std::memcpy(&word, inside + w, 8);
      while (word) {
        const int64_t j = w + (__builtin_ctzll(word) >> 3);
        word &= word - 1;
        const uint32_t key = bits[j] & kAbsBits;
        candidates.push_back((uint64_t(key) << kIndexBits) | uint64_t(s.base + start + j));
      }
    }
  }
  counts.nonfinite = counts.nonfinite || bad;
}

// Always inlined, so that each path's function below compiles it for its own instruction set.
inline __attribute__((always_inline)) void decide_portable(const Segment& s, uint32_t lo, uint32_t hi,
                                                           PassCounts& counts, std::vector<uint64_t>& candidates) {
  if (s.mask)
    decide_segment<true>(s, lo, hi, counts, candidates);
  else
    decide_segment<false>(s, lo, hi, counts, candidates);
}

void decide_baseline(const Segment& s, uint32_t lo, uint32_t hi, PassCounts& counts,
                     std::vector<uint64_t>& candidates) {
  decide_portable(s, lo, hi, counts, candidates);
}

#ifdef PYLTH_ISA_VARIANTS
// The same loop as GCC vectorises it for AVX2.
PYLTH_BEGIN_AVX2
void decide_avx2(const Segment& s, uint32_t lo, uint32_t hi, PassCounts& counts, std::vector<uint64_t>& candidates) {
  decide_portable(s, lo, hi, counts, candidates);
}
PYLTH_END_TARGET
#endif

DecideFn decide_for(CpuIsa isa) {
  switch (isa) {
#ifdef PYLTH_ISA_VARIANTS
    case CpuIsa::avx512: return decide_segment_avx512;
    case CpuIsa::avx2: return decide_avx2;
#endif
    default: return decide_baseline;
  }
}

// Histogram of one digit of the active keys whose higher bits equal `prefix`.
template <bool kHasMask>
void histogram_segment(const Segment& s, int shift, uint32_t digit_mask, int prefix_shift,
                       uint32_t prefix, int64_t* hist) {
  for (int64_t j = 0; j < s.size; ++j) {
    const uint32_t key = s.bits[j] & kAbsBits;
    const bool a = kHasMask ? s.mask[j] != 0 : true;
    if (a && (prefix_shift >= 32 || (key >> prefix_shift) == prefix))
      ++hist[(key >> shift) & digit_mask];
  }
}

// `draws` positions uniform over a segment; appends the keys of the active ones. An inactive draw is
// dropped without a branch, so nothing waits for a load to decide what to do next: the loads of
// successive draws (cache misses, most of them) overlap.
template <bool kHasMask>
void draw_keys(const Segment& s, int64_t draws, uint64_t& state, std::vector<uint32_t>& sample) {
  size_t count = sample.size();
  sample.resize(count + draws);
  uint32_t* out = sample.data();
  for (int64_t k = 0; k < draws; ++k) {
    const int64_t j = int64_t((unsigned __int128)splitmix64(state) * uint64_t(s.size) >> 64);
    out[count] = s.bits[j] & kAbsBits;
    count += kHasMask ? s.mask[j] != 0 : 1;
  }
  sample.resize(count);
}

class Group {
 public:
  // threads: OpenMP threads across the group's segments (1: run serially); decide: the pass of the
  // active CPU path.
  Group(std::vector<Segment> segments, int threads, DecideFn decide)
      : segs_(std::move(segments)), threads_(threads), decide_segment_(decide) {
    total_ = 0;
    for (const Segment& s : segs_) total_ += s.size;
  }

  // Returns false when a weight is inf or NaN. Without the sampled bracket the radix select
  // decides alone (tests use this to exercise it).
  bool run(double ratio, uint64_t seed, bool use_bracket) {
    uint32_t lo = 0, hi = 0;
    if (ratio >= 1.0) {
      lo = hi = kKeyEnd;  // everything active is pruned
    } else if (ratio > 0.0 && use_bracket) {
      bracket(ratio, seed, lo, hi);
    }
    PassCounts counts;
    std::vector<uint64_t> candidates;
    decide(lo, hi, counts, candidates);
    if (counts.nonfinite) return false;
    const int64_t k = count_to_prune(ratio, counts.active);
    const int64_t have = static_cast<int64_t>(candidates.size());
    if (k < counts.below || k > counts.below + have) {
      const uint32_t threshold = kth_key(k, counts.active);
      counts = PassCounts();
      candidates.clear();
      decide(threshold, threshold + 1, counts, candidates);
    }
    prune_smallest(candidates, k - counts.below);
    return true;
  }

 private:
  std::vector<Segment> segs_;
  int threads_;
  DecideFn decide_segment_;
  int64_t total_;

  const Segment& segment_of(int64_t flat) const {
    if (segs_.size() == 1) return segs_[0];
    auto it = std::upper_bound(segs_.begin(), segs_.end(), flat,
                               [](int64_t f, const Segment& s) { return f < s.base; });
    return *(it - 1);
  }

  // Sample active keys, take order statistics around rank r*m with a margin of ~4 standard
  // deviations; a bracket that misses only costs the exact fallback. The draws are stratified: each
  // segment gets its share by size (no search for the segment of a draw), in rounds until enough of
  // them hit active entries (masks leave a fraction active). n^(2/3) / 2 samples: a draw is a cache
  // miss, ~30 times what the pass spends on an entry, so fewer draws and a wider bracket (more
  // candidates) cost less than the comparison-count optimum of Floyd-Rivest (2 n^(2/3) took half
  // the time of the per-layer mode on the DDPM shapes).
  void bracket(double ratio, uint64_t seed, uint32_t& lo, uint32_t& hi) const {
    lo = 0;
    hi = kKeyEnd;
    if (total_ < kExactBelow) return;
    const double n = static_cast<double>(total_);
    const int64_t target = std::min<int64_t>(65536, std::max<int64_t>(512, int64_t(0.5 * std::cbrt(n * n))));
    std::vector<uint32_t> sample;
    sample.reserve(target);
    uint64_t state = seed;
    for (int round = 0; round < 16 && int64_t(sample.size()) < target; ++round)
      for (const Segment& s : segs_) {
        const int64_t draws = (target * s.size + total_ / 2) / total_;
        if (draws == 0) continue;
        if (s.mask)
          draw_keys<true>(s, draws, state, sample);
        else
          draw_keys<false>(s, draws, state, sample);
      }
    const int64_t m = static_cast<int64_t>(sample.size());
    if (m < 64) return;
    const double centre = ratio * m;
    const double margin = 4.0 * std::sqrt(m * ratio * (1.0 - ratio)) + 4.0;
    const int64_t lo_rank = static_cast<int64_t>(std::floor(centre - margin));
    const int64_t hi_rank = static_cast<int64_t>(std::ceil(centre + margin));
    auto begin = sample.begin();
    if (lo_rank > 0) {
      std::nth_element(begin, begin + lo_rank, sample.end());
      lo = sample[lo_rank];
      begin += lo_rank;
    }
    if (hi_rank < m) {
      std::nth_element(begin, sample.begin() + hi_rank, sample.end());
      hi = std::max(sample[hi_rank], lo + 1);
    }
  }

  void decide(uint32_t lo, uint32_t hi, PassCounts& total, std::vector<uint64_t>& candidates) {
    const int64_t count = static_cast<int64_t>(segs_.size());
    std::vector<PassCounts> counts(count);
    std::vector<std::vector<uint64_t>> found(count);
    FirstError error;  // collecting candidates allocates
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_) if (threads_ > 1 && count > 1)
    for (int64_t i = 0; i < count; ++i) {
      error.run([&] {
        decide_segment_(segs_[i], lo, hi, counts[i], found[i]);
      });
    }
    error.rethrow();
    size_t have = 0;
    for (int64_t i = 0; i < count; ++i) {
      total.active += counts[i].active;
      total.below += counts[i].below;
      total.nonfinite = total.nonfinite || counts[i].nonfinite;
      have += found[i].size();
    }
    if (count == 1) {
      candidates.swap(found[0]);
      return;
    }
    candidates.reserve(have);
    for (auto& f : found) candidates.insert(candidates.end(), f.begin(), f.end());
  }

  std::vector<int64_t> histogram(int shift, uint32_t digit_mask, int prefix_shift, uint32_t prefix) {
    const int64_t count = static_cast<int64_t>(segs_.size());
    const size_t bins = size_t(digit_mask) + 1;
    // One histogram per thread, allocated before the region: nothing in it may throw.
    const int threads = count > 1 ? threads_ : 1;
    std::vector<int64_t> local(size_t(threads) * bins, 0);
#pragma omp parallel num_threads(threads)
    {
      int64_t* mine = local.data() + size_t(omp_get_thread_num()) * bins;
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < count; ++i) {
        if (segs_[i].mask)
          histogram_segment<true>(segs_[i], shift, digit_mask, prefix_shift, prefix, mine);
        else
          histogram_segment<false>(segs_[i], shift, digit_mask, prefix_shift, prefix, mine);
      }
    }
    std::vector<int64_t> hist(bins, 0);
    for (int t = 0; t < threads; ++t)
      for (size_t b = 0; b < bins; ++b) hist[b] += local[size_t(t) * bins + b];
    return hist;
  }

  // The key of the k-th smallest active entry (1-based) by a radix select on 15 + 16 bits;
  // k == 0 gives key 0 so that nothing is below it.
  uint32_t kth_key(int64_t k, int64_t active) {
    if (k <= 0) return 0;
    k = std::min(k, active);
    const std::vector<int64_t> high = histogram(16, 0x7fffu, 32, 0);
    uint32_t digit = 0;
    for (; digit < high.size() && k > high[digit]; ++digit) k -= high[digit];
    const std::vector<int64_t> low = histogram(0, 0xffffu, 16, digit);
    uint32_t low_digit = 0;
    for (; low_digit < low.size() && k > low[low_digit]; ++low_digit) k -= low[low_digit];
    return (digit << 16) | low_digit;
  }

  void prune_smallest(std::vector<uint64_t>& candidates, int64_t need) {
    if (need <= 0) return;
    if (need < static_cast<int64_t>(candidates.size()))
      std::nth_element(candidates.begin(), candidates.begin() + need, candidates.end());
    for (int64_t i = 0; i < need; ++i) {
      const int64_t flat = static_cast<int64_t>(candidates[i] & kIndexMask);
      const Segment& s = segment_of(flat);
      s.out[flat - s.base] = 0;
    }
  }
};

std::vector<Segment> make_segments(const ArgTable& table) {
  std::vector<Segment> segs(table.rows());
  for (int64_t i = 0; i < table.rows(); ++i) {
    const int64_t size = table.at(i, kSelectSize);
    require(size >= 0 && size <= int64_t(kIndexMask), "select_cpu: size out of range in row " + std::to_string(i));
    require(size == 0 || (table.at(i, kSelectWeight) && table.at(i, kSelectOut)),
            "select_cpu: null weight or output address in row " + std::to_string(i));
    segs[i] = Segment{table.ptr<const uint32_t>(i, kSelectWeight), table.ptr<const uint8_t>(i, kSelectMask),
                      table.ptr<uint8_t>(i, kSelectOut), size, 0};
  }
  return segs;
}

void check_ratio(double r) { require(r >= 0.0 && r <= 1.0, "select_cpu: ratios must lie in [0, 1]"); }

// Per-segment mode; returns the index of the first segment with a non-finite weight, or -1.
int64_t select_segments(const std::vector<Segment>& segs, const double* ratios, bool use_bracket, int num_threads,
                        DecideFn decide) {
  const int64_t count = static_cast<int64_t>(segs.size());
  for (int64_t i = 0; i < count; ++i) check_ratio(ratios[i]);
  // Largest first so the dynamic schedule balances the threads.
  std::vector<int64_t> order(count);
  for (int64_t i = 0; i < count; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return segs[a].size > segs[b].size; });
  std::vector<uint8_t> bad(count, 0);
  {
    pybind11::gil_scoped_release release;
    FirstError error;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t n = 0; n < count; ++n) {
      const int64_t i = order[n];
      error.run([&] {
        Group group({segs[i]}, 1, decide);
        bad[i] = !group.run(ratios[i], 0x5eed0000ull + uint64_t(i), use_bracket);
      });
    }
    error.rethrow();
  }
  for (int64_t i = 0; i < count; ++i)
    if (bad[i]) return i;
  return -1;
}

// Global mode: all segments ranked as one concatenated tensor.
int64_t select_global(std::vector<Segment> segs, double ratio, bool use_bracket, int num_threads, DecideFn decide) {
  check_ratio(ratio);
  int64_t base = 0;
  for (Segment& s : segs) {
    s.base = base;
    base += s.size;
  }
  require(base <= int64_t(kIndexMask), "select_cpu: too many entries in total");
  bool ok;
  {
    pybind11::gil_scoped_release release;
    Group group(segs, num_threads, decide);
    ok = group.run(ratio, 0x5eedull, use_bracket);
  }
  if (ok) return -1;
  // Name the first offending segment (a rare, slow path).
  for (size_t i = 0; i < segs.size(); ++i)
    for (int64_t j = 0; j < segs[i].size; ++j)
      if ((segs[i].bits[j] & kAbsBits) >= kInfKey) return static_cast<int64_t>(i);
  return 0;
}

int64_t select_cpu(std::uintptr_t table_address, int64_t rows, int64_t width, std::uintptr_t ratios_address,
                   bool global_mode, bool use_bracket, int num_threads) {
  const ArgTable table(table_address, rows, width, kSelectColumns, "select_cpu");
  require(num_threads >= 1, "select_cpu: num_threads must be >= 1");
  require(rows == 0 || ratios_address != 0, "select_cpu: null ratios");
  std::vector<Segment> segs = make_segments(table);
  const double* ratios = as_ptr<const double>(ratios_address);
  const DecideFn decide = decide_for(active_cpu_isa());
  if (global_mode) return rows == 0 ? -1 : select_global(std::move(segs), ratios[0], use_bracket, num_threads, decide);
  return select_segments(segs, ratios, use_bracket, num_threads, decide);
}

#ifdef PYLTH_WITH_CUDA
void select_cuda_binding(std::uintptr_t table_address, int64_t rows, int64_t width, std::uintptr_t ratios,
                         std::uintptr_t workspace, std::uintptr_t bad, int64_t chunks, bool global_mode,
                         std::uintptr_t stream) {
  require(ratios && workspace && bad, "select_cuda: null ratios, workspace or bad");
  const ArgTable table(table_address, rows, width, kSelectColumns, "select_cuda");
  select_cuda(table, ratios, workspace, bad, chunks, global_mode, stream);
}
#endif

}  // namespace

void register_select(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("select_cpu", &select_cpu, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("ratios"),
        py::arg("global_mode"), py::arg("use_bracket"), py::arg("num_threads"),
        "Per-segment (or global) magnitude selection over a table of segments (layout: csrc/select.h); "
        "returns the first segment with a non-finite weight or -1.");
#ifdef PYLTH_WITH_CUDA
  m.attr("SELECT_CUDA_CHUNK") = kSelectCudaChunk;
  m.def("select_cuda_workspace_words", &select_cuda_workspace_words, py::arg("segments"), py::arg("groups"),
        py::arg("chunks"), "int64 words of zeroed workspace select_cuda needs.");
  m.def("select_cuda", &select_cuda_binding, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("ratios"),
        py::arg("workspace"), py::arg("bad"), py::arg("chunks"), py::arg("global_mode"), py::arg("stream"),
        "Segmented (or global) magnitude selection on the GPU; see csrc/select.h for the layout.");
#endif
}

}  // namespace pylth
