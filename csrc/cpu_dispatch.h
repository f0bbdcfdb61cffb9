// Run-time CPU dispatch for hot loops: GCC/Clang compile an AVX2 clone beside the baseline x86-64
// version and pick one when the library loads, so a wheel needs no -march=native. Host C++ only.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYLTH_X86_CLONES __attribute__((target_clones("avx2", "default")))
#define PYLTH_X86_DISPATCH 1  // target attributes and __builtin_cpu_supports exist
#else
#define PYLTH_X86_CLONES
#endif
