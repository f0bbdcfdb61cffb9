"""Shared workload of the micro-benchmarks: the DDPM CIFAR-10 U-Net's parameter shapes."""
import json
import os
import sys

import pytest

# The benchmarks check their results against the tests' oracles (tests/numpy_cka.py); appended, so
# that this folder's modules (conftest among them) still come first.
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

_SHAPES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddpm_cifar10_param_shapes.json")


def load_param_shapes() -> list:
    """All 35,746,307 parameters' shapes in forward order, as tuples."""
    with open(_SHAPES_FILE) as f:
        return [tuple(p["shape"]) for p in json.load(f)["parameters"]]


@pytest.fixture(scope="session")
def ddpm_param_shapes() -> list:
    return load_param_shapes()


@pytest.fixture(scope="session")
def ddpm_weight_shapes() -> list:
    """The 113 conv/linear weights (tensors of 2 or more dimensions), 35,691,264 values."""
    return [s for s in load_param_shapes() if len(s) >= 2]
