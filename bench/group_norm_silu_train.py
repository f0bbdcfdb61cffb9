"""GroupNorm + SiLU for training: pylth's fused pass (pylth.ops.group_norm_silu, forward keeping mean,
1/std and the sigmoid; one native backward) against torch's F.group_norm then F.silu with autograd, on
the activations of the U-Net of issue 26 (batch 64, 32 groups), forward and backward timed apart, the
two taken in turn. CPU time, min of the rounds.

    OMP_NUM_THREADS=1 python bench/group_norm_silu_train.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pylth.ops.group_norm_silu import group_norm_silu

SHAPES = ((64, 32, 28, 28), (64, 64, 14, 14), (64, 64, 7, 7), (64, 128, 7, 7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    print(f"{torch.get_num_threads()} thread(s), CPU time, min of {args.rounds} rounds; ms, and torch / pylth")
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).requires_grad_()
        weight, bias = torch.randn(shape[1], generator=gen).requires_grad_(), torch.randn(shape[1], generator=gen)
        grad_out = torch.randn(shape, generator=gen)
        sides = {"pylth": lambda: group_norm_silu(x, 32, weight, bias),
                 "torch": lambda: F.silu(F.group_norm(x, 32, weight, bias))}
        best = {(side, part): float("inf") for side in sides for part in ("forward", "backward")}
        for _ in range(args.rounds + 1):  # the first round warms up
            for side, forward in sides.items():
                x.grad = weight.grad = None
                start = time.process_time()
                y = forward()
                middle = time.process_time()
                y.backward(grad_out)
                end = time.process_time()
                best[side, "forward"] = min(best[side, "forward"], middle - start)
                best[side, "backward"] = min(best[side, "backward"], end - middle)
        cells = "; ".join(f"{part} pylth {1e3 * best['pylth', part]:.3f} torch {1e3 * best['torch', part]:.3f} "
                          f"({best['torch', part] / best['pylth', part]:.2f}x)" for part in ("forward", "backward"))
        total = sum(best["torch", p] for p in ("forward", "backward")) / sum(best["pylth", p] for p in ("forward", "backward"))
        print(f"{shape}: {cells}; both {total:.2f}x", flush=True)


if __name__ == "__main__":
    main()
