"""Sparse training: a whole training step of the U-Nets, then forward + backward layer by layer, each
beside the dense masked training a user has today.

**Training step** (``test_sparse_train_step_cpu``): the CIFAR-10 U-Net at batch 8 and the digits U-Net
at batch 64, uniform magnitude masks (every prunable tensor at 50/80/95/99 % sparsity), one step of
pylth.ddpm.trainer.train_step (the diffusion loss, backward, the pruned gradients zeroed, gradient
clipping at 1.0, the optimizer step): ``dense`` is the dense masked model with MaskedAdam (what
``--sparse-training off`` trains), ``auto`` what ``--sparse-training auto`` trains (the layers below the
crossover sparse, their kept values in MaskedAdam without masks, the others dense and masked), ``on``
every masked layer sparse. After the module it prints dense time / auto time and dense / on (min and
median) per model and sparsity, and how many layers auto made sparse. Target on this CPU: the CIFAR-10
step >= 2x at 95 %, >= 3x at 99 %, and auto never slower.

**Layers** (``test_sparse_train_layer_cpu``): every distinct conv and linear layer of the CIFAR-10 U-Net
(bench/unet_layers.py), batch 8, uniform random masks at 50/80/95/99 % sparsity. Both sides compute y
and the gradients of x, the weight and the bias for a random dL/dy, through ``torch.autograd.grad`` (no
accumulation into ``.grad``): dense is ``F.conv2d(x, w * mask, b)`` / ``F.linear(x, w * mask, b)`` with
autograd (what a user has: its time does not depend on the zeros), pylth is
``sparse_conv2d_trainable(x, values, structure, b)`` with the compact kept values. The U-Net's first conv
(3 input channels: the image) takes no input gradient, as in training. After the module it prints, per
layer shape, dense time / pylth time at each sparsity and the training crossover (the sparsity below
which the dense layer is faster, interpolated over the measured 50 ... 99 %), then every shape weighed
by its count in the U-Net with the faster of the two per layer: what all its convs' forward + backward
would gain. Compare only numbers from one run.

On a shared machine measure CPU time, which other load disturbs far less than wall time:

    OMP_NUM_THREADS=1 nice -n 19 python -m pytest bench/test_bench_sparse_train.py --benchmark-only \
        --benchmark-timer time.process_time            # -k step: the training steps only
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from pylth.ddpm import GaussianDiffusion, build_model
from pylth.ddpm.trainer import train_step
from pylth.ddpm.trainer.sparse import sparse_layers, training_module
from pylth.ops.sparse_conv import compress_weight
from pylth.ops.sparse_train import sparse_conv2d_trainable, sparse_linear_trainable
from pylth.optim import masked_adam_for
from pylth.pruning import apply_masks, compute_masks
from ratios import benchmark_into, min_and_median, print_after_module
from unet_layers import layer_crossover, layer_id, layer_input_and_mask, layer_name, unet_layers, unet_summary

BATCH = 8
SPARSITIES = [0.5, 0.8, 0.95, 0.99]  # the ratio table
CROSSOVER_SPARSITIES = [0.6, 0.7, 0.9]  # pylth only: where it meets dense
ALL_SPARSITIES = SPARSITIES + CROSSOVER_SPARSITIES
LAYERS = unet_layers()
_times = {}  # (layer, impl, sparsity) -> (min, median) seconds


@functools.lru_cache(maxsize=1)  # the cases come layer by layer, sparsity by sparsity
def implementations(layer, sparsity):
    """The mask, the dense gradients (dW at the kept entries) and the two implementations of one layer's
    forward + backward, each returning (dx, dW or d values, db) (no dx for the image's conv)."""
    gen = torch.Generator().manual_seed(0)
    x, shape, mask = layer_input_and_mask(layer, BATCH, sparsity, gen)
    weight = (torch.randn(shape, generator=gen) / shape[1] ** 0.5).requires_grad_()
    bias = torch.randn(shape[0], generator=gen).requires_grad_()
    structure = compress_weight(weight.detach(), mask).with_values(None)
    values = weight.detach()[mask].clone().requires_grad_()
    x.requires_grad_(layer[0] != "conv" or layer[1] != 3)
    if layer[0] == "conv":
        s, p = layer[4:6]
        dense_fn = functools.partial(F.conv2d, stride=s, padding=p)
        ours_fn = functools.partial(sparse_conv2d_trainable, weight=structure, stride=s, padding=p)
    else:
        dense_fn, ours_fn = F.linear, functools.partial(sparse_linear_trainable, weight=structure)
    with torch.no_grad():
        grad_out = torch.randn(dense_fn(x, weight, bias).shape, generator=gen)
    dense_inputs = [t for t in (x, weight, bias) if t.requires_grad]
    ours_inputs = [t for t in (x, values, bias) if t.requires_grad]

    def dense():
        return torch.autograd.grad(dense_fn(x, weight * mask, bias), dense_inputs, grad_out)

    def ours():
        return torch.autograd.grad(ours_fn(x, values, bias=bias), ours_inputs, grad_out)

    want = list(dense())
    want[-2] = want[-2][mask]  # the weight gradient at the kept entries, as pylth returns it
    return mask, want, {"dense": dense, "pylth": ours}


CASES = [(layer, impl, s) for layer in LAYERS for s in SPARSITIES for impl in ("dense", "pylth")]
CASES += [(layer, "pylth", s) for layer in LAYERS for s in CROSSOVER_SPARSITIES]
CASES.sort(key=lambda case: list(LAYERS).index(case[0]))  # layer by layer (stable: then by sparsity)


@pytest.mark.parametrize("layer,impl,sparsity", CASES,
                         ids=[f"{layer_id(la)}-{impl}-{int(s * 100)}" for la, impl, s in CASES])
def test_sparse_train_layer_cpu(benchmark, layer, impl, sparsity):
    mask, want, fns = implementations(layer, sparsity)
    fn = fns[impl]
    got = list(fn())
    if impl == "dense":
        got[-2] = got[-2][mask]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-3 * max(1.0, float(w.abs().max())))
    group = f"sparse-train-{layer_name(layer)}-{int(sparsity * 100)}"
    benchmark_into(benchmark, fn, group, _times, (layer, impl, sparsity))


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: per layer and sparsity, dense forward + backward time / pylth's (min times)."""
    yield
    lines = [f"sparse-train-cpu: forward + backward, batch {BATCH}, {torch.get_num_threads()} threads, min times"]
    for layer, count in LAYERS.items():
        cells = [f"{s:.0%}: {_times[(layer, 'dense', s)][0] / _times[(layer, 'pylth', s)][0]:.2f}x"
                 for s in SPARSITIES if (layer, "dense", s) in _times and (layer, "pylth", s) in _times]
        if cells:
            dense = min(_times[(layer, "dense", s)][0] for s in SPARSITIES if (layer, "dense", s) in _times)
            lines.append(f"sparse-train-cpu {layer_name(layer)} (x{count}): dense {dense * 1e3:.2f} ms; "
                         + "; ".join(cells) + f"; {layer_crossover(layer, _times, SPARSITIES, ALL_SPARSITIES)}")
    for kind in ("conv", "linear"):
        lines += unet_summary("sparse-train-cpu", LAYERS, kind, SPARSITIES, _times)
    print_after_module(request, lines if len(lines) > 1 else [])


STEP_MODELS = {"cifar10": 8, "digits": 64}  # preset -> batch
STEP_IMPLS = {"dense": "off", "auto": "auto", "on": "on"}  # impl -> --sparse-training
_step_times = {}  # (preset, sparsity, impl) -> (min, median) seconds
_step_layers = {}  # (preset, sparsity, impl) -> "sparse of masked"


def step_case(preset: str, sparsity: float, impl: str):
    """(one training step, the loss of the first step) of the model ``impl`` trains, from the same
    initial weights, masks, batch, timesteps and noise on every side."""
    torch.manual_seed(0)
    model = build_model(preset)
    masks = compute_masks(model, "uniform", sparsity)
    apply_masks(model, masks)
    net, net_masks = training_module(model.train(), masks, STEP_IMPLS[impl], batch_size=STEP_MODELS[preset])
    _step_layers[preset, sparsity, impl] = f"{len(sparse_layers(net))} of {len(masks)}"
    optimizer = masked_adam_for(net, net_masks, lr=2e-4)
    named = dict(net.named_parameters())
    pruned = [(named[name], ~mask) for name, mask in net_masks.items()]
    params = list(net.parameters())
    c, side, batch = model.config["in_channels"], model.config["image_size"], STEP_MODELS[preset]
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(batch, c, side, side, generator=g) * 2 - 1
    t, noise = torch.randint(0, 1000, (batch,), generator=g), torch.randn(batch, c, side, side, generator=g)
    diffusion = GaussianDiffusion()

    def step():
        torch.manual_seed(2)  # the same dropout on every side
        return train_step(net, diffusion, x0, optimizer, params, pruned, 1.0, False, t, noise)[0]

    return step, float(step())


STEP_CASES = [(p, s, i) for p in STEP_MODELS for s in SPARSITIES for i in STEP_IMPLS]
_first_losses = {}


@pytest.mark.parametrize("preset,sparsity,impl", STEP_CASES, ids=[f"{p}-{int(100 * s)}-{i}" for p, s, i in STEP_CASES])
def test_sparse_train_step_cpu(benchmark, preset, sparsity, impl):
    step, first = step_case(preset, sparsity, impl)
    _first_losses.setdefault((preset, sparsity), first)
    assert first == pytest.approx(_first_losses[preset, sparsity], rel=1e-4)  # every side computes the same loss
    benchmark.group = f"sparse-train-step-{preset}-{int(100 * sparsity)}"
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    times = min_and_median(benchmark)
    if times is not None:
        _step_times[preset, sparsity, impl] = times


@pytest.fixture(scope="module", autouse=True)
def report_step_ratios(request):
    """After the module: per model and sparsity, the dense masked step's time over auto's and on's."""
    yield
    lines = []
    for preset, batch in STEP_MODELS.items():
        for s in SPARSITIES:
            dense = _step_times.get((preset, s, "dense"))
            cells = []
            for impl in ("auto", "on"):
                ours = _step_times.get((preset, s, impl))
                if dense and ours:
                    cells.append(f"dense/{impl} {dense[0] / ours[0]:5.2f}x (min) {dense[1] / ours[1]:5.2f}x (median), "
                                 f"{_step_layers[preset, s, impl]} layers sparse")
            if cells:
                lines.append(f"sparse-train-step {preset:>7} batch {batch:>2} at {100 * s:.0f}%: dense "
                             f"{dense[0] * 1e3:7.1f} ms; " + "; ".join(cells))
    if lines:
        lines.insert(0, f"sparse-train-step-cpu: forward + backward + optimizer, {torch.get_num_threads()} threads")
    print_after_module(request, lines)
