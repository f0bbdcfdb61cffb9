// What the CPU supports (read once, from CPUID and XCR0) and the path the kernels take now.
#include "cpu_dispatch.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>

#include "common.h"

#ifdef PYLTH_ISA_VARIANTS
#include <cpuid.h>
#endif

namespace pylth {
namespace {

#ifdef PYLTH_ISA_VARIANTS
// The register state the OS saves on a context switch (XCR0). Without a bit set there, instructions on
// those registers fault even on a CPU that has them (a VM or an OS that keeps AVX-512 off).
std::uint64_t os_saved_state() {
  std::uint32_t low, high;
  __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
  return (std::uint64_t(high) << 32) | low;
}
#endif

CpuIsa detect_cpu_isa() {
#ifdef PYLTH_ISA_VARIANTS
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return CpuIsa::baseline;
  const bool fma = c & bit_FMA, popcnt = c & bit_POPCNT;
  if (!(c & bit_OSXSAVE) || !(c & bit_AVX)) return CpuIsa::baseline;  // xgetbv needs OSXSAVE
  const std::uint64_t state = os_saved_state();
  constexpr std::uint64_t kYmmState = 0x6;    // SSE and AVX registers
  constexpr std::uint64_t kZmmState = 0xe6;   // and the opmask, ZMM0-15 upper halves, ZMM16-31
  if ((state & kYmmState) != kYmmState || __get_cpuid_max(0, nullptr) < 7) return CpuIsa::baseline;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & bit_AVX2, bmi = (b & bit_BMI) && (b & bit_BMI2);
  const bool avx512 = (b & bit_AVX512F) && (b & bit_AVX512CD) && (b & bit_AVX512BW) && (b & bit_AVX512DQ) &&
                      (b & bit_AVX512VL);
  const bool lzcnt = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & bit_LZCNT);
  if (!(avx2 && fma && bmi && lzcnt && popcnt)) return CpuIsa::baseline;
  return avx512 && (state & kZmmState) == kZmmState ? CpuIsa::avx512 : CpuIsa::avx2;
#else
  return CpuIsa::baseline;
#endif
}

const CpuIsa kSupported = detect_cpu_isa();
std::atomic<int> active{static_cast<int>(kSupported)};

CpuIsa parse_cpu_isa(const std::string& name) {
  for (CpuIsa isa : {CpuIsa::avx512, CpuIsa::avx2, CpuIsa::baseline})
    if (name == cpu_isa_name(isa)) return isa;
  throw std::invalid_argument("unknown CPU path '" + name + "': choose avx512, avx2 or baseline");
}

std::string supported_list() {
  std::string out;
  for (const std::string& name : supported_cpu_isa_names()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

}  // namespace

CpuIsa supported_cpu_isa() { return kSupported; }

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(active.load(std::memory_order_relaxed)); }

void set_active_cpu_isa(CpuIsa isa) {
  require(isa <= kSupported, std::string("this CPU (or this build) has no ") + cpu_isa_name(isa) +
                                 " path; it supports: " + supported_list());
  active.store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return "avx512";
    case CpuIsa::avx2: return "avx2";
    default: return "baseline";
  }
}

std::vector<std::string> supported_cpu_isa_names() {
  std::vector<std::string> names;
  for (int isa = static_cast<int>(kSupported); isa >= 0; --isa) names.push_back(cpu_isa_name(static_cast<CpuIsa>(isa)));
  return names;
}

void register_cpu_dispatch(pybind11::module_& m) {
  m.def("cpu_isa", [] { return std::string(cpu_isa_name(active_cpu_isa())); },
        "The vector instruction set the CPU kernels use now: avx512, avx2 or baseline.");
  m.def("cpu_isa_supported", &supported_cpu_isa_names,
        "The paths this CPU and build support, widest first.");
  m.def("set_cpu_isa", [](const std::string& name) { set_active_cpu_isa(parse_cpu_isa(name)); }, pybind11::arg("name"),
        "Make the CPU kernels use `name` (one of cpu_isa_supported()) from the next call on.");
}

}  // namespace pylth
