"""python -m pylth.find_ticket: find a lottery ticket in a DDPM (Algorithm 1) into a run directory.

With no arguments it runs offline on scikit-learn's bundled 8x8 ``digits`` on the CPU. The same
command on the same --out resumes, also after SIGTERM/SIGUSR1 (checkpoint written, exit 75). Under
``torchrun`` every rank trains (DDP) and rank 0 writes, holding --out's lock.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pylth.cli import ArgumentParser, run_command
from pylth.ddpm.config import DataConfig, DiffusionConfig, ModelConfig
from pylth.ddpm.data import dataset_info
from pylth.ddpm.models import DEFAULT_MODEL, model_kind
from pylth.ddpm.presets import flag_defaults
from pylth.ddpm.trainer import TrainConfig
from pylth.evaluation.config import EvalConfig
from pylth.foundations.devices import resolve_device
from pylth.foundations.distributed import init_distributed, shutdown
from pylth.foundations.environment import Environment
from pylth.foundations.hparams import add_arguments, from_args
from pylth.lottery import LotteryConfig, RunSpec, find_ticket

SECTIONS = (("data", DataConfig), ("model", ModelConfig), ("training (every round)", TrainConfig),
            ("diffusion", DiffusionConfig), ("evaluation (identical every round)", EvalConfig),
            ("lottery (Algorithm 1)", LotteryConfig))


def build_parser(dataset: str = "digits") -> argparse.ArgumentParser:
    defaults = flag_defaults(dataset, "find_ticket")
    parser = ArgumentParser(
        prog="python -m pylth.find_ticket",
        description="Find a lottery ticket in a DDPM: train dense, then prune, rewind and retrain round after "
                    f"round (Algorithm 1). Defaults shown are those of --dataset {dataset}.")
    for title, cls in SECTIONS:
        own = {k: v for k, v in defaults.items() if k in cls.__dataclass_fields__}
        add_arguments(parser.add_argument_group(title), cls, defaults=own)
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="run directory (default: ./runs/<name from the configuration>)")
    out.add_argument("--dense-from", default=None, metavar="RUN",
                     help="take round 0 (the dense model, theta_tau, its record) from the finished round 0 of "
                          "find_ticket run RUN instead of training it; RUN's settings must match except "
                          "--strategy, --reset, --prune-ratio, --increment, --cap, --target-sparsity and "
                          "--max-rounds. RUN is only read")
    out.add_argument("--force", action="store_true",
                     help="start over when --out holds a different run (the old folder is renamed aside, not deleted)")
    return parser


def _short(key: str, value) -> str:
    """``ch_mult=(1, 2, 2)`` as ``cm1.2.2``: a key of several words by its initials, a list's items by dots."""
    words = key.split("_")
    name = key if len(words) == 1 else "".join(w[0] for w in words if w)
    items = value if isinstance(value, (list, tuple)) else [value]
    return name + ".".join(f"{v:g}" if isinstance(v, float) else str(v) for v in items)


def model_label(spec: RunSpec) -> str:
    """The settings in which the run's network differs from its kind's default for the data set, short
    (``ch32-cm1.2.2-nrb1``), and its image side when resized (``14px``): '' when there are none."""
    parts = [f"{spec.data.image_size}px"] if spec.data.image_size is not None else []
    if spec.init_from is None:
        default = model_kind(spec.model_kind).config_for(spec.data.dataset, spec.image_shape)
        parts += [_short(k, v) for k, v in spec.model.items() if k in default and default[k] != v]
    return "-".join(parts)


def default_out(spec: RunSpec) -> str:
    t, lt = spec.train, spec.lottery
    model = "" if spec.model_kind == DEFAULT_MODEL else f"{spec.model_kind}-"
    if spec.init_from is not None:
        model += f"from-{os.path.basename(spec.init_from['folder'])}-"
    label = model_label(spec)
    model += f"{label}-" if label else ""
    return os.path.join("runs", f"{spec.data.dataset}-{model}{lt.strategy}-{lt.reset}-p{lt.prune_ratio:g}"
                                f"-q{lt.increment:g}-i{t.iterations}-s{t.seed}")


def _config(cls, args):
    """The dataclass of ``cls`` from ``args``; a bad value is a ValueError naming its flag."""
    try:
        return from_args(cls, args)
    except ValueError as exc:  # "batch_size must..." -> "--batch-size must..."
        field, _, rest = str(exc).partition(" ")
        if field in cls.__dataclass_fields__:
            raise ValueError(f"--{field.replace('_', '-')} {rest}") from None
        raise


def spec_from_args(args: argparse.Namespace, environment: Environment = Environment()) -> RunSpec:
    data, model, train, diffusion, evaluation, lottery = (_config(cls, args) for _, cls in SECTIONS)
    if evaluation.fid_samples < 2:
        raise ValueError(f"--fid-samples must be >= 2 (every round records FID), got {evaluation.fid_samples}")
    lottery.validate()
    info = dataset_info(data.dataset, data.data_root or environment.data_root, image_size=data.image_size)
    image_shape = tuple(info["image_shape"])
    config, init_from = model.resolve(data.dataset, image_shape)
    return RunSpec(data=data, model=config, image_shape=image_shape, train=train, diffusion=diffusion,
                   evaluation=evaluation, lottery=lottery, model_kind=model.model, init_from=init_from)


def main(argv=None, *, parts=None) -> int:
    """The command; ``parts`` replaces the Lottery's collaborators (tests)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = ArgumentParser(prog="python -m pylth.find_ticket", add_help=False)  # its errors: as the main parser's
    pre.add_argument("--dataset", default="digits")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.dataset)
    args = parser.parse_args(argv)

    def body(environment: Environment) -> None:
        spec = spec_from_args(args, environment)
        _, device = init_distributed(resolve_device(spec.train.device), environment)  # under torchrun: this rank's
        spec.train = dataclasses.replace(spec.train, device=str(device))
        find_ticket(spec, args.out or default_out(spec), force=args.force, parts=parts, dense_from=args.dense_from,
                    environment=environment)
        shutdown()

    return run_command(parser.prog, body, on_interrupt="run the same command again to resume", stops_on_signals=True)


if __name__ == "__main__":
    sys.exit(main())
