"""pylth: lottery tickets in DDPM diffusion models.

Layers (each uses only the ones below it): command lines (``pylth.find_ticket``, ``pylth.train``,
``pylth.cka``) -> ``pylth.lottery`` -> ``pylth.ddpm`` -> ``pylth.optim`` / ``pylth.pruning`` /
``pylth.cka`` -> ``pylth.ops`` (tensor checks, dispatch) -> ``pylth._C`` (C++/OpenMP and CUDA kernels).
"""
from pylth.ops.native import build_info

__version__ = "0.1.0"
__all__ = ["build_info", "__version__"]
