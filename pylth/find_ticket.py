"""python -m pylth.find_ticket: find a lottery ticket in a DDPM (Algorithm 1) into a run directory.

With no arguments it runs offline on scikit-learn's bundled 8x8 ``digits`` on the CPU. The same
command on the same --out resumes. Under ``torchrun`` every rank trains (DDP) and rank 0 writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pylth.cli import run_command
from pylth.ddpm.config import DataConfig, DiffusionConfig, EvalConfig, add_arguments, dataset_defaults, from_args
from pylth.ddpm.data import dataset_info
from pylth.ddpm.models import build_model
from pylth.ddpm.trainer import TrainConfig, resolve_device
from pylth.lottery import LotteryConfig, RunSpec, find_ticket
from pylth.distributed import init_distributed, shutdown

# Defaults per data set (over pylth.train's). digits is the offline demo, sized so that the run without
# arguments reaches >= 80 % sparsity in minutes on two CPU cores (short rounds: a higher lr, a short
# warm-up, target 90 %); the others use the paper's settings (Ho et al.'s training, Algorithm 1's
# delta = 99 % and 25 rounds, FID on 50k samples for CIFAR).
PAPER = dict(iterations=800_000, warmup=5000, ema_decay=0.9999, batch_size=128, checkpoint_every=5000,
             fid_samples=50_000, sampler="ddpm", sample_steps=1000)
DATASET_DEFAULTS = {
    "digits": dict(iterations=300, lr=1e-3, warmup=30, ema_decay=0.99, batch_size=64, checkpoint_every=100,
                   fid_samples=256, sampler="ddim", sample_steps=20, target_sparsity=0.9),
    "mnist": dict(PAPER, iterations=100_000, fid_samples=10_000),
    "fashion-mnist": dict(PAPER, iterations=100_000, fid_samples=10_000),
    "cifar10": PAPER,
    "cifar100": PAPER,
    "folder": PAPER,
}
SECTIONS = (("data", DataConfig), ("training (every round)", TrainConfig),
            ("diffusion", DiffusionConfig), ("evaluation (identical every round)", EvalConfig),
            ("lottery (Algorithm 1)", LotteryConfig))


def build_parser(dataset: str = "digits") -> argparse.ArgumentParser:
    defaults = {**dataset_defaults(dataset), **DATASET_DEFAULTS.get(dataset, DATASET_DEFAULTS["digits"])}
    parser = argparse.ArgumentParser(
        prog="python -m pylth.find_ticket",
        description="Find a lottery ticket in a DDPM: train dense, then prune, rewind and retrain round after "
                    f"round (Algorithm 1). Defaults shown are those of --dataset {dataset}.")
    for title, cls in SECTIONS:
        own = {k: v for k, v in defaults.items() if k in cls.__dataclass_fields__}
        add_arguments(parser.add_argument_group(title), cls, defaults=own)
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="run directory (default: ./runs/<name from the configuration>)")
    out.add_argument("--force", action="store_true",
                     help="start over when --out holds a different run (the old folder is renamed aside, not deleted)")
    return parser


def default_out(spec: RunSpec) -> str:
    t, lt = spec.train, spec.lottery
    return os.path.join("runs", f"{spec.data.dataset}-{lt.strategy}-{lt.reset}-p{lt.prune_ratio:g}-q{lt.increment:g}"
                                f"-i{t.iterations}-s{t.seed}")


def _config(cls, args):
    """The dataclass of ``cls`` from ``args``; a bad value is a ValueError naming its flag."""
    try:
        return from_args(cls, args)
    except ValueError as exc:  # "batch_size must..." -> "--batch-size must..."
        field, _, rest = str(exc).partition(" ")
        if field in cls.__dataclass_fields__:
            raise ValueError(f"--{field.replace('_', '-')} {rest}") from None
        raise


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    data, train, diffusion, evaluation, lottery = (_config(cls, args) for _, cls in SECTIONS)
    if evaluation.fid_samples < 2:
        raise ValueError(f"--fid-samples must be >= 2 (every round records FID), got {evaluation.fid_samples}")
    lottery.validate()
    info = dataset_info(data.dataset, data.data_root)
    model = build_model(info["preset"], **info.get("model_overrides", {}))
    return RunSpec(data=data, model=model.config, image_shape=tuple(info["image_shape"]), train=train,
                   diffusion=diffusion, evaluation=evaluation, lottery=lottery)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="digits")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.dataset)
    args = parser.parse_args(argv)

    def body() -> None:
        spec = spec_from_args(args)
        _, device = init_distributed(resolve_device(spec.train.device))  # under torchrun: this rank's device
        spec.train = dataclasses.replace(spec.train, device=str(device))
        find_ticket(spec, args.out or default_out(spec), force=args.force)
        shutdown()

    return run_command(parser.prog, body, on_interrupt="run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
