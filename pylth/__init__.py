"""pylth: lottery tickets in DDPM diffusion models.

Layers (each uses only the ones below it; ARCHITECTURE.md says what may import what and where a new
model kind, sampler, strategy or kernel goes): command lines (``pylth.find_ticket``, ``pylth.train``,
``pylth.cka``) -> ``pylth.lottery`` -> ``pylth.ddpm`` -> ``pylth.optim`` / ``pylth.pruning`` /
``pylth.cka`` -> ``pylth.ops`` (tensor checks, dispatch) -> ``_pylth`` (C++/OpenMP and CUDA kernels).
"""
__version__ = "0.1.0"  # the one version: pyproject.toml reads it, and the native module must match it

from pylth.ops.native import build_info  # noqa: E402

__all__ = ["build_info", "__version__"]
