"""Keyed dropout (pylth.ops.dropout) vs torch's dropout, forward and backward, on the dropout inputs of
the DDPM CIFAR-10 U-Net (the second half of every res block: 128 channels at 32x32, 256 at 16x16, 8x8
and 4x4), 32 images (a 128-image batch over 4 processes).

Run:  python -m pytest bench/test_bench_dropout.py --benchmark-only --benchmark-timer time.process_time
torch's F.dropout draws a Bernoulli mask (bernoulli_), multiplies, and keeps the mask for the backward;
keyed dropout hashes each element's counters in one pass and recomputes the mask in the backward. The
ratios are printed after the module's tests; compare only numbers from one run.
"""
import pytest
import torch
import torch.nn.functional as F

from pylth.ops.dropout import keyed_dropout
from ratios import benchmark_into, print_after_module

SHAPES = [(32, 128, 32, 32), (32, 256, 16, 16), (32, 256, 8, 8), (32, 256, 4, 4)]
P = 0.1
_times: dict = {}


def _step(dropout, x, grad):
    def run():
        x.grad = None
        dropout(x).backward(grad)
    return run


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("kind", ["keyed", "torch"])
def test_dropout_forward_backward(benchmark, shape, kind):
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    dropout = (lambda t: keyed_dropout(t, P, 12345)) if kind == "keyed" else (lambda t: F.dropout(t, P, True))
    benchmark_into(benchmark, _step(dropout, x, grad), f"dropout-{'x'.join(map(str, shape))}", _times, (shape, kind))
    kept = float((x.grad != 0).float().mean())
    assert abs(kept - (1 - P)) < 0.01


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    yield
    lines = []
    for shape in SHAPES:
        if (shape, "keyed") in _times and (shape, "torch") in _times:
            (keyed_min, keyed_median), (torch_min, torch_median) = _times[(shape, "keyed")], _times[(shape, "torch")]
            lines.append(f"dropout {'x'.join(map(str, shape))} forward+backward: torch's takes {torch_min / keyed_min:.2f}x "
                         f"(min) / {torch_median / keyed_median:.2f}x (median) keyed dropout's time "
                         f"({keyed_median * 1e3:.2f} ms vs {torch_median * 1e3:.2f} ms median)")
    print_after_module(request, lines)
