"""Torch-facing wrappers of the native kernels: validate arguments, allocate outputs, dispatch.

Every function here checks its tensors in Python (dtype, device, contiguity, shapes, index ranges)
and raises ValueError/TypeError naming the argument before anything reaches C++. A pure-torch
reference of each kernel lives beside its wrapper: the test oracle, and the fallback (with a
one-time warning) where the extension lacks a path.
"""
from pylth.ops.native import build_info, cpu_isa, native, set_cpu_isa

__all__ = ["build_info", "cpu_isa", "native", "set_cpu_isa"]
