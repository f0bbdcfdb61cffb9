// Placeholder: filled in by the adam kernel work.
#include <pybind11/pybind11.h>
namespace pylth {
void register_adam(pybind11::module_& m) { (void)m; }
}  // namespace pylth
