"""Loading of pylth's native module ``_pylth`` (built from csrc/), its checks, and the fallback warning.

``_pylth`` is a top-level module installed beside the ``pylth`` package rather than ``pylth._C``
inside it: ``python -m pylth.<command>`` run from the repository root imports the source folder
``pylth/``, which holds no compiled file, and a top-level module is found from there as well as from
the installed package. The price is a check that the two belong together: the module records the
pylth version and a hash of the sources it was built from (CMakeLists.txt computes it), and a
mismatch makes the module unavailable with a one-line message that says what to run.

The CPU kernels run the widest vector instruction set (``CPU_ISAS``) that the CPU supports, chosen by
the module when it loads. ``PYLTH_CPU_ISA`` (a process-wide setting, like OMP_NUM_THREADS: asked once,
when pylth is imported, through pylth.foundations.environment) or ``set_cpu_isa`` forces a lower one,
for tests and benchmarks; a path the CPU lacks is an error.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import warnings

import pylth
from pylth.foundations.environment import CPU_ISA_ENV, requested_cpu_isa

NATIVE_MODULE = "_pylth"
# The files whose hash the build records (CMakeLists.txt globs the same patterns, non-recursively).
HASHED_PATTERNS = ("*.h", "*.cpp", "*.cu")
# The CPU kernels' paths, widest first (csrc/cpu_dispatch.h); CPU_ISA_ENV forces one.
CPU_ISAS = ("avx512", "avx2", "baseline")


class NativeUnavailable(ImportError):
    """pylth's native module is missing, or was built for another pylth version or other sources."""


def source_tree() -> str | None:
    """The repository root when ``pylth`` is imported from a source checkout (csrc/ beside pylth/), else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pylth.__file__)))
    if os.path.isdir(os.path.join(root, "csrc")) and os.path.isfile(os.path.join(root, "CMakeLists.txt")):
        return root
    return None


def source_hash(root: str) -> str:
    """The hash CMakeLists.txt records: sha256 over "path sha256\\n" lines of csrc/*.{h,cpp,cu} and
    CMakeLists.txt, sorted by path."""
    csrc = os.path.join(root, "csrc")
    names = [f"csrc/{n}" for n in os.listdir(csrc)
             if any(fnmatch.fnmatchcase(n, p) for p in HASHED_PATTERNS) and os.path.isfile(os.path.join(csrc, n))]
    lines = []
    for rel in sorted(names + ["CMakeLists.txt"]):
        with open(os.path.join(root, rel), "rb") as f:
            lines.append(f"{rel} {hashlib.sha256(f.read()).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _load():
    """(module, None) when the native module is usable here, else (None, the one-line reason)."""
    root = source_tree()
    where = f" in {root}" if root else " from the pylth repository"
    try:
        import _pylth as module
    except ImportError as exc:
        return None, f"pylth's native module {NATIVE_MODULE} is not installed ({exc}); run `pip install .`{where}"
    info = module.build_info()
    if info.get("version") != pylth.__version__:
        return None, (f"pylth's native module {module.__file__} was built for pylth {info.get('version')}, but "
                      f"{os.path.dirname(pylth.__file__)} is pylth {pylth.__version__}; run `pip install .`{where}")
    if root is not None and source_hash(root) != info.get("source_hash"):
        return None, (f"pylth's native module {module.__file__} was built from other sources than {root}/csrc "
                      f"(the kernels changed since the last `pip install .`); run `pip install .` in {root}")
    requested = requested_cpu_isa()
    if requested:
        problem = _cpu_isa_problem(requested, module.cpu_isa_supported(), f"{CPU_ISA_ENV}={requested}")
        if problem:
            return None, problem
        module.set_cpu_isa(requested)
    return module, None


def _cpu_isa_problem(name: str, supported: list, what: str) -> str | None:
    """Why ``name`` cannot be the CPU path (``what`` names where it came from), or None."""
    if name not in CPU_ISAS:
        return f"{what}: unknown CPU path; choose one of {', '.join(CPU_ISAS)} (this CPU supports {', '.join(supported)})"
    if name not in supported:
        return f"{what}: this CPU has no {name} path; it supports {', '.join(supported)}"
    return None


native, _UNAVAILABLE = _load()


def build_info() -> dict:
    """How the native module was built: ``version``, ``source_hash``, ``cuda`` (bool), ``cuda_archs``,
    ``openmp``, ``omp_max_threads``, and the CPU path the kernels run, ``cpu_isa``, among those the
    CPU supports, ``cpu_isa_supported`` (widest first). ``available`` is False (with ``error``) when it
    cannot be used."""
    if native is None:
        return {"available": False, "error": _UNAVAILABLE, "cuda": False, "openmp": False}
    return {"available": True, **native.build_info()}


def require_native():
    """The native module, or NativeUnavailable with a one-line message that says what to run."""
    if native is None:
        raise NativeUnavailable(_UNAVAILABLE)
    return native


def cpu_isa() -> str:
    """The vector instruction set the CPU kernels run now: one of CPU_ISAS."""
    return require_native().cpu_isa()


def set_cpu_isa(name: str) -> str:
    """Make the CPU kernels run ``name`` (one of CPU_ISAS that the CPU supports) from the next call on;
    returns the path they ran before. Results agree across paths to rounding (masked Adam and the
    magnitude masks bit for bit)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of {', '.join(CPU_ISAS)}), got {type(name).__name__}")
    module = require_native()
    problem = _cpu_isa_problem(name, module.cpu_isa_supported(), f"set_cpu_isa: name={name!r}")
    if problem:
        raise ValueError(problem)
    previous = module.cpu_isa()
    module.set_cpu_isa(name)
    return previous


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
