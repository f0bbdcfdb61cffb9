"""RBF CKA of all 113 weight-row pairs of two DDPM CIFAR-10 tickets: pylth vs a numpy float64 loop.

Run: python -m pytest bench/test_bench_cka.py --benchmark-only --benchmark-group-by=param:tickets \
         [--cpu-isa avx512,avx2]
On the CPU, pylth runs once per CPU path (bench/conftest.py) beside the same numpy loop; the speed-ups
(numpy time / pylth time, min and median over rounds) are printed after the module. Compare only
numbers from one run, never absolute times.
"""
import numpy as np
import pytest
import torch

from numpy_cka import np_gram_sq_distances, np_rbf_cka  # tests/numpy_cka.py
from pylth.cka import rbf_cka, weight_rows
from ratios import cpu_model, min_and_median, print_after_module

SPARSITIES = [0.8, 0.99]
_times = {}  # (sparsity, path or "numpy") -> (min, median) seconds


def random_ticket(shapes, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        w = torch.randn(shape, generator=g)
        w[torch.rand(shape, generator=g) < sparsity] = 0
        rows.append(weight_rows(w).contiguous())
    return rows


@pytest.fixture(scope="module", params=SPARSITIES, ids=lambda s: f"sparsity{int(s * 100)}")
def tickets(request, ddpm_weight_shapes):
    assert len(ddpm_weight_shapes) == 113
    xs = random_ticket(ddpm_weight_shapes, request.param, seed=1)
    ys = random_ticket(ddpm_weight_shapes, request.param, seed=2)
    return request.param, xs, ys


def reference_loop(xs, ys):
    return np.array([np_rbf_cka(x.numpy(), y.numpy(), 1.0, False, np_gram_sq_distances) for x, y in zip(xs, ys)])


def _record(benchmark, key):
    times = min_and_median(benchmark)
    if times is not None:
        _times[key] = times


def test_numpy_float64_reference(benchmark, tickets):
    sparsity, xs, ys = tickets
    benchmark.pedantic(reference_loop, args=(xs, ys), rounds=3, warmup_rounds=0)
    _record(benchmark, (sparsity, "numpy"))


def test_pylth_rbf_cka(benchmark, tickets, cpu_isa):
    sparsity, xs, ys = tickets
    got = benchmark.pedantic(rbf_cka, args=(xs, ys), rounds=5, warmup_rounds=1)
    _record(benchmark, (sparsity, cpu_isa))
    np.testing.assert_allclose(got.numpy(), reference_loop(xs, ys), rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_pylth_rbf_cka_cuda(benchmark, tickets):
    _, xs, ys = tickets
    xs_cuda = [x.cuda() for x in xs]
    ys_cuda = [y.cuda() for y in ys]

    def run():
        out = rbf_cka(xs_cuda, ys_cuda)
        torch.cuda.synchronize()
        return out

    got = benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    np.testing.assert_allclose(got.cpu().numpy(), reference_loop(xs, ys), rtol=0, atol=1e-5)


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: the numpy loop's time over pylth's, per sparsity and CPU path."""
    yield
    lines = []
    for (sparsity, path), ours in sorted(_times.items()):
        base = _times.get((sparsity, "numpy"))
        if path == "numpy" or base is None:
            continue
        for stat, k in (("min", 0), ("median", 1)):
            lines.append(f"cka-cpu ({path} path) sparsity {100 * sparsity:.0f}% {stat}: pylth {ours[k] * 1e3:.1f} ms, "
                         f"numpy float64 {base[k] * 1e3:.1f} ms: {base[k] / ours[k]:.2f}x faster")
    print_after_module(request, [f"CPU: {cpu_model()}"] + lines if lines else [])
