"""Fixtures shared by the test modules (the installed-package guard lives in the root conftest.py)."""
import pytest
import torch

import pylth
from pylth.ops.native import CPU_ISAS, set_cpu_isa


@pytest.fixture(params=CPU_ISAS)
def cpu_isa_path(request):
    """Runs a test once per CPU path (csrc/cpu_dispatch.h) with the kernels forced onto it; a path this
    CPU lacks is skipped, saying so."""
    supported = pylth.build_info()["cpu_isa_supported"]
    if request.param not in supported:
        pytest.skip(f"this CPU has no {request.param} path: it supports {', '.join(supported)}")
    previous = set_cpu_isa(request.param)
    yield request.param
    set_cpu_isa(previous)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tiny models: on a busy 2-core box, spinning OpenMP threads make their
    steps tens of times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The digits training set (the bundled 8x8 images)."""
    from pylth.ddpm.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def stop_signal_handlers():
    """A command run in-process that stopped or failed leaves SIGTERM/SIGUSR1 ignored, as its process
    would until it exits (pylth.cli.run_command); give the next test the handlers this one found."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)
