"""pylth.ops.dispatch: the backend choice, the table every native entry point takes, and the launch."""
import importlib
import types
import warnings

import pytest
import torch

from pylth.ops import dispatch
from pylth.ops.adam import AdamHyper, adam_step_constants
from pylth.ops.dispatch import NATIVE, REFERENCE, backend, launch, pack_table
from pylth.ops.native import NativeUnavailable, warn_fallback

# The module itself (the package attribute pylth.ops.native is the native module it loads).
loader = importlib.import_module("pylth.ops.native")


def test_cpu_tensors_take_the_native_kernel():
    assert backend("some_kernel", torch.device("cpu")) == NATIVE
    assert backend("some_kernel", "cpu") == NATIVE


def test_cuda_tensors_in_a_build_without_cuda_take_the_reference_and_warn_once(monkeypatch):
    monkeypatch.setattr(dispatch, "has_native_cuda", lambda: False)
    warn_fallback.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="some_kernel runs on the pure-torch reference"):
            assert backend("some_kernel", torch.device("cuda", 1)) == REFERENCE
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the second call is silent
            assert backend("some_kernel", "cuda") == REFERENCE
    finally:
        warn_fallback.cache_clear()  # so that later tests still see their warning once


def test_cuda_tensors_in_a_build_with_cuda_take_the_native_kernel(monkeypatch):
    monkeypatch.setattr(dispatch, "has_native_cuda", lambda: True)
    assert backend("some_kernel", "cuda:0") == NATIVE


@pytest.mark.parametrize("device", ["meta", torch.device("meta")])
def test_other_devices_are_an_error_naming_the_kernel(device):
    with pytest.raises(ValueError, match="some_kernel: tensors on meta are not supported"):
        backend("some_kernel", device)


def test_a_missing_native_module_is_an_error_not_a_slow_path(monkeypatch):
    monkeypatch.setattr(loader, "native", None)
    for device in ("cpu", "cuda"):
        with pytest.raises(NativeUnavailable):
            backend("some_kernel", device)
    with pytest.raises(NativeUnavailable):
        launch("some_kernel", "cpu", pack_table([], 2))


def test_pack_table_holds_the_rows_as_int64():
    table = pack_table([(1, 2, 3), [2**62, -1, 0]], 3)
    assert table.dtype == torch.int64 and table.is_contiguous() and table.device.type == "cpu"
    assert table.tolist() == [[1, 2, 3], [2**62, -1, 0]]
    assert pack_table([], 4).shape == (0, 4)
    assert pack_table([(5,)], 1, "cpu").tolist() == [[5]]


def test_pack_table_checks_the_width():
    with pytest.raises(ValueError, match="every table row must hold 3 integers, row 1 holds 2"):
        pack_table([(1, 2, 3), (4, 5)], 3)
    with pytest.raises(ValueError, match="row 0 holds 4"):
        pack_table([(1, 2, 3, 4)], 3)
    for width in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="width must be a positive int"):
            pack_table([], width)


def test_pack_table_trailer_follows_the_rows_in_the_same_allocation():
    table = pack_table([(1, 2), (3, 4)], 2, trailer=[0, 7, 9])
    assert table.shape == (2, 2) and table.tolist() == [[1, 2], [3, 4]]
    whole = torch.empty(0, dtype=torch.int64).set_(table.untyped_storage())
    assert whole.tolist() == [1, 2, 3, 4, 0, 7, 9] and whole.data_ptr() == table.data_ptr()


def _fake_native(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        some_kernel_cpu=lambda *args: calls.append(("cpu", args)) or "cpu result",
        some_kernel_cuda=lambda *args: calls.append(("cuda", args)) or "cuda result",
    )
    monkeypatch.setattr(loader, "native", fake)
    return calls


def test_launch_on_the_cpu_passes_table_scalars_and_thread_count(monkeypatch):
    calls = _fake_native(monkeypatch)
    table = pack_table([(1, 2, 3), (4, 5, 6)], 3)
    assert launch("some_kernel", torch.device("cpu"), table, 7, 0.5, True) == "cpu result"
    assert calls == [("cpu", (table.data_ptr(), 2, 3, 7, 0.5, True, torch.get_num_threads()))]


def test_launch_calls_the_real_entry_points():
    # masked_adam through launch: the table's one tensor gets torch.optim.Adam's first step.
    p, g, m, v = torch.ones(4), torch.full((4,), 0.5), torch.zeros(4), torch.zeros(4)
    table = pack_table([(p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), 0, 4)], 6)
    hyper = AdamHyper(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, step=1)
    constants = torch.tensor([adam_step_constants(hyper)], dtype=torch.float64)
    launch("masked_adam", "cpu", table, constants.data_ptr())
    want = torch.ones(4, requires_grad=True)
    want.grad = torch.full((4,), 0.5)
    torch.optim.Adam([want], lr=0.1).step()
    torch.testing.assert_close(p, want.detach())


@pytest.mark.cuda
def test_launch_on_cuda_makes_the_device_current_and_passes_its_stream(monkeypatch):
    calls = _fake_native(monkeypatch)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    seen = []
    monkeypatch.setattr(dispatch, "cuda_stream", lambda d: seen.append(torch.cuda.current_device()) or 1234)
    table = pack_table([(1, 2)], 2, device)
    assert table.device == device
    assert launch("some_kernel", device, table, 3) == "cuda result"
    assert calls == [("cuda", (table.data_ptr(), 1, 2, 3, 1234))] and seen == [device.index]
