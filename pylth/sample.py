"""python -m pylth.sample RUN: images from a round of a find_ticket run (or a mix of rounds), or from a
ticket file, with the sparse kernels (``--dense``: the dense masked model).

The sampler, step count, eta and batch size default to the run's evaluation settings, and the seed
to the run's; images come in seeded blocks as FID's do, so by default they are the round's FID
samples (the first 64 are its samples.png). ``--mix 0:0.3,8:0.7`` gives
the first 30 % of the reverse chain to round 0 (the dense model) and the rest to round 8.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pylth.cli import ArgumentParser, run_command
from pylth.ddpm.config import DiffusionConfig
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.images import grid_png
from pylth.ddpm.model_schedule import ModelSchedule, switch_owners
from pylth.ddpm.models import model_kind
from pylth.ddpm.samplers import SAMPLERS, make_sampler, sample_blocks
from pylth.evaluation.config import EvalConfig
from pylth.foundations.devices import resolve_device
from pylth.foundations.io import atomic_write_bytes, ensure_file_writable
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.run_reader import load_trained
from pylth.lottery.spec import RunSpec
from pylth.sparse import sparsify
from pylth.tickets import read_sparse

PROG = "python -m pylth.sample"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="a find_ticket run directory, or a ticket file (save_sparse)")
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
    parser.add_argument("--dense", action="store_true",
                        help="run the dense masked model instead of the sparse one (pylth.sparse.sparsify)")
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


@dataclass
class Source:
    """What is sampled: the rounds of a run directory, or the one model of a ticket file."""

    name: str  # for the default output file
    settings: EvalConfig  # the run's evaluation: its sampler, sample_steps, eta, sample_batch_size
    diffusion: DiffusionConfig
    image_shape: tuple
    seed: int
    rounds: int  # finished rounds (a ticket file: 1)
    load: Callable  # round -> (the dense model with its masked weights, its masks)


def _run_source(path: str) -> Source:
    run_dir = RunDirectory(path)
    if not os.path.isfile(run_dir.config_path):
        raise ValueError(f"{run_dir.path} holds no find_ticket run (no config.json)")
    records = run_dir.read_rounds()
    spec = RunSpec.read(run_dir, records)  # a damaged config.json is a DamagedRunError naming it
    if not records:
        raise ValueError(f"{run_dir.path} has no finished round yet: round 0 (dense training) is still running or "
                         "was stopped; run its find_ticket command again to finish it")
    return Source(os.path.basename(run_dir.path), spec.evaluation, spec.diffusion, spec.image_shape, spec.train.seed,
                  len(records), lambda k: load_trained(run_dir.path, k))


def _ticket_source(path: str) -> Source:
    """A save_sparse file: find_ticket's record the run's sampling settings beside the model; others
    get the defaults of pylth.train."""
    ticket = read_sparse(path)
    extra = ticket.extra
    settings = EvalConfig(**extra.get("evaluation", {}))
    diffusion = DiffusionConfig(**extra.get("diffusion", {}))
    kind = model_kind(ticket.kind)
    shape = extra.get("image_shape") or (kind.image_shape(ticket.config) if kind.image_shape else None)
    if shape is None:
        raise ValueError(f"{path} does not say the image shape its {ticket.kind} model denoises")

    def load(_round):
        return ticket.dense_model(), ticket.masks

    name = os.path.splitext(os.path.basename(path))[0]
    return Source(name, settings, diffusion, tuple(shape), int(extra.get("seed", 0)), 1, load)


def run(args: argparse.Namespace) -> None:
    is_file = os.path.isfile(args.run)
    if is_file and (args.round_k is not None or args.mix is not None):
        raise ValueError(f"{args.run} is a ticket file: --round and --mix take a run directory")
    source = _ticket_source(args.run) if is_file else _run_source(args.run)
    if args.mix is not None and args.round_k is not None:
        raise ValueError("give --round or --mix, not both")
    last = source.rounds - 1
    mix = parse_mix(args.mix) if args.mix is not None else [(last if args.round_k is None else args.round_k, 1.0)]
    for k, _ in mix:
        if not 0 <= k <= last:
            finished = "only round 0 is" if last == 0 else f"rounds 0-{last} are"
            raise ValueError(f"round {k} of {args.run} is not finished ({finished})")
    for name in ("num", "steps", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    _positive("eta", args.eta, (int, float))
    ev = source.settings
    sampler_name = args.sampler or ev.sampler
    steps = args.steps if args.steps is not None else ev.sample_steps
    eta = ev.eta if args.eta is None else args.eta
    batch_size = args.batch_size or ev.sample_batch_size
    seed = source.seed if args.seed is None else args.seed
    device = resolve_device(args.device)
    d = source.diffusion
    diffusion = GaussianDiffusion(d.num_timesteps, d.beta_start, d.beta_end)
    sampler = make_sampler(sampler_name, diffusion, steps, eta=eta)
    rounds = "-".join(f"round_{k:02d}" + (f"x{f:g}" if len(mix) > 1 else "") for k, f in mix) if not is_file else ""
    stem = "-".join(filter(None, [source.name, rounds, f"{sampler_name}{len(sampler.timesteps)}", f"s{seed}"]))
    out = args.out or f"{stem}.png"
    ensure_file_writable(out, "--out")  # before the models load and the sampling runs
    if args.npz:
        ensure_file_writable(args.npz, "--npz")
    owners = switch_owners(sampler.timesteps, [f for _, f in mix])
    models, layers = [], []
    for k, _ in mix:
        model, masks = source.load(k)
        if args.dense:
            model = model.to(device)
        else:
            model = sparsify(model, masks, device=device)
            layers.append(f"round {k}: {len(model.sparsify_report.sparse)} of {len(model.sparsify_report)} "
                          "masked layers sparse")
        models.append(model)
    schedule = ModelSchedule(models, owners)
    started = time.perf_counter()
    blocks = range(-(-args.num // batch_size))
    images = sample_blocks(schedule, sampler, args.num, source.image_shape, blocks, batch_size=batch_size,
                           seed=seed, device=device, progress=True, desc="sample")
    seconds = time.perf_counter() - started
    atomic_write_bytes(grid_png(images), out)
    if args.npz:
        buffer = io.BytesIO()
        np.savez(buffer, samples=images.numpy())
        atomic_write_bytes(buffer.getvalue(), args.npz)
    kind = "dense" if args.dense else "sparse (" + "; ".join(layers) + ")"
    print(f"{args.num} images in {seconds:.2f} s ({args.num / seconds:.1f} images/s; {sampler_name}, "
          f"{len(sampler.timesteps)} steps, {rounds or source.name}, seed {seed}, {device}, {kind}); wrote {out}"
          + (f" and {args.npz}" if args.npz else ""))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda _environment: run(args))  # reads no data, cache or weights


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
