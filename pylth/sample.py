"""python -m pylth.sample RUN: images from a round of a find_ticket run, or from a mix of rounds.

The sampler, step count, eta and batch size default to the run's evaluation settings, and the seed
to the run's; images come in seeded blocks as FID's do, so by default they are the round's FID
samples (the first 64 are its samples.png). ``--mix 0:0.3,8:0.7`` gives
the first 30 % of the reverse chain to round 0 (the dense model) and the rest to round 8.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from pylth.cli import run_command
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.images import grid_png
from pylth.ddpm.mixing import ModelSchedule, switch_owners
from pylth.ddpm.models import DEFAULT_MODEL, model_kind
from pylth.ddpm.samplers import SAMPLERS, make_sampler, sample_blocks
from pylth.ddpm.trainer import resolve_device
from pylth.io import atomic_write_bytes
from pylth.lottery.ticket import load_trained
from pylth.run_dir import RunDirectory

PROG = "python -m pylth.sample"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="a find_ticket run directory")
    parser.add_argument("--round", type=int, default=None, dest="round_k", metavar="K",
                        help="the round to sample (default: the last finished round)")
    parser.add_argument("--mix", default=None, metavar="K:F,...",
                        help="rounds and the fraction of the reverse chain each denoises, in chain order "
                             "(e.g. 0:0.3,8:0.7: round 0 for the first 30 %% of the steps, then round 8)")
    parser.add_argument("--num", type=int, default=64, help="images to sample (default: 64)")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=None, help="default: the run's")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's)")
    parser.add_argument("--seed", type=int, default=None, help="default: the run's (its FID samples and samples.png)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--out", default=None, metavar="FILE.png",
                        help="the PNG grid (default: ./<run>-<rounds>-<sampler><steps>-s<seed>.png)")
    parser.add_argument("--npz", default=None, metavar="FILE.npz", help="also write the raw samples in [-1, 1]")
    return parser


def parse_mix(text: str) -> list[tuple[int, float]]:
    """``"0:0.3,8:0.7"`` -> [(0, 0.3), (8, 0.7)]; malformed text is a ValueError naming --mix."""
    parts = []
    for item in text.split(","):
        round_text, sep, fraction_text = item.partition(":")
        try:
            if not sep:
                raise ValueError
            parts.append((int(round_text), float(fraction_text)))
        except ValueError:
            raise ValueError(f"--mix takes ROUND:FRACTION pairs separated by commas, e.g. 0:0.3,8:0.7; "
                             f"got {text!r}") from None
    return parts


def _positive(name: str, value, kind=int):
    if value is not None and (not isinstance(value, kind) or value < (1 if kind is int else 0)):
        raise ValueError(f"--{name} must be {'a positive int' if kind is int else 'a number >= 0'}, got {value!r}")
    return value


def run(args: argparse.Namespace) -> None:
    run_dir = RunDirectory(args.run)
    config = run_dir.read_config()
    if config is None:
        raise ValueError(f"{run_dir.path} holds no find_ticket run (no config.json)")
    finished = len(run_dir.read_rounds())
    if args.mix is not None and args.round_k is not None:
        raise ValueError("give --round or --mix, not both")
    mix = parse_mix(args.mix) if args.mix is not None else [(finished - 1 if args.round_k is None else args.round_k,
                                                             1.0)]
    for k, _ in mix:
        if not 0 <= k < finished:
            raise ValueError(f"round {k} of {run_dir.path} is not finished (rounds 0-{finished - 1} are)")
    ev = config["evaluation"]
    for name in ("num", "steps", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    _positive("eta", args.eta, (int, float))
    sampler_name = args.sampler or ev["sampler"]
    steps = args.steps if args.steps is not None else ev["sample_steps"]
    eta = ev["eta"] if args.eta is None else args.eta
    batch_size = args.batch_size or ev["sample_batch_size"]
    seed = config["train"]["seed"] if args.seed is None else args.seed
    device = resolve_device(args.device)
    d = config["diffusion"]
    diffusion = GaussianDiffusion(d["num_timesteps"], d["beta_start"], d["beta_end"])
    sampler = make_sampler(sampler_name, diffusion, steps, eta=eta)
    owners = switch_owners(sampler.timesteps, [f for _, f in mix])
    predict = model_kind(config.get("model_kind", DEFAULT_MODEL)).predict
    models = [load_trained(run_dir.path, k, device)[0] for k, _ in mix]
    schedule = ModelSchedule(models, owners, [predict] * len(models))
    rounds = "-".join(f"round_{k:02d}" + (f"x{f:g}" if len(mix) > 1 else "") for k, f in mix)
    out = args.out or f"{os.path.basename(run_dir.path)}-{rounds}-{sampler_name}{len(sampler.timesteps)}-s{seed}.png"
    started = time.perf_counter()
    blocks = range(-(-args.num // batch_size))
    images = sample_blocks(schedule, sampler, args.num, tuple(config["image_shape"]), blocks, batch_size=batch_size,
                           seed=seed, device=device, progress=True, desc="sample")
    seconds = time.perf_counter() - started
    atomic_write_bytes(grid_png(images), out)
    if args.npz:
        tmp = args.npz + ".tmp.npz"
        np.savez(tmp, samples=images.numpy())
        os.replace(tmp, args.npz)
    print(f"{args.num} images in {seconds:.2f} s ({args.num / seconds:.1f} images/s; {sampler_name}, "
          f"{len(sampler.timesteps)} steps, {rounds}, seed {seed}, {device}); wrote {out}"
          + (f" and {args.npz}" if args.npz else ""))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
