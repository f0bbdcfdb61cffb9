// _pylth: pylth's native module, one pybind11 module; each kernel family registers its functions from
// its own file. A top-level module, not pylth._C: see CMakeLists.txt.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "cpu_dispatch.h"

#ifdef PYLTH_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

namespace pylth {
void register_cpu_dispatch(py::module_& m);
void register_adam(py::module_& m);
void register_select(py::module_& m);
void register_cka(py::module_& m);
void register_sparse_conv(py::module_& m);
void register_sparse_linear(py::module_& m);
void register_group_norm_silu(py::module_& m);
void register_group_norm_silu_backward(py::module_& m);
void register_dropout(py::module_& m);
}  // namespace pylth

static py::dict build_info() {
  py::dict info;
  info["version"] = std::string(PYLTH_VERSION);
  info["source_hash"] = std::string(PYLTH_SOURCE_HASH);
#ifdef PYLTH_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(PYLTH_CUDA_ARCHS);
  info["cuda_runtime_version"] = CUDART_VERSION;
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
  info["cuda_runtime_version"] = 0;
#endif
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
  info["omp_max_threads"] = omp_get_max_threads();
  // The CPU kernels' vector instruction set now, and every one this CPU and build could run.
  info["cpu_isa"] = std::string(pylth::cpu_isa_name(pylth::active_cpu_isa()));
  info["cpu_isa_supported"] = pylth::supported_cpu_isa_names();
  return info;
}

PYBIND11_MODULE(_pylth, m) {
  m.doc() = "pylth native kernels (C++/OpenMP, CUDA when built with it); called through pylth.ops";
  m.def("build_info", &build_info, "How this extension was built: pylth version, source hash, CUDA, its architectures, OpenMP, the CPU path.");
  pylth::register_cpu_dispatch(m);
  pylth::register_adam(m);
  pylth::register_select(m);
  pylth::register_cka(m);
  pylth::register_sparse_conv(m);
  pylth::register_sparse_linear(m);
  pylth::register_group_norm_silu(m);
  pylth::register_group_norm_silu_backward(m);
  pylth::register_dropout(m);
}
