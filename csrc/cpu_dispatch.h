// Run-time choice of the x86 vector instruction set the CPU kernels use. One binary carries every path
// (no -march=native in a wheel); the module runs the widest one that the CPU and its OS support, and
// PYLTH_CPU_ISA or pylth.ops.set_cpu_isa lowers it (for tests and benchmarks). Host C++ only.
//
// How a kernel adds its variants (csrc/adam*.cpp, select*.cpp, cka*.cpp follow this):
//  1. Write each variant in a namespace (or with a suffix) of its own, between PYLTH_BEGIN_AVX2 or
//     PYLTH_BEGIN_AVX512 and PYLTH_END_TARGET, in the kernel's file or in csrc/<kernel>_avx512.cpp.
//     Include every standard header BEFORE the BEGIN macro: a template they define (std::nth_element,
//     std::vector) must stay baseline code, or the linker may keep the AVX-512 copy for every caller.
//     Keep the variants inside `#ifdef PYLTH_ISA_VARIANTS` (other compilers and CPUs build the
//     baseline only). Choose tile shapes for the width: AVX-512 has 32 registers of 16 floats and
//     mask registers (tails and selects without blends, compress instead of permutation tables).
//  2. Pick the variant on every call from active_cpu_isa() (a switch that falls through to the next
//     lower path the kernel has). Never cache the choice in a static and never ask the CPU directly
//     (__builtin_cpu_supports): either would ignore PYLTH_CPU_ISA and set_cpu_isa.
//  3. Test every path: the tests' `cpu_isa_path` fixture (tests/conftest.py) runs a test once per
//     path the CPU has, and skips, saying why, the ones it lacks.
#pragma once

#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYLTH_X86_DISPATCH 1  // target attributes and __builtin_cpu_supports exist
#endif

// The AVX2 and AVX-512 variants are built by GCC on x86-64 (the pragmas below are GCC's).
#if defined(PYLTH_X86_DISPATCH) && !defined(__clang__)
#define PYLTH_ISA_VARIANTS 1
// AVX2 as every AVX2 CPU has it (Haswell, Zen): with FMA, BMI1/2, LZCNT and POPCNT.
#define PYLTH_BEGIN_AVX2 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,bmi,bmi2,lzcnt,popcnt\")")
// x86-64-v4's AVX-512 (F, CD, BW, DQ, VL: Skylake-X, Zen 4 and later), 512-bit vectors preferred
// where GCC vectorises a loop by itself.
#define PYLTH_BEGIN_AVX512 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,lzcnt,popcnt,prefer-vector-width=512\")")
#define PYLTH_END_TARGET _Pragma("GCC pop_options")
// GCC 12's AVX-512 intrinsics pass `__m512 __Y = __Y;` as the operand a masked builtin ignores, which
// -Wall reports as (maybe) uninitialized once inlined (GCC bug 105593, fixed in 13). The warning is
// issued at the header's lines, so it is silenced for them here, where the header is included first.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace pylth {

// Ordered: a path runs on every CPU that runs a wider one.
enum class CpuIsa : int { baseline = 0, avx2 = 1, avx512 = 2 };

// The widest path this CPU, its OS (the register state it saves) and this build support.
CpuIsa supported_cpu_isa();
// The path the kernels take now: supported_cpu_isa() unless set_cpu_isa lowered it.
CpuIsa active_cpu_isa();
// Throws std::invalid_argument (ValueError) for a path above supported_cpu_isa().
void set_active_cpu_isa(CpuIsa isa);

const char* cpu_isa_name(CpuIsa isa);
// The supported paths' names, widest first.
std::vector<std::string> supported_cpu_isa_names();

}  // namespace pylth
