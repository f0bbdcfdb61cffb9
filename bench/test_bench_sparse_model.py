"""Whole tickets: the U-Net forward and a DDIM sampling run, sparsified (pylth.sparse) beside the dense
masked model a user has (the same network with zeros where pruned).

Workload: the CIFAR-10 U-Net at batch 8 and the digits U-Net at batch 64, uniform magnitude pruning
to 90/95/99 % of every prunable weight; sampling: 20 DDIM steps of 8 CIFAR-10 / 64 digits images.
After the module it prints dense time / sparse time per case (min and median of the rounds) and how
many layers sparsify made sparse. Compare only numbers from one run.

    python -m pytest bench/test_bench_sparse_model.py --benchmark-only
"""
from __future__ import annotations

import functools

import pytest
import torch

from pylth.ddpm import GaussianDiffusion, build_model
from pylth.ddpm.samplers import make_sampler, sample
from pylth.pruning import apply_masks, compute_masks
from pylth.sparse import sparsify
from ratios import min_and_median, print_after_module

MODELS = {"cifar10": 8, "digits": 64}  # preset -> batch
SPARSITIES = [0.9, 0.95, 0.99]
SAMPLE_STEPS = 20
_times = {}  # (task, preset, sparsity, impl) -> (min, median)
_layers = {}  # (preset, sparsity) -> "sparse of masked"


@functools.lru_cache(maxsize=None)
def models(preset: str, sparsity: float):
    """(dense masked model, its sparsified copy) with trained-looking outputs (output inits lifted)."""
    torch.manual_seed(0)
    model = build_model(preset).eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.abs().max() < 1e-3:
            m.weight.mul_(1e4)
    masks = compute_masks(model, "uniform", sparsity)
    apply_masks(model, masks)
    sparse = sparsify(model, masks)
    report = sparse.sparsify_report
    _layers[preset, sparsity] = f"{len(report.sparse)} of {len(report)}"
    return model, sparse


def inputs(preset: str):
    model = models(preset, SPARSITIES[0])[0]
    c, s = model.config["in_channels"], model.config["image_size"]
    g = torch.Generator().manual_seed(1)
    return torch.randn(MODELS[preset], c, s, s, generator=g), torch.randint(0, 1000, (MODELS[preset],), generator=g)


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    lines = []
    for task in ("forward", "ddim"):
        for preset in MODELS:
            for sparsity in SPARSITIES:
                dense, sparse = (_times.get((task, preset, sparsity, impl)) for impl in ("dense", "sparse"))
                if dense and sparse:
                    lines.append(f"{task:>7} {preset:>8} batch {MODELS[preset]:>2} at {100 * sparsity:.0f}%: "
                                 f"dense/sparse {dense[0] / sparse[0]:5.2f}x (min), {dense[1] / sparse[1]:5.2f}x "
                                 f"(median); layers sparse: {_layers[preset, sparsity]}")
    print_after_module(request, lines)


CASES = [(p, s, impl) for p in MODELS for s in SPARSITIES for impl in ("dense", "sparse")]


@pytest.mark.parametrize("preset,sparsity,impl", CASES, ids=[f"{p}-{int(100 * s)}-{i}" for p, s, i in CASES])
def test_unet_forward_cpu(benchmark, preset, sparsity, impl):
    dense, sparse = models(preset, sparsity)
    model = dense if impl == "dense" else sparse
    x, t = inputs(preset)
    benchmark.group = f"forward {preset} {int(100 * sparsity)}%"
    with torch.no_grad():
        out = benchmark(model, x, t)
        want = dense(x, t)
    torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
    stats = min_and_median(benchmark)
    if stats:
        _times["forward", preset, sparsity, impl] = stats


SAMPLE_CASES = [(p, 0.95, impl) for p in MODELS for impl in ("dense", "sparse")]


@pytest.mark.parametrize("preset,sparsity,impl", SAMPLE_CASES,
                         ids=[f"{p}-{int(100 * s)}-{i}" for p, s, i in SAMPLE_CASES])
def test_ddim_sampling_cpu(benchmark, preset, sparsity, impl):
    dense, sparse = models(preset, sparsity)
    model = dense if impl == "dense" else sparse
    shape = tuple(inputs(preset)[0].shape[1:])
    sampler = make_sampler("ddim", GaussianDiffusion(1000), SAMPLE_STEPS)
    benchmark.group = f"ddim {preset} {int(100 * sparsity)}%"
    benchmark.pedantic(sample, args=(model, sampler, MODELS[preset], shape),
                       kwargs=dict(seed=0, batch_size=MODELS[preset], device="cpu", progress=False),
                       rounds=3, iterations=1)
    stats = min_and_median(benchmark)
    if stats:
        _times["ddim", preset, sparsity, impl] = stats
