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

import collections
import functools

import pytest
import torch
import torch.nn.functional as F

from pylth.ddpm import build_model
from pylth.ops.sparse_conv import compress_weight, sparse_conv2d, sparse_linear
from ratios import min_and_median, print_after_module

BATCH = 8
SPARSITIES = [0.8, 0.9, 0.95, 0.99]  # the ratio table
CROSSOVER_SPARSITIES = [0.4, 0.5, 0.6, 0.7]  # pylth only: where it meets dense
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
_times = {}  # (layer, impl, sparsity) -> (min, median) seconds


def unet_layers() -> "collections.OrderedDict":
    """Distinct layer shapes of the CIFAR-10 U-Net in forward order -> how often each occurs:
    ("conv", Ci, Co, K, stride, padding, H, W) or ("linear", I, O)."""
    model = build_model("cifar10").eval()
    seen = collections.OrderedDict()

    def record(module, inputs, output):
        x = inputs[0]
        if isinstance(module, torch.nn.Conv2d):
            key = ("conv", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                   module.padding[0], x.shape[-2], x.shape[-1])
        else:
            key = ("linear", module.in_features, module.out_features)
        seen[key] = seen.get(key, 0) + 1

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(record)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    return seen


LAYERS = unet_layers()


def layer_name(layer) -> str:
    if layer[0] == "conv":
        _, ci, co, k, s, p, h, w = layer
        return f"conv {ci}->{co} {k}x{k} s{s} {h}x{w}"
    return f"linear {layer[1]}->{layer[2]}"


def make_case(layer, sparsity):
    """Input, dense weight with zeros, compressed weight, torch.sparse CSR weight, bias."""
    gen = torch.Generator().manual_seed(0)
    if layer[0] == "conv":
        _, ci, co, k, s, p, h, w = layer
        x = torch.randn(BATCH, ci, h, w, generator=gen)
        shape = (co, ci, k, k)
    else:
        _, i, o = layer
        x = torch.randn(BATCH, i, generator=gen)
        shape = (o, i)
    mask = torch.rand(shape, generator=gen) >= sparsity
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
                         ids=[f"{layer_name(la).replace('->', '-').replace(' ', '-')}-{impl}-{int(s * 100)}"
                              for la, impl, s in CASES])
def test_sparse_layer_cpu(benchmark, layer, impl, sparsity):
    with torch.no_grad():
        want, fns = implementations(layer, sparsity)
        fn = fns[impl]
        torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-3)
        benchmark.group = f"sparse-{layer_name(layer)}-{int(sparsity * 100)}"
        benchmark(fn)
    times = min_and_median(benchmark)
    if times is not None:
        _times[(layer, impl, sparsity)] = times


def crossover(layer) -> str:
    """The sparsity where pylth's time (interpolated over the measured sparsities) meets dense's."""
    dense = min(_times[(layer, "dense", s)][0] for s in SPARSITIES if (layer, "dense", s) in _times)
    points = sorted((s, _times[(layer, "pylth", s)][0]) for s in SPARSITIES + CROSSOVER_SPARSITIES
                    if (layer, "pylth", s) in _times)
    if points[0][1] <= dense:
        return f"pylth faster from {points[0][0]:.0%} or below"
    for (s0, t0), (s1, t1) in zip(points, points[1:]):
        if t1 <= dense:
            return f"crossover at {s0 + (t0 - dense) / (t0 - t1) * (s1 - s0):.0%} sparsity"
    return f"dense faster up to {points[-1][0]:.0%}"


def summary(kind: str) -> list:
    """All layers of a kind, each weighted by its count in the U-Net: dense time over pylth's, with the
    faster of the two per layer."""
    lines = []
    for s in SPARSITIES:
        dense = ours = 0.0
        for layer, count in LAYERS.items():
            if layer[0] != kind or (layer, "pylth", s) not in _times or (layer, "dense", s) not in _times:
                continue
            d, p = _times[(layer, "dense", s)][0], _times[(layer, "pylth", s)][0]
            dense += count * d
            ours += count * min(d, p)
        if ours:
            lines.append(f"sparse-cpu all {kind} layers of the U-Net at {s:.0%} (count-weighted, min times, "
                         f"faster of dense and pylth per layer): dense {dense * 1e3:.1f} ms, {ours * 1e3:.1f} ms: "
                         f"{dense / ours:.2f}x")
    return lines


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
                         + "; ".join(cells) + f"; {crossover(layer)}")
    lines += summary("conv") + summary("linear")
    print_after_module(request, lines if len(lines) > 1 else [])
