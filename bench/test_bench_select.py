"""pylth's exact magnitude selection beside what a user writes today, on the DDPM CIFAR-10 shapes.

Workload: the 113 conv/linear weights (>= 2-D shapes) of bench/ddpm_cifar10_param_shapes.json,
50 %-dense random masks, layerwise ratios min(0.95, 0.2 + 0.01 * j) for tensor j (global: 0.2).
Baselines: per tensor ``w.abs()[mask]`` + ``torch.kthvalue`` + compare; global: ``torch.kthvalue``
over the concatenation. Read the ratios of the mean times within one run, not absolute times.

    python -m pytest bench/test_bench_select.py --benchmark-only --benchmark-columns=mean,median,rounds
"""
import json
import os

import pytest
import torch

from pylth.ops.select import magnitude_select, magnitude_select_global

SHAPES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddpm_cifar10_param_shapes.json")
GLOBAL_RATIO = 0.2


def _shapes():
    with open(SHAPES_FILE) as f:
        params = json.load(f)["parameters"]
    return [tuple(p["shape"]) for p in params if len(p["shape"]) >= 2]


@pytest.fixture(scope="module")
def workload():
    gen = torch.Generator().manual_seed(0)
    shapes = _shapes()
    weights = [torch.randn(s, generator=gen) for s in shapes]
    masks = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    ratios = [min(0.95, 0.2 + 0.01 * j) for j in range(len(shapes))]
    return weights, masks, ratios


def loop_kthvalue(weights, masks, ratios):
    out = []
    for w, m, r in zip(weights, masks, ratios):
        active = w.abs()[m]
        k = int(r * active.numel() + 0.5)
        if k == 0:
            out.append(m.clone())
            continue
        threshold = torch.kthvalue(active, k).values
        out.append(m & (w.abs() > threshold))
    return out


def global_kthvalue(weights, masks, ratio):
    active = torch.cat([w.abs()[m] for w, m in zip(weights, masks)])
    k = int(ratio * active.numel() + 0.5)
    threshold = torch.kthvalue(active, k).values
    return [m & (w.abs() > threshold) for w, m in zip(weights, masks)]


def test_layerwise_pylth(benchmark, workload):
    weights, masks, ratios = workload
    benchmark.group = "layerwise"
    benchmark(magnitude_select, weights, ratios, masks)


def test_layerwise_torch_loop(benchmark, workload):
    weights, masks, ratios = workload
    benchmark.group = "layerwise"
    benchmark(loop_kthvalue, weights, masks, ratios)


def test_global_pylth(benchmark, workload):
    weights, masks, _ = workload
    benchmark.group = "global"
    benchmark(magnitude_select_global, weights, GLOBAL_RATIO, masks)


def test_global_torch_kthvalue(benchmark, workload):
    weights, masks, _ = workload
    benchmark.group = "global"
    benchmark(global_kthvalue, weights, masks, GLOBAL_RATIO)


def test_pylth_matches_baseline_on_random_weights(workload):
    """Without ties (random fp32), the thresholded baseline prunes exactly the same entries."""
    weights, masks, ratios = workload
    assert all(torch.equal(a, b) for a, b in zip(magnitude_select(weights, ratios, masks),
                                                 loop_kthvalue(weights, masks, ratios)))
