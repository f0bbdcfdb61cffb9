// The CPU selection's pass over a segment (select.cpp), one build per vector instruction set
// (csrc/cpu_dispatch.h): select.cpp builds the portable loop for the baseline and AVX2 paths,
// select_avx512.cpp writes AVX-512's.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu_dispatch.h"

namespace pylth {

// Entries are ranked by the 64-bit key (|w| bits << 33) | flat index (select.cpp explains why).
constexpr uint32_t kAbsBits = 0x7fffffffu;
constexpr uint32_t kInfKey = 0x7f800000u;  // keys at or above this are inf or NaN
constexpr int kIndexBits = 33;

struct Segment {
  const uint32_t* bits;  // the fp32 weights as raw bits
  const uint8_t* mask;   // nullptr: every entry is active
  uint8_t* out;
  int64_t size;
  int64_t base;  // flat index of the first entry within its group
};

struct PassCounts {
  int64_t active = 0;
  int64_t below = 0;
  bool nonfinite = false;
};

// One pass over a segment: out = active && key >= lo; adds to counts the active entries and those
// below lo, and whether any entry (active or not) is inf or NaN; appends the keys of the active
// entries in [lo, hi) to candidates.
using DecideFn = void (*)(const Segment& s, uint32_t lo, uint32_t hi, PassCounts& counts,
                          std::vector<uint64_t>& candidates);

#ifdef PYLTH_ISA_VARIANTS
void decide_segment_avx512(const Segment& s, uint32_t lo, uint32_t hi, PassCounts& counts,
                           std::vector<uint64_t>& candidates);
#endif

}  // namespace pylth
