"""python -m pylth.train: train a DDPM, then write DIR/checkpoint.pt, DIR/samples.png and
DIR/metrics.json (fid, fid_features, fid_weights, kid, loss). Running the same command again resumes,
also after SIGTERM/SIGUSR1 (checkpoint written, exit 75). Under torchrun every process trains (DDP) and
samples its share for FID; rank 0 writes, and holds DIR's lock."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from pylth.cli import ArgumentParser, run_command
from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.config import DataConfig, DiffusionConfig, ModelConfig
from pylth.ddpm.data import dataset_info, load_dataset
from pylth.ddpm.images import grid_png
from pylth.ddpm.models import model_kind
from pylth.ddpm.presets import flag_defaults
from pylth.ddpm.trainer import Diverged, TrainConfig, train
from pylth.evaluation.config import EvalConfig
from pylth.foundations import distributed as D
from pylth.foundations.devices import resolve_device
from pylth.foundations.environment import Environment
from pylth.foundations.hparams import add_arguments, from_args
from pylth.foundations.io import atomic_write_bytes, atomic_write_json, remove_stale_temp_files
from pylth.foundations.run_lock import DirectoryLock

SAMPLE_GRID = 64
OUT_FILES = ("config.json", "checkpoint.pt", "samples.png", "metrics.json")  # what this command writes to --out
SECTIONS = (("data", DataConfig), ("model", ModelConfig), ("training", TrainConfig), ("diffusion", DiffusionConfig),
            ("evaluation", EvalConfig))


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The full parser; ``defaults`` overrides flag defaults (the data set's: presets.flag_defaults)."""
    parser = ArgumentParser(prog="python -m pylth.train", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (checkpoint.pt, samples.png, metrics.json)")
    for title, cls in SECTIONS:
        add_arguments(parser.add_argument_group(title), cls, defaults=defaults)
    return parser


def run(args: argparse.Namespace, environment: Environment = Environment()) -> dict | None:
    """Train and evaluate; returns the metrics (None on ranks other than 0, which train and sample
    their share for FID but write nothing). Rank 0 holds --out's lock while it runs."""
    lock = DirectoryLock(args.out)
    try:
        return _run(args, lock, environment)
    finally:
        lock.release()


def _run(args: argparse.Namespace, lock: DirectoryLock, environment: Environment) -> dict | None:
    data, model_cfg, train_cfg = from_args(DataConfig, args), from_args(ModelConfig, args), from_args(TrainConfig, args)
    diff_cfg, eval_cfg = from_args(DiffusionConfig, args), from_args(EvalConfig, args)
    rank, device = D.init_distributed(resolve_device(train_cfg.device), environment)
    if eval_cfg.fid_samples:  # before any work: asking for Inception without weights is an error
        eval_cfg = eval_cfg.resolved(data.dataset, environment)
    train_cfg = dataclasses.replace(train_cfg, device=str(device))
    torch.manual_seed(train_cfg.seed)
    root = data.data_root or environment.data_root
    with D.fail_together("downloading the data set"):  # one download per machine, the others wait
        if data.download and D.is_local_main():
            load_dataset(data.dataset, root, download=True, train=True)
    dataset = load_dataset(data.dataset, root, train=True, image_size=data.image_size)
    info = dataset_info(data.dataset, root, dataset=dataset, image_size=data.image_size)
    kind = model_kind(model_cfg.model)
    model_config, init_from = model_cfg.resolve(data.dataset, info["image_shape"])
    model = kind.initial(model_config, train_cfg.seed, init_from)
    diffusion = GaussianDiffusion(diff_cfg.num_timesteps, diff_cfg.beta_start, diff_cfg.beta_end)
    with D.fail_together("opening --out"):  # one writer: a second train on the same --out is refused
        if rank == 0:
            os.makedirs(args.out, exist_ok=True)
            lock.acquire()
            remove_stale_temp_files(args.out, OUT_FILES)  # a dead writer's (kill -9 mid-write)
            atomic_write_json(dict(data=dataclasses.asdict(data), train=dataclasses.asdict(train_cfg),
                                   diffusion=dataclasses.asdict(diff_cfg), evaluation=dataclasses.asdict(eval_cfg),
                                   model_kind=kind.name, model=model_config, init_from=init_from),
                              os.path.join(args.out, "config.json"))
    start = time.time()
    try:
        result = train(model, diffusion, dataset, train_cfg, checkpoint_path=os.path.join(args.out, "checkpoint.pt"),
                       progress_desc=f"train {data.dataset}")
    except Diverged as exc:
        raise Diverged(f"{exc}. Lower --lr (or raise --warmup) and rerun: training goes on from the last good "
                       "checkpoint, if there is one", exc.iteration) from None
    metrics = dict(dataset=data.dataset, iterations=result.iterations, loss=result.loss,
                   train_seconds=round(time.time() - start, 1))
    samples = None
    if eval_cfg.fid_samples:  # every rank samples its share
        from pylth.evaluation.fid import FidEvaluator  # clean-fid and scipy: only imported when needed

        evaluator = FidEvaluator(eval_cfg, data.dataset, dataset, device, diffusion, environment=environment,
                                 progress=rank == 0)
        fid = evaluator.score(result.ema_model, seed=train_cfg.seed, return_samples=SAMPLE_GRID)
        samples = fid.pop("samples")
        metrics.update(fid, sampler=eval_cfg.sampler, sample_steps=eval_cfg.sample_steps)
    else:
        metrics.update(fid=None, fid_features=None, fid_weights=None, kid=None)
    if rank != 0:
        return None
    if samples is None or len(samples) < SAMPLE_GRID:
        samples = diffusion.sample(result.ema_model, SAMPLE_GRID, info["image_shape"], sampler=eval_cfg.sampler,
                                   steps=eval_cfg.sample_steps, eta=eval_cfg.eta, seed=train_cfg.seed,
                                   batch_size=eval_cfg.sample_batch_size, device=device)
    atomic_write_bytes(grid_png(samples), os.path.join(args.out, "samples.png"))
    atomic_write_json(metrics, os.path.join(args.out, "metrics.json"))
    return metrics


def main(argv=None) -> int:
    # The data set picks some defaults (e.g. digits' short warm-up), so read it first.
    pre = ArgumentParser(prog="python -m pylth.train", add_help=False)  # its errors: as the main parser's
    pre.add_argument("--dataset", default=DataConfig.dataset)
    parser = build_parser(flag_defaults(pre.parse_known_args(argv)[0].dataset, "train"))
    args = parser.parse_args(argv)
    for _, cls in SECTIONS:
        try:
            from_args(cls, args)
        except ValueError as exc:
            parser.error(str(exc))

    def body(environment: Environment) -> None:
        metrics = run(args, environment)
        D.shutdown()
        if metrics is not None:
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

    return run_command(parser.prog, body, on_interrupt="run the same command again to resume", stops_on_signals=True)


if __name__ == "__main__":
    sys.exit(main())
