"""Make tests/ and bench/ exercise the *installed* pylth, never the source folder at the repository root.

``python -m pytest`` puts the working directory on sys.path, where the top-level ``pylth/`` source
folder would shadow the installed package: the tests would run the checkout's Python, not what
``pip install .`` installed. Strip the repository root first, then fail loudly unless the native
module ``_pylth`` loads and matches the installed package. (tests/test_source_tree.py runs the
commands from the repository root on purpose, in subprocesses.)
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
from pylth.ops.native import NativeUnavailable, require_native  # noqa: E402

try:
    require_native()
except NativeUnavailable as exc:
    raise RuntimeError(str(exc)) from None

import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and pylth.build_info()["cuda"]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU and pylth built with CUDA")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
