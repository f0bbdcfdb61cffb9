"""Loading of the compiled extension ``pylth._C`` and the one-time fallback warning."""
from __future__ import annotations

import functools
import warnings

try:
    from pylth import _C as native
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # a source checkout that was never built, or a broken build
    native = None
    _IMPORT_ERROR = exc


def build_info() -> dict:
    """How ``pylth._C`` was built: ``cuda`` (bool), ``cuda_archs``, ``openmp``, ``omp_max_threads``.

    ``available`` is False (with ``error``) when the extension could not be imported.
    """
    if native is None:
        return {"available": False, "error": str(_IMPORT_ERROR), "cuda": False, "openmp": False}
    return {"available": True, **native.build_info()}


def require_native():
    """The extension module, or an ImportError that says how to build it."""
    if native is None:
        raise ImportError(
            "pylth._C is not available (" + str(_IMPORT_ERROR) + "); install pylth with "
            "`pip install .` from the repository instead of importing the source folder"
        )
    return native


@functools.lru_cache(maxsize=None)
def has_native_cuda() -> bool:
    """Whether the extension has the CUDA kernels (asked on every CUDA call: built once, then cached)."""
    return native is not None and bool(native.build_info()["cuda"])


@functools.lru_cache(maxsize=None)
def warn_fallback(kernel: str, reason: str) -> None:
    """Warn once per (kernel, reason) that the slow pure-torch reference is used instead."""
    warnings.warn(
        f"pylth: {kernel} runs on the pure-torch reference ({reason}); it is correct but slow",
        RuntimeWarning,
        stacklevel=3,
    )
