"""Sparse training, layer by layer: forward + backward of pylth.ops.sparse_train beside the dense masked
layer a user trains today.

Workload: every distinct conv and linear layer of the CIFAR-10 U-Net (bench/unet_layers.py), batch 8,
uniform random masks at 50/80/95/99 % sparsity. Both sides compute y and the gradients of x, the weight
and the bias for a random dL/dy, through ``torch.autograd.grad`` (no accumulation into ``.grad``):
dense is ``F.conv2d(x, w * mask, b)`` / ``F.linear(x, w * mask, b)`` with autograd (what a user has:
its time does not depend on the zeros), pylth is ``sparse_conv2d_trainable(x, values, structure, b)``
with the compact kept values. The U-Net's first conv (3 input channels: the image) takes no input
gradient, as in training. After the module it prints, per layer shape, dense time / pylth time at each
sparsity and the training crossover (the sparsity below which the dense layer is faster, interpolated
over the measured 50 ... 99 %), then every shape weighed by its count in the U-Net with the faster of the
two per layer: what all its convs' forward + backward would gain. Compare only numbers from one run.

On a shared machine measure CPU time, which other load disturbs far less than wall time:

    OMP_NUM_THREADS=1 python -m pytest bench/test_bench_sparse_train.py --benchmark-only \
        --benchmark-timer time.process_time

(A whole training step of the U-Nets, forward, backward and optimizer, against the dense masked step
with MaskedAdam, belongs here too once pylth.sparse's trainable modules exist.)
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from pylth.ops.sparse_conv import compress_weight
from pylth.ops.sparse_train import sparse_conv2d_trainable, sparse_linear_trainable
from ratios import benchmark_into, print_after_module
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
