"""Where training a layer on the sparse kernels starts to pay: per distinct conv and linear layer of the
U-Nets, one training step of that layer alone (forward, backward with dL/dx, dL/d weight, dL/d bias,
and the MaskedAdam step), dense masked against sparse, at densities from 60 % down to 2 %, measured in
alternation (dense, sparse, dense, ...) so that a drifting machine slows both alike.

- dense: ``F.conv2d`` / ``F.linear`` on the masked weight with autograd, the pruned gradients zeroed,
  MaskedAdam with the mask (what ``--sparse-training off`` trains);
- sparse: ``sparse_conv2d_trainable`` / ``sparse_linear_trainable`` on the kept values, MaskedAdam on them
  (what ``--sparse-training on`` trains for that layer).

It prints each layer's crossover (the density below which the sparse step is faster, interpolated
between the measured densities) and, per kind, the lowest: the density up to which every measured layer
trains faster sparse. pylth.sparse.convert's TRAINING_* constants come from these lines.

    OMP_NUM_THREADS=1 python bench/sparse_train_crossover.py [--models small28 small14 cifar10] [--rounds 5]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pylth.ddpm import build_model
from pylth.ddpm.models.unet import UNet
from pylth.ops.sparse_conv import compress_weight
from pylth.ops.sparse_train import sparse_conv2d_trainable, sparse_linear_trainable
from pylth.optim import MaskedAdam

DENSITIES = [0.6, 0.45, 0.3, 0.2, 0.15, 0.1, 0.05, 0.02]


def small_unet(size: int) -> UNet:
    """The U-Net of issue 26's study: ch 32, ch_mult (1, 2, 2), one res block, attention at 7x7."""
    return UNet(in_channels=1, image_size=size, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
                dropout=0.1)


MODELS = {  # name -> (builder, batch, image shape)
    "small28": (lambda: small_unet(28), 64, (1, 28, 28)),
    "small14": (lambda: small_unet(14), 64, (1, 14, 14)),
    "cifar10": (lambda: build_model("cifar10"), 8, (3, 32, 32)),
}


def layer_shapes(model, batch: int, image) -> dict:
    """Distinct layers of ``model`` seen in one forward pass -> how often: ("conv", Ci, Co, K, stride,
    padding, H, W, batch, image input) or ("linear", I, O, batch)."""
    seen = {}

    def record(module, inputs, output):
        x = inputs[0]
        if isinstance(module, torch.nn.Conv2d):
            key = ("conv", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                   module.padding[0], x.shape[-2], x.shape[-1], batch, x.shape[1] == image[0] and x.shape[-1] == image[-1])
        else:
            key = ("linear", module.in_features, module.out_features, batch)
        seen[key] = seen.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *image), torch.zeros(1, dtype=torch.long))
    for h in hooks:
        h.remove()
    return seen


def steps(layer, density: float, gen: torch.Generator):
    """(dense step, sparse step) of one layer at ``density``, from the same weights, input and dL/dy."""
    if layer[0] == "conv":
        _, ci, co, k, stride, pad, h, w, batch, is_image = layer
        x = torch.randn(batch, ci, h, w, generator=gen)
        shape = (co, ci, k, k)
        dense_fn = lambda inp, wt, b: F.conv2d(inp, wt, b, stride, pad)  # noqa: E731
    else:
        _, i, o, batch = layer
        x, shape, is_image = torch.randn(batch, i, generator=gen), (o, i), False
        dense_fn = F.linear
    mask = torch.rand(shape, generator=gen) < density
    weight = torch.randn(shape, generator=gen) / shape[1] ** 0.5 * mask
    x.requires_grad_(not is_image)  # the image's conv passes no gradient on, as in training
    with torch.no_grad():
        grad_out = torch.randn(dense_fn(x, weight, None).shape, generator=gen)
    dense_w, dense_b = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(torch.zeros(shape[0]))
    dense_opt = MaskedAdam([dense_w, dense_b], lr=1e-4)
    dense_opt.set_mask(dense_w, mask)
    structure = compress_weight(weight, mask).with_values(None)
    values, sparse_b = torch.nn.Parameter(weight[mask].clone()), torch.nn.Parameter(torch.zeros(shape[0]))
    sparse_opt = MaskedAdam([values, sparse_b], lr=1e-4)
    if layer[0] == "conv":
        sparse_fn = lambda inp: sparse_conv2d_trainable(inp, values, structure, sparse_b, stride, pad)  # noqa: E731
    else:
        sparse_fn = lambda inp: sparse_linear_trainable(inp, values, structure, sparse_b)  # noqa: E731

    def dense():
        dense_opt.zero_grad(set_to_none=True)
        x.grad = None
        dense_fn(x, dense_w, dense_b).backward(grad_out)
        dense_w.grad.masked_fill_(~mask, 0)
        dense_opt.step()

    def sparse():
        sparse_opt.zero_grad(set_to_none=True)
        x.grad = None
        sparse_fn(x).backward(grad_out)
        sparse_opt.step()

    return dense, sparse


def paired_min(dense, sparse, rounds: int) -> tuple:
    """Min CPU seconds of each, measured alternately after one warm-up call of each."""
    dense(), sparse()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((dense, sparse)):
            start = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - start)
    return tuple(best)


def crossover(points) -> float:
    """The density below which sparse is faster: points [(density, dense / sparse)], densities falling;
    linear interpolation between the last losing and the first winning density (0 if it never wins,
    the highest density if it always does)."""
    if points[0][1] >= 1:
        return points[0][0]
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r1 >= 1:
            return d0 + (1 - r0) / (r1 - r0) * (d1 - d0)
    return 0.0


def name(layer) -> str:
    if layer[0] == "conv":
        _, ci, co, k, s, _p, h, w, batch, _img = layer
        return f"conv {ci}->{co} {k}x{k} s{s} {h}x{w} batch {batch}"
    return f"linear {layer[1]}->{layer[2]} batch {layer[3]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5, help="dense-sparse pairs per density (default 5)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    print(f"threads {torch.get_num_threads()}, CPU time, min of {args.rounds} alternating pairs; dense / sparse per density")
    lowest = {"conv": [], "linear": []}
    for model_name in args.models:
        build, batch, image = MODELS[model_name]
        torch.manual_seed(0)
        for layer, count in layer_shapes(build().eval(), batch, image).items():
            gen = torch.Generator().manual_seed(1)
            points = []
            for density in DENSITIES:
                d, s = paired_min(*steps(layer, density, gen), args.rounds)
                points.append((density, d / s))
            cross = crossover(points)
            lowest[layer[0]].append((cross, f"{model_name} {name(layer)}"))
            cells = " ".join(f"{100 * d:g}%:{r:.2f}" for d, r in points)
            print(f"{model_name} {name(layer)} (x{count}): {cells}; sparse faster below {100 * cross:.1f} % density",
                  flush=True)
    for kind, found in lowest.items():
        if found:
            cross, where = min(found)
            print(f"{kind}: every measured layer trains faster sparse below {100 * cross:.1f} % density (lowest: {where})")


if __name__ == "__main__":
    main()
