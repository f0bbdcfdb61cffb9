"""RBF CKA of all 113 weight-row pairs of two DDPM CIFAR-10 tickets: pylth vs a numpy float64 loop.

Run: python -m pytest bench/test_bench_cka.py --benchmark-only --benchmark-group-by=param
Compare the two rows of each sparsity group (the ratio), never absolute times.
"""
import numpy as np
import pytest
import torch

from numpy_cka import np_gram_sq_distances, np_rbf_cka  # tests/numpy_cka.py
from pylth.cka import rbf_cka, weight_rows

SPARSITIES = [0.8, 0.99]


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
    return xs, ys


def reference_loop(xs, ys):
    return np.array([np_rbf_cka(x.numpy(), y.numpy(), 1.0, False, np_gram_sq_distances) for x, y in zip(xs, ys)])


def test_numpy_float64_reference(benchmark, tickets):
    xs, ys = tickets
    benchmark.pedantic(reference_loop, args=(xs, ys), rounds=3, warmup_rounds=0)


def test_pylth_rbf_cka(benchmark, tickets):
    xs, ys = tickets
    got = benchmark.pedantic(rbf_cka, args=(xs, ys), rounds=5, warmup_rounds=1)
    np.testing.assert_allclose(got.numpy(), reference_loop(xs, ys), rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_pylth_rbf_cka_cuda(benchmark, tickets):
    xs = [x.cuda() for x in tickets[0]]
    ys = [y.cuda() for y in tickets[1]]

    def run():
        out = rbf_cka(xs, ys)
        torch.cuda.synchronize()
        return out

    got = benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    np.testing.assert_allclose(got.cpu().numpy(), reference_loop(*tickets), rtol=0, atol=1e-5)
