"""python -m pylth.evaluate RUN: score finished rounds of a find_ticket run again, with other evaluation
settings (more samples, Inception features, several sampling seeds), into RUN/evaluations.jsonl.

One row per (round, settings, seed): FID, KID, the features and their weights' sha1, the sampler,
seconds. Settings default to the run's own, so ``--rounds K`` alone reproduces round K's FID in
rounds.jsonl. rounds.jsonl is never rewritten and find_ticket may extend the run meanwhile; rows
already measured are skipped, so the same command resumes; a lock of its own keeps two evaluations of
one run apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from pylth import __version__
from pylth.cli import ArgumentParser, run_command
from pylth.ddpm.data import load_dataset
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.samplers import SAMPLERS
from pylth.evaluation.features import FID_FEATURES
from pylth.foundations.devices import resolve_device
from pylth.foundations.environment import Environment
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.run_reader import finished_run, load_trained
from pylth.lottery.spec import RunSpec
from pylth.studies.evaluations import (NEAR, SETTINGS, Job, append_evaluation, evaluation_lock, identity,
                                       make_row, nearest_rounds, read_evaluations)

PROG = "python -m pylth.evaluate"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def _fraction_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected sparsities in [0, 1], got {text!r}")
    return values


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="a find_ticket run directory")
    which = parser.add_argument_group("which rounds (default: every finished round)")
    which.add_argument("--rounds", type=_int_list, default=None, metavar="K,K,...", help="finished rounds to score")
    which.add_argument("--sparsity", type=_fraction_list, default=None, metavar="S,S,...",
                       help="also the finished round nearest each of these sparsities (e.g. 0.9,0.95); "
                            f"one within {100 * NEAR:g} points of each must exist")
    how = parser.add_argument_group("evaluation settings (default: the run's own)")
    how.add_argument("--seeds", type=_int_list, default=None, metavar="N,N,...",
                     help="sampling seeds, one row each (default: the run's seed, whose samples rounds.jsonl scored)")
    how.add_argument("--fid-samples", type=_at_least(2), default=None, help="samples per score")
    how.add_argument("--fid-features", choices=[f for f in FID_FEATURES if f != "auto"], default=None,
                     help="inception (the weights of pylth[inception], or --inception-path) or classifier")
    how.add_argument("--sampler", choices=tuple(SAMPLERS), default=None)
    how.add_argument("--sample-steps", type=_at_least(1), default=None)
    how.add_argument("--eta", type=float, default=None, help="DDIM eta")
    how.add_argument("--sample-batch-size", type=_at_least(1), default=None,
                     help="images per sampling block (the samples depend on it)")
    where = parser.add_argument_group("where")
    where.add_argument("--inception-path", default=None, help="clean-fid's inception-2015-12-05.pt (default: the "
                                                              "run's, $PYLTH_INCEPTION_PATH or the bundled weights)")
    where.add_argument("--cache-dir", default=None, help="FID reference statistics and classifiers (default: the run's)")
    where.add_argument("--data-root", default=None, help="the data set's folder (default: the run's)")
    where.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    return parser


def plan(run: RunDirectory, args: argparse.Namespace) -> tuple[RunSpec, list[dict], list[Job]]:
    """The run's spec, its finished rounds, and every job asked for (measured or not); bad input is a
    ValueError before anything is read twice or written."""
    spec, records = finished_run(run)
    rounds = list(args.rounds or [])
    for k in rounds:
        if k >= len(records):
            raise ValueError(f"--rounds: round {k} of {run.path} is not finished (rounds 0-{len(records) - 1} are)")
    rounds += nearest_rounds(records, args.sparsity or [])
    if args.rounds is None and args.sparsity is None:
        rounds = list(range(len(records)))
    own = spec.evaluation
    settings = {key: getattr(own, key) if getattr(args, key) is None else getattr(args, key) for key in SETTINGS}
    if settings["eta"] < 0:
        raise ValueError(f"--eta must be >= 0, got {settings['eta']}")
    seeds = args.seeds if args.seeds is not None else [spec.train.seed]
    jobs = [Job(k, seed, settings) for k in dict.fromkeys(rounds) for seed in dict.fromkeys(seeds)]
    return spec, records, jobs


def evaluate(args: argparse.Namespace, environment: Environment = Environment(), log=print) -> list[dict]:
    """Measure the jobs not yet in RUN/evaluations.jsonl; returns the rows written. Data, cache and
    Inception weights: the flags', else the run's, else the environment's."""
    from pylth.evaluation.features import resolve_fid_features
    from pylth.evaluation.fid import FidEvaluator  # scipy and clean-fid: only when needed

    run = RunDirectory(args.run)
    spec, records, jobs = plan(run, args)
    data = spec.data
    own = spec.evaluation
    where = dict(inception_path=args.inception_path or own.inception_path or environment.inception_path,
                 cache_dir=args.cache_dir or own.cache_dir or environment.cache_dir)
    for kind in {job.settings["fid_features"] for job in jobs}:  # Inception without weights: refused first
        resolve_fid_features(data.dataset, kind, where["inception_path"])
    device = resolve_device(args.device)
    with evaluation_lock(run):
        done = {identity(row) for row in read_evaluations(run)}
        todo = [job for job in jobs if job.key not in done]
        log(f"{run.path}: {len(jobs) - len(todo)} of {len(jobs)} score(s) already in evaluations.jsonl")
        if not todo:
            return []
        dataset = load_dataset(data.dataset, args.data_root or data.data_root or environment.data_root, train=True,
                               image_size=data.image_size)
        d = spec.diffusion
        diffusion = GaussianDiffusion(d.num_timesteps, d.beta_start, d.beta_end)
        written, loaded = [], {}
        evaluators, features = {}, {}  # one evaluator per distinct settings; one extractor per feature kind
        for job in todo:
            if job.round not in loaded:
                loaded = {job.round: load_trained(run.path, job.round, device)[0]}  # digests checked
            started = time.perf_counter(), time.process_time()
            s = job.settings
            key = json.dumps(s, sort_keys=True)
            if key not in evaluators:
                config = dataclasses.replace(spec.evaluation, **s, **where)
                evaluators[key] = FidEvaluator(config, data.dataset, dataset, device, diffusion,
                                               features=features.get(s["fid_features"]))
            score = evaluators[key].score(loaded[job.round], seed=job.seed)
            features.setdefault(s["fid_features"], evaluators[key].features)
            row = make_row(job, records[job.round], score, time.perf_counter() - started[0],
                           time.process_time() - started[1], __version__)
            append_evaluation(run, read_evaluations(run), row)
            written.append(row)
            log(f"round {job.round} (sparsity {100 * row['sparsity']:.2f}%), seed {job.seed}: FID ({s['fid_features']}, "
                f"{s['fid_samples']} samples) {row['fid']:.3f}, KID {row['kid']:.5f}, {row['seconds']:.0f} s")
    return written


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body(environment) -> None:
        evaluate(args, environment)

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
