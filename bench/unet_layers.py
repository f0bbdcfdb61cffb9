"""What the sparse benchmarks share: the CIFAR-10 U-Net's distinct layer shapes, their names, and where
a sparse kernel's time meets the dense op's."""
from __future__ import annotations

import collections

import torch

from pylth.ddpm import build_model


def unet_layers() -> collections.OrderedDict:
    """Distinct layer shapes of the CIFAR-10 U-Net (``build_model("cifar10")`` at 32x32: the input sizes
    come from a forward pass) in forward order -> how often each occurs: ("conv", Ci, Co, K, stride,
    padding, H, W) or ("linear", I, O)."""
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


def layer_name(layer) -> str:
    if layer[0] == "conv":
        _, ci, co, k, s, _p, h, w = layer
        return f"conv {ci}->{co} {k}x{k} s{s} {h}x{w}"
    return f"linear {layer[1]}->{layer[2]}"


def layer_id(layer) -> str:
    """layer_name as a pytest id fragment."""
    return layer_name(layer).replace("->", "-").replace(" ", "-")


def crossover(points, dense: float) -> str:
    """Where the sparse times ``points`` [(sparsity, seconds)] (interpolated linearly between the measured
    sparsities) meet the dense time ``dense``."""
    points = sorted(points)
    if points[0][1] <= dense:
        return f"pylth faster from {points[0][0]:.0%} or below"
    for (s0, t0), (s1, t1) in zip(points, points[1:]):
        if t1 <= dense:
            return f"crossover at {s0 + (t0 - dense) / (t0 - t1) * (s1 - s0):.0%} sparsity"
    return f"dense faster up to {points[-1][0]:.0%}"


def layer_input_and_mask(layer, batch: int, sparsity: float, gen: torch.Generator) -> tuple:
    """A random input of ``batch`` images (rows) for ``layer``, its weight's shape and a uniform random
    mask of that shape keeping 1 - ``sparsity`` of the weights (drawn from ``gen`` in that order)."""
    if layer[0] == "conv":
        _, ci, co, k, _s, _p, h, w = layer
        x = torch.randn(batch, ci, h, w, generator=gen)
        shape = (co, ci, k, k)
    else:
        _, i, o = layer
        x = torch.randn(batch, i, generator=gen)
        shape = (o, i)
    return x, shape, torch.rand(shape, generator=gen) >= sparsity


def layer_crossover(layer, times, dense_sparsities, sparse_sparsities) -> str:
    """``crossover`` of one layer: pylth's times at ``sparse_sparsities`` against the fastest dense time
    at ``dense_sparsities`` (``times`` as in ``unet_summary``)."""
    dense = min(times[(layer, "dense", s)][0] for s in dense_sparsities if (layer, "dense", s) in times)
    return crossover([(s, times[(layer, "pylth", s)][0]) for s in sparse_sparsities if (layer, "pylth", s) in times],
                     dense)


def unet_summary(label: str, layers, kind: str, sparsities, times) -> list:
    """Per sparsity, all layers of a kind together, each weighted by its count in the U-Net: dense time
    over pylth's, with the faster of the two per layer (the crossover rule). ``times``: (layer, impl,
    sparsity) -> (min, median) seconds, impl "dense" or "pylth"."""
    lines = []
    for s in sparsities:
        dense = ours = 0.0
        for layer, count in layers.items():
            if layer[0] != kind or (layer, "pylth", s) not in times or (layer, "dense", s) not in times:
                continue
            d, p = times[(layer, "dense", s)][0], times[(layer, "pylth", s)][0]
            dense += count * d
            ours += count * min(d, p)
        if ours:
            lines.append(f"{label} all {kind} layers of the U-Net at {s:.0%} (count-weighted, min times, faster of "
                         f"dense and pylth per layer): dense {dense * 1e3:.1f} ms, {ours * 1e3:.1f} ms: "
                         f"{dense / ours:.2f}x")
    return lines
