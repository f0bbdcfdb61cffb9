"""Issue 26's measurements on the U-Net a study on this CPU trains (ch 32, ch_mult (1, 2, 2), one res
block, attention at 7x7 where the model has that level: at 28x28, not at 14x14, whose levels are 16x16,
8x8 and 4x4; 1.1 M parameters), batch 64, one thread, CPU time, every case measured in alternation with
its baseline so that a drifting machine slows both alike.

**Step** (``--part step``): at 14x14 and 28x28, with layerwise masks (p = 0.2, q = 0.01, applied round
after round until the model is 95 % / 99 % sparse), one whole training step
(pylth.ddpm.trainer.train_step: loss, backward, pruned gradients zeroed, clipping at 1.0, MaskedAdam)
of the dense masked model (``--sparse-training off``) against the model ``on`` trains (every masked
layer sparse: sparsify(trainable=True), MaskedAdam on the kept values) and the one ``auto`` trains (the
layers below the training crossover). Every side starts from the same weights and computes the same
loss on the same batch, timesteps, noise and dropout. It prints sparse time / dense time (min of the
pairs, and the median of the per-pair ratios), and the share of the dense step that dropout (pylth's
keyed dropout, issue 27: one pass in the forward and one in the backward per layer, the same in both
steps) takes.

**Kernels** (``--part kernels``): the issue's table: 3x3 convs of 64 -> 64 at 14x14 and 7x7 and of
32 -> 32 at 14x14, batch 64, uniform random masks at 95 % and 99 %: torch's dense conv forward and the
two parts of its backward (aten.convolution_backward asked for the input or the weight gradient only),
pylth's sparse forward, input gradient, weight gradient and both in one pass, the same with no kept
weight (what does not scale with the kept weights: the copy of the input into slabs, the output's
stores, the tiles' loops, the call), and one copy of the input (``copy_`` into an existing tensor, and
``clone``).

With ``--cpu-isa avx512 avx2`` the steps of both CPU paths alternate in one run (each path's sparse
steps against its own dense step: MaskedAdam and keyed dropout have per-path kernels too).

    OMP_NUM_THREADS=1 python bench/sparse_train_small_unet.py [--part step kernels] [--pairs 8]
        [--cpu-isa avx512 avx2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import pylth
from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.models.dropout import KeyedDropout
from pylth.ddpm.models.unet import UNet, level_sizes
from pylth.ddpm.trainer import train_step
from pylth.ddpm.trainer.sparse import sparse_layers, training_module
from pylth.ops import set_cpu_isa
from pylth.ops.dropout import keyed_dropout
from pylth.ops.sparse_conv import compress_weight, sparse_conv2d
from pylth.ops.sparse_grad import sparse_conv2d_backward, sparse_conv2d_grad_input, sparse_conv2d_grad_weight
from pylth.optim import masked_adam_for
from pylth.pruning import apply_masks, compute_masks

BATCH = 64
SIZES = (14, 28)
SPARSITIES = (0.95, 0.99)
SETTINGS = ("off", "on", "auto")  # --sparse-training


def small_unet(size: int) -> UNet:
    attention = tuple(r for r in (7,) if r in level_sizes(size, 3))  # the model refuses a level it never reaches
    return UNet(in_channels=1, image_size=size, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                attn_resolutions=attention, dropout=0.1)


def layerwise_masks(model: nn.Module, sparsity: float) -> tuple:
    """Layerwise masks (p = 0.2, q = 0.01) applied round after round until at least ``sparsity``; and
    the sparsity reached."""
    masks = None
    while True:
        masks = compute_masks(model, "layerwise", 0.2, 0.01, masks=masks)
        kept = sum(int(m.sum()) for m in masks.values())
        reached = 1 - kept / sum(m.numel() for m in masks.values())
        if reached >= sparsity:
            return masks, reached


def step_case(size: int, sparsity: float, setting: str):
    """(one training step returning its loss, the trained module, the sparsity reached)."""
    torch.manual_seed(0)
    model = small_unet(size)
    masks, reached = layerwise_masks(model, sparsity)
    apply_masks(model, masks)
    net, net_masks = training_module(model.train(), masks, setting, batch_size=BATCH)
    optimizer = masked_adam_for(net, net_masks, lr=2e-4)
    named = dict(net.named_parameters())
    pruned = [(named[name], ~mask) for name, mask in net_masks.items()]
    params = list(net.parameters())
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(BATCH, 1, size, size, generator=g) * 2 - 1
    t, noise = torch.randint(0, 1000, (BATCH,), generator=g), torch.randn(BATCH, 1, size, size, generator=g)
    diffusion = GaussianDiffusion()

    def step():
        torch.manual_seed(2)  # the same dropout on every side
        return float(train_step(net, diffusion, x0, optimizer, params, pruned, 1.0, False, t, noise)[0])

    return step, net, reached


def dropout_shapes(net: nn.Module, step) -> list:
    """The input shapes of the dropout layers of one training step."""
    shapes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape)))
             for m in net.modules() if isinstance(m, KeyedDropout)]
    step()
    for h in hooks:
        h.remove()
    return shapes


def alternate(fns: dict, rounds: int) -> dict:
    """name -> CPU seconds of each of ``rounds`` calls, the names taken in turn."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return times


def on_path(path: str, fn):
    """fn, run with pylth's kernels on CPU path ``path`` (csrc/cpu_dispatch.h)."""
    def call():
        set_cpu_isa(path)
        return fn()
    return call


def run_steps(pairs: int, paths: list) -> None:
    print(f"Training step, batch {BATCH}, {torch.get_num_threads()} thread(s), CPU time, {pairs} alternating rounds "
          f"(off, on, auto on each CPU path: {', '.join(paths)}); sparse / dense of the same path: min (median of "
          f"the rounds' ratios)")
    for size in SIZES:
        for sparsity in SPARSITIES:
            cases, fns = {}, {}
            for path in paths:  # fresh models per path: every side starts from the same weights
                set_cpu_isa(path)
                for s in SETTINGS:
                    cases[s, path] = step_case(size, sparsity, s)
                    fns[s, path] = on_path(path, cases[s, path][0])
            losses = {key: fn() for key, fn in fns.items()}  # warm-up; every side computes the same loss
            first = losses["off", paths[0]]
            assert all(abs(loss - first) <= 1e-4 * abs(first) for loss in losses.values()), losses
            shapes = dropout_shapes(cases["off", paths[0]][1], fns["off", paths[0]])
            dropout_inputs = [torch.randn(shape) for shape in shapes]

            def dropout_passes():  # the forward's pass and the backward's, per layer
                for x in dropout_inputs:
                    keyed_dropout(x, 0.1, 1)
                    keyed_dropout(x, 0.1, 1)

            fns.update({("dropout", path): on_path(path, dropout_passes) for path in paths})
            times = alternate(fns, pairs)
            for path in paths:
                dense = times["off", path]
                cells = []
                for s in ("on", "auto"):
                    ratios = [a / b for a, b in zip(times[s, path], dense)]
                    cells.append(f"{s} {min(times[s, path]) / min(dense):.3f} ({statistics.median(ratios):.3f}), "
                                 f"{len(sparse_layers(cases[s, path][1]))} layers sparse")
                print(f"{size}x{size} at {100 * cases['off', path][2]:.2f} %, {path}: dense {1e3 * min(dense):.1f} ms; "
                      + "; ".join(cells) + f"; keyed dropout {min(times['dropout', path]) / min(dense):.3f} of the "
                      "dense step", flush=True)


KERNEL_LAYERS = ((64, 64, 14), (64, 64, 7), (32, 32, 14))


def kernel_functions(ci: int, co: int, size: int, density: float) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, ci, size, size, generator=gen)
    weight = torch.randn(co, ci, 3, 3, generator=gen) / (9 * ci * density) ** 0.5
    mask = torch.rand(weight.shape, generator=gen) < density
    masked = weight * mask
    grad_out = torch.randn(BATCH, co, size, size, generator=gen)
    sparse = compress_weight(weight, mask)
    empty = compress_weight(weight, torch.zeros_like(mask))
    copy = torch.empty_like(x)

    def torch_backward(which):
        return lambda: torch.ops.aten.convolution_backward(grad_out, x, masked, None, [1, 1], [1, 1], [1, 1], False,
                                                           [0, 0], 1, which)

    return {
        "dense fwd": lambda: F.conv2d(x, masked, None, 1, 1),
        "dense grad-input": torch_backward([True, False, False]),
        "dense grad-weight": torch_backward([False, True, False]),
        "sparse fwd": lambda: sparse_conv2d(x, sparse, None, 1, 1),
        "grad-input": lambda: sparse_conv2d_grad_input(grad_out, sparse, x.shape, 1, 1),
        "grad-weight": lambda: sparse_conv2d_grad_weight(x, grad_out, sparse, 1, 1),
        "both": lambda: sparse_conv2d_backward(x, grad_out, sparse, 1, 1),
        "fwd, none kept": lambda: sparse_conv2d(x, empty, None, 1, 1),
        "both, none kept": lambda: sparse_conv2d_backward(x, grad_out, empty, 1, 1),
        "copy_": lambda: copy.copy_(x),
        "clone": lambda: x.clone(),
    }


def run_kernels(rounds: int) -> None:
    print(f"\nKernels, batch {BATCH}, 3x3, stride 1, padding 1, {torch.get_num_threads()} thread(s), CPU time, "
          f"min of {rounds} rounds taken in turn; ms, and multiples of one copy_ of the input")
    for ci, co, size in KERNEL_LAYERS:
        for sparsity in SPARSITIES:
            fns = kernel_functions(ci, co, size, 1 - sparsity)
            for fn in fns.values():  # warm-up: plans, allocations
                fn()
            best = {name: min(t) for name, t in alternate(fns, rounds).items()}
            copy = best["copy_"]
            sparse_cells = " ".join(f"{n} {1e3 * best[n]:.3f} ({best[n] / copy:.1f}x)"
                                    for n in ("sparse fwd", "grad-input", "grad-weight", "both", "fwd, none kept",
                                              "both, none kept"))
            pairs = (("fwd", "sparse fwd"), ("grad-input", "grad-input"), ("grad-weight", "grad-weight"))
            dense_cells = ", ".join(f"{d} {best['dense ' + d] / best[s]:.1f}x" for d, s in pairs)
            print(f"{ci}->{co} {size}x{size} at {100 * sparsity:.0f} %: dense fwd {1e3 * best['dense fwd']:.3f}, "
                  f"grad-input {1e3 * best['dense grad-input']:.3f}, grad-weight {1e3 * best['dense grad-weight']:.3f}; "
                  f"{sparse_cells}; copy_ {1e3 * copy:.3f}, clone {1e3 * best['clone']:.3f}; dense / sparse: "
                  f"{dense_cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["step", "kernels"], choices=["step", "kernels"])
    parser.add_argument("--pairs", type=int, default=8, help="alternating rounds of the steps (default 8)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the kernels (default 30)")
    supported = pylth.build_info()["cpu_isa_supported"]
    parser.add_argument("--cpu-isa", nargs="+", default=[pylth.build_info()["cpu_isa"]], choices=supported,
                        help="CPU paths of pylth's kernels to time the steps on, alternating (default: the active one)")
    args = parser.parse_args()
    if args.pairs < 1 or args.rounds < 1:
        parser.error("--pairs and --rounds must be >= 1")
    if "step" in args.part:
        start_path = pylth.build_info()["cpu_isa"]
        run_steps(args.pairs, args.cpu_isa)
        set_cpu_isa(start_path)
    if "kernels" in args.part:
        run_kernels(args.rounds)


if __name__ == "__main__":
    main()
