// Placeholder: filled in by the cka kernel work.
#include <pybind11/pybind11.h>
namespace pylth {
void register_cka(pybind11::module_& m) { (void)m; }
}  // namespace pylth
