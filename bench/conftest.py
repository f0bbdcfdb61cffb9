"""Shared workload of the micro-benchmarks (the DDPM CIFAR-10 U-Net's parameter shapes), and the CPU
paths pylth's CPU kernels are timed on: a test that takes the ``cpu_isa`` fixture runs once per path,
beside the same torch/numpy baseline (``--cpu-isa avx2,avx512`` picks paths; default: every path the
CPU supports)."""
import json
import os
import sys

import pytest

import pylth
from pylth.ops import set_cpu_isa

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


def pytest_addoption(parser):
    parser.addoption("--cpu-isa", default="", help="comma-separated CPU paths to time pylth's CPU kernels on "
                     "(avx512, avx2, baseline); default: every path this CPU supports")


def bench_cpu_isas(config) -> list:
    """The CPU paths to time: those --cpu-isa names, or every one the CPU supports (widest first)."""
    supported = pylth.build_info()["cpu_isa_supported"]
    asked = [name.strip() for name in config.getoption("--cpu-isa").split(",") if name.strip()]
    missing = [name for name in asked if name not in supported]
    if missing:
        raise pytest.UsageError(f"--cpu-isa: this CPU has no {', '.join(missing)} path; it supports "
                                f"{', '.join(supported)}")
    return asked or supported


def pytest_generate_tests(metafunc):
    if "cpu_isa" in metafunc.fixturenames:
        metafunc.parametrize("cpu_isa", bench_cpu_isas(metafunc.config), indirect=True)


@pytest.fixture
def cpu_isa(request):
    """The CPU path this case times pylth's kernels on (restored afterwards)."""
    previous = set_cpu_isa(request.param)
    yield request.param
    set_cpu_isa(previous)
