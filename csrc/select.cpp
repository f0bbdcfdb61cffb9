// Placeholder: filled in by the select kernel work.
#include <pybind11/pybind11.h>
namespace pylth {
void register_select(pybind11::module_& m) { (void)m; }
}  // namespace pylth
