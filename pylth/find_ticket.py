"""python -m pylth.find_ticket: find a lottery ticket in a DDPM (Algorithm 1) into a run directory.

With no arguments it runs offline on scikit-learn's bundled 8x8 ``digits`` on the CPU. The same
command on the same --out resumes; see ``pylth.lottery`` for the run directory.
"""
from __future__ import annotations

import argparse
import os
import sys

from pylth.ddpm.config import add_arguments, from_args
from pylth.ddpm.data import DATASETS, dataset_info
from pylth.ddpm.trainer import TrainConfig
from pylth.lottery import EvalConfig, LotteryConfig, RunSpec, find_ticket

SAMPLERS = ("ddpm", "ddim")

# Per data set: the paper's settings for the real data sets; digits is sized so that the
# no-argument run reaches >= 80 % sparsity within minutes on two CPU cores.
DATASET_DEFAULTS = {
    "digits": dict(iterations=400, warmup=50, ema_decay=0.995, batch_size=128, checkpoint_every=100,
                   fid_samples=500, sampler="ddim", sample_steps=25, target_sparsity=0.9, max_rounds=10),
    "mnist": dict(iterations=100_000, warmup=5000, ema_decay=0.9999, batch_size=128, checkpoint_every=1000,
                  fid_samples=10_000, sampler="ddim", sample_steps=100),
    "fashion-mnist": dict(iterations=100_000, warmup=5000, ema_decay=0.9999, batch_size=128, checkpoint_every=1000,
                          fid_samples=10_000, sampler="ddim", sample_steps=100),
    "cifar10": dict(iterations=800_000, warmup=5000, ema_decay=0.9999, batch_size=128, checkpoint_every=5000,
                    fid_samples=50_000, sampler="ddpm", sample_steps=1000),
}
DATASET_DEFAULTS["cifar100"] = DATASET_DEFAULTS["cifar10"]
DATASET_DEFAULTS["folder"] = DATASET_DEFAULTS["cifar10"]


def build_parser(dataset: str = "digits") -> argparse.ArgumentParser:
    defaults = DATASET_DEFAULTS.get(dataset, DATASET_DEFAULTS["digits"])
    parser = argparse.ArgumentParser(
        prog="python -m pylth.find_ticket",
        description="Find a lottery ticket in a DDPM: train dense, then prune, rewind and retrain round after "
                    "round (Algorithm 1). Defaults shown are those of --dataset " + dataset + ".")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (default: digits, offline)")
    data.add_argument("--data-root", default=None, help="folder holding the data set's files")
    train = parser.add_argument_group("training (per round)")
    add_arguments(train, TrainConfig, defaults={k: v for k, v in defaults.items() if k in TrainConfig.__dataclass_fields__})
    lottery = parser.add_argument_group("lottery (Algorithm 1)")
    add_arguments(lottery, LotteryConfig, defaults={k: v for k, v in defaults.items() if k in LotteryConfig.__dataclass_fields__})
    ev = parser.add_argument_group("evaluation (identical every round)")
    ev.add_argument("--fid-samples", type=int, default=defaults["fid_samples"], help="samples per FID")
    ev.add_argument("--sampler", choices=SAMPLERS, default=defaults["sampler"], help="sampler for FID and samples.png")
    ev.add_argument("--sample-steps", type=int, default=defaults["sample_steps"], help="sampling steps")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="run directory (default: a folder under ./runs/ named from the configuration)")
    out.add_argument("--force", action="store_true", help="start over when --out holds a different run (the old one is renamed aside)")
    return parser


def default_out(spec: RunSpec) -> str:
    t, lt = spec.train, spec.lottery
    name = (f"{spec.dataset}-{lt.strategy}-{lt.reset}-p{lt.prune_ratio:g}-q{lt.increment:g}"
            f"-i{t.iterations}-s{t.seed}")
    return os.path.join("runs", name)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    info = dataset_info(args.dataset, args.data_root)
    from pylth.ddpm.models import build_model

    model = build_model(info["preset"], **info.get("model_overrides", {}))
    if args.fid_samples < 2:
        raise ValueError(f"--fid-samples must be >= 2, got {args.fid_samples}")
    if args.sample_steps < 1:
        raise ValueError(f"--sample-steps must be >= 1, got {args.sample_steps}")
    try:
        train = from_args(TrainConfig, args)
    except ValueError as exc:  # name the flag, not the field: "batch_size must..." -> "--batch-size must..."
        field, _, rest = str(exc).partition(" ")
        raise ValueError(f"--{field.replace('_', '-')} {rest}" if field in TrainConfig.__dataclass_fields__ else str(exc)) from None
    lottery = from_args(LotteryConfig, args)
    lottery.validate()
    return RunSpec(dataset=args.dataset, data_root=args.data_root, model=model.config,
                   image_shape=tuple(info["image_shape"]), train=train, lottery=lottery,
                   evaluation=EvalConfig(args.fid_samples, args.sampler, args.sample_steps))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="digits")
    parser = build_parser(pre.parse_known_args(argv)[0].dataset)
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
        find_ticket(spec, args.out or default_out(spec), force=args.force)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"\n{parser.prog}: interrupted; run the same command again to resume\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
