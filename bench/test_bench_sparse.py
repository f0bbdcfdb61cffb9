"""Sparse-weight conv and linear (pylth.ops.sparse_conv) beside what a user has and what a user would try.

Workload: every distinct conv and linear layer of the CIFAR-10 U-Net (``build_model("cifar10")`` at
32x32: its input sizes are taken from a forward pass), batch 8, random masks. Baselines, timed side by
side: ``F.conv2d`` / ``F.linear`` on the dense weight with zeros (what a user has, its time does not
depend on the zeros), and torch.sparse: the weight as ``to_sparse_csr()`` times ``F.unfold(x)`` (what a
user would try). After the module it prints, per layer shape, dense time / pylth time and torch.sparse
time / pylth time at 80/90/95/99 % sparsity, and the crossover: the sparsity below which the dense op
is faster (interpolated between the measured sparsities 40 ... 99 %). A last line weighs every shape
by its count in the U-Net: the speed-up of all its convs together, with each layer taking the faster
of dense and pylth (the crossover rule). Compare only numbers from one run. On a busy machine
a longer --benchmark-max-time (more rounds to take the minimum of) steadies the ratios; with
OMP_NUM_THREADS=1 and --benchmark-timer time.process_time they measure CPU time, which a busy
machine disturbs far less than wall time.

    python -m pytest bench/test_bench_sparse.py --benchmark-only
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from pylth.ops.sparse_conv import compress_weight, sparse_conv2d, sparse_linear
from ratios import benchmark_into, print_after_module
from unet_layers import layer_crossover, layer_id, layer_input_and_mask, layer_name, unet_layers, unet_summary

BATCH = 8
SPARSITIES = [0.8, 0.9, 0.95, 0.99]  # the ratio table
CROSSOVER_SPARSITIES = [0.4, 0.5, 0.6, 0.7]  # pylth only: where it meets dense
ALL_SPARSITIES = SPARSITIES + CROSSOVER_SPARSITIES
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
_times = {}  # (layer, impl, sparsity) -> (min, median) seconds


LAYERS = unet_layers()


def make_case(layer, sparsity):
    """Input, dense weight with zeros, compressed weight, torch.sparse CSR weight, bias."""
    gen = torch.Generator().manual_seed(0)
    x, shape, mask = layer_input_and_mask(layer, BATCH, sparsity, gen)
    weight = torch.randn(shape, generator=gen) * mask
    csr = weight.reshape(shape[0], -1).to_sparse_csr()
    return x, weight, compress_weight(weight, mask), csr, torch.randn(shape[0], generator=gen)


def torch_sparse_conv(x, csr, bias, k, stride, padding, out_shape):
    n = x.shape[0]
    cols = F.unfold(x, k, padding=padding, stride=stride)  # [N, Ci*K*K, L]
    cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [Ci*K*K, N*L]
    y = (csr @ cols).reshape(csr.shape[0], n, -1)  # [Co, N, L]
    return (y.transpose(0, 1) + bias[:, None]).reshape(out_shape)


@functools.lru_cache(maxsize=1)  # the cases come layer by layer, sparsity by sparsity
def implementations(layer, sparsity):
    """The dense result and the three implementations of one layer at one sparsity."""
    x, weight, sparse, csr, bias = make_case(layer, sparsity)
    if layer[0] == "conv":
        _, _, co, k, s, p, _, _ = layer
        dense = F.conv2d(x, weight, bias, s, p)
        return dense, {
            "dense": lambda: F.conv2d(x, weight, bias, s, p),
            "pylth": lambda: sparse_conv2d(x, sparse, bias, s, p),
            "torch.sparse": lambda: torch_sparse_conv(x, csr, bias, k, s, p, dense.shape),
        }
    return F.linear(x, weight, bias), {
        "dense": lambda: F.linear(x, weight, bias),
        "pylth": lambda: sparse_linear(x, sparse, bias),
        "torch.sparse": lambda: (csr @ x.t()).t() + bias,
    }


CASES = [(layer, impl, s) for layer in LAYERS for s in SPARSITIES for impl in ("dense", "pylth", "torch.sparse")]
CASES += [(layer, "pylth", s) for layer in LAYERS for s in CROSSOVER_SPARSITIES]
CASES.sort(key=lambda case: list(LAYERS).index(case[0]))  # layer by layer (stable: then by sparsity)


@pytest.mark.parametrize("layer,impl,sparsity", CASES,
                         ids=[f"{layer_id(la)}-{impl}-{int(s * 100)}" for la, impl, s in CASES])
def test_sparse_layer_cpu(benchmark, layer, impl, sparsity):
    with torch.no_grad():
        want, fns = implementations(layer, sparsity)
        fn = fns[impl]
        torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-3)
        group = f"sparse-{layer_name(layer)}-{int(sparsity * 100)}"
        benchmark_into(benchmark, fn, group, _times, (layer, impl, sparsity))


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: per layer and sparsity, dense / pylth and torch.sparse / pylth (min times)."""
    yield
    lines = [f"sparse-cpu: batch {BATCH}, {torch.get_num_threads()} threads, min times"]
    for layer, count in LAYERS.items():
        cells = []
        for s in SPARSITIES:
            ours, dense, tsp = (_times.get((layer, impl, s)) for impl in ("pylth", "dense", "torch.sparse"))
            if ours is None or dense is None or tsp is None:
                continue
            cells.append(f"{s:.0%}: {dense[0] / ours[0]:.2f}x dense, {tsp[0] / ours[0]:.1f}x torch.sparse")
        if cells:
            lines.append(f"sparse-cpu {layer_name(layer)} (x{count}): dense {dense[0] * 1e3:.2f} ms; "
                         + "; ".join(cells) + f"; {layer_crossover(layer, _times, SPARSITIES, ALL_SPARSITIES)}")
    for kind in ("conv", "linear"):
        lines += unet_summary("sparse-cpu", LAYERS, kind, SPARSITIES, _times)
    print_after_module(request, lines if len(lines) > 1 else [])


# CUDA: each conv shape at batch 64 against cuDNN (F.conv2d on the dense weight with zeros), at 95 and
# 99 %: what decides whether sparsify should make layers sparse on a GPU (today it keeps them dense
# there). bench/gpu.sh runs these cases (`-k cuda`); without a GPU they skip.
CUDA_BATCH = 64
CUDA_SPARSITIES = [0.95, 0.99]
CUDA_CASES = [(layer, impl, s) for layer in LAYERS if layer[0] == "conv" for s in CUDA_SPARSITIES
              for impl in ("dense", "pylth")]  # dense: F.conv2d, i.e. cuDNN
_cuda_times = {}


@functools.lru_cache(maxsize=1)
def cuda_implementations(layer, sparsity):
    gen = torch.Generator().manual_seed(0)
    x, shape, mask = layer_input_and_mask(layer, CUDA_BATCH, sparsity, gen)
    weight = (torch.randn(shape, generator=gen) * mask).cuda()
    x, mask, bias = x.cuda(), mask.cuda(), torch.randn(shape[0], generator=gen).cuda()
    sparse = compress_weight(weight, mask)
    _, _, _, _, s, p, _, _ = layer

    def synced(fn):
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return F.conv2d(x, weight, bias, s, p), {
        "dense": synced(lambda: F.conv2d(x, weight, bias, s, p)),
        "pylth": synced(lambda: sparse_conv2d(x, sparse, bias, s, p)),
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layer,impl,sparsity", CUDA_CASES,
                         ids=[f"{layer_id(la)}-{impl}-{int(s * 100)}" for la, impl, s in CUDA_CASES])
def test_sparse_layer_cuda(benchmark, layer, impl, sparsity):
    with torch.no_grad():
        want, fns = cuda_implementations(layer, sparsity)
        torch.testing.assert_close(fns[impl](), want, rtol=1e-4, atol=1e-3)
        group = f"sparse-cuda-{layer_name(layer)}-{int(sparsity * 100)}"
        benchmark_into(benchmark, fns[impl], group, _cuda_times, (layer, impl, sparsity))


@pytest.fixture(scope="module", autouse=True)
def report_cuda_ratios(request):
    """After the module: per conv shape, cuDNN / pylth at 95 and 99 % (min times), then count-weighted."""
    yield
    lines = [f"sparse-cuda: batch {CUDA_BATCH}, min times, cuDNN time / pylth time"]
    for layer, count in LAYERS.items():
        measured = [s for s in CUDA_SPARSITIES if (layer, "pylth", s) in _cuda_times and (layer, "dense", s) in _cuda_times]
        if measured:
            cells = [f"{s:.0%}: {_cuda_times[layer, 'dense', s][0] / _cuda_times[layer, 'pylth', s][0]:.2f}x"
                     for s in measured]
            lines.append(f"sparse-cuda {layer_name(layer)} (x{count}): cudnn "
                         f"{_cuda_times[layer, 'dense', measured[0]][0] * 1e3:.3f} ms; " + "; ".join(cells))
    lines += unet_summary("sparse-cuda", LAYERS, "conv", CUDA_SPARSITIES, _cuda_times)
    print_after_module(request, lines if len(lines) > 1 else [])
