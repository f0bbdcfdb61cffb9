// The element loop of masked Adam on the CPU, one build per vector instruction set (csrc/cpu_dispatch.h):
// adam.cpp builds the portable loop for the baseline and AVX2 paths, adam_avx512.cpp writes AVX-512's.
#pragma once
#include <cstdint>

#include "adam.h"
#include "cpu_dispatch.h"

namespace pylth {

// One Adam step over elements [0, n) of a tensor; mask nullptr: no mask. Every build rounds the same
// (the same operations in the same order, IEEE sqrt and division, no FMA), so every path gives the
// same bits.
using AdamRangeFn = void (*)(float* p, const float* g, float* m, float* v, const std::uint8_t* mask, std::int64_t n,
                             const AdamConsts& c);

#ifdef PYLTH_ISA_VARIANTS
void adam_range_avx512(float* p, const float* g, float* m, float* v, const std::uint8_t* mask, std::int64_t n,
                       const AdamConsts& c);
#endif

}  // namespace pylth
