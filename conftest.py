"""Make tests/ and bench/ exercise the *installed* pylth, never the source folder at the repository root.

``python -m pytest`` puts the working directory on sys.path, where the top-level ``pylth/`` source
folder (without the compiled ``_C``) would shadow the installed package and silently test only the
pure-torch fallbacks. Strip the repository root first, then fail loudly if ``pylth._C`` is missing.
"""
import os
import sys

import pytest

_REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _REPO_ROOT]
if "pylth" in sys.modules:
    raise RuntimeError("pylth was imported before conftest.py could keep the source folder off sys.path")

import pylth  # noqa: E402

if os.path.dirname(os.path.abspath(pylth.__file__)) == os.path.join(_REPO_ROOT, "pylth"):
    raise RuntimeError(f"tests imported the source folder {pylth.__file__}; install pylth with `pip install .`")
try:
    from pylth import _C  # noqa: F401,E402
except ImportError as exc:
    raise RuntimeError(f"pylth._C is missing from the installed package ({exc}); rebuild with `pip install .`") from exc

import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and pylth.build_info()["cuda"]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU and pylth built with CUDA")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
