"""The paper's open question as an experiment: a reverse chain that switches between the dense model
(round 0) and a ticket at a switch point F, measured by FID and cost.

Order ``dense-first`` denoises the first fraction F of the chain's steps with the dense model and the
rest with the ticket; ``ticket-first`` is the reverse, the control. Every point is sampled with the
run's own evaluation (sampler, steps, eta, sample count, batch size, feature kind and reference
statistics) and, by default, its seed, so the end points reproduce rounds.jsonl: dense-first at
F = 1 is round 0's FID, at F = 0 the ticket round's. Cost: MACs per image over the whole chain
(each step costs its model's MACs, from rounds.jsonl) and the measured seconds per image of one
chain run with the sparse kernels (pylth.sparse.sparsify). FID itself is computed on the dense masked
models, whose samples are the ones rounds.jsonl scored.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import asdict, dataclass, fields

from pylth.ddpm.data import load_dataset
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.model_schedule import ModelSchedule, switch_owners
from pylth.ddpm.samplers import make_sampler, sample
from pylth.evaluation.fid import FidEvaluator
from pylth.foundations.environment import Environment
from pylth.foundations.io import atomic_write_text
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.run_reader import load_trained
from pylth.lottery.spec import RunSpec
from pylth.sparse import sparsify

ORDERS = ("dense-first", "ticket-first")
TIMING_IMAGES = 64  # images in the timed chain of every point


@dataclass
class MixedRow:
    """One measured point; (ticket_round, order, switch_point, seed) identifies it in mixed.csv."""

    ticket_round: int
    order: str
    switch_point: float
    seed: int
    fid: float
    fid_features: str
    fid_samples: int
    kid: float
    dense_steps: int  # steps of the chain the dense model denoised
    ticket_steps: int
    chain_macs: int  # MACs per image over the whole chain
    dense_chain_macs: int  # the same for the dense model alone
    seconds: float  # sampling and feature extraction of the FID samples (the dense masked models)
    seconds_per_image: float = math.nan  # one chain of TIMING_IMAGES images with the sparse kernels, per image

    @property
    def key(self) -> tuple:
        return (self.ticket_round, self.order, round(self.switch_point, 9), self.seed)


def chain_parts(order: str, switch_point: float) -> tuple[tuple[str, str], list[float]]:
    """The models in chain order and their fractions of the chain."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if isinstance(switch_point, bool) or not isinstance(switch_point, (int, float)) or not 0 <= switch_point <= 1:
        raise ValueError(f"switch points must lie in [0, 1], got {switch_point!r}")
    first, second = ("dense", "ticket") if order == "dense-first" else ("ticket", "dense")
    return (first, second), [float(switch_point), 1.0 - float(switch_point)]


def read_rows(path: str) -> list[MixedRow]:
    """mixed.csv's rows (none when it does not exist); a damaged file is a ValueError naming it."""
    if not os.path.exists(path):
        return []
    kinds = {f.name: f.type for f in fields(MixedRow)}
    casts = {"int": int, "float": float, "str": str}
    try:
        with open(path, newline="", encoding="utf-8") as f:  # columns added later keep their defaults
            return [MixedRow(**{k: casts[kinds[k]](v) for k, v in row.items() if v != ""})
                    for row in csv.DictReader(f)]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a mixed.csv this version wrote ({exc}); move it away to start over") from None


def write_rows(rows: list[MixedRow], path: str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(MixedRow)], lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.key):
        writer.writerow(asdict(row))
    atomic_write_text(buffer.getvalue(), path)


class MixedExperiment:
    """The dense model of ``dense_run`` (default: the run itself) against the tickets of ``run``."""

    def __init__(self, run_dir: str, *, dense_run: str | None = None, device="cpu", log=print,
                 environment: Environment = Environment()):
        self.run = RunDirectory(run_dir)
        if not os.path.isfile(self.run.config_path):
            raise ValueError(f"{self.run.path} holds no find_ticket run (no config.json)")
        self.records = self.run.read_rounds()
        self.spec = RunSpec.read(self.run, self.records)
        self.dense_run = RunDirectory(dense_run or run_dir)
        if dense_run is not None:
            if not os.path.isfile(self.dense_run.config_path):
                raise ValueError(f"--dense-from {self.dense_run.path} holds no find_ticket run (no config.json)")
            self.dense_records = self.dense_run.read_rounds()
            other = RunSpec.read(self.dense_run, self.dense_records)
            for key in ("model_kind", "model", "diffusion", "image_shape"):
                if getattr(other, key) != getattr(self.spec, key):
                    raise ValueError(f"--dense-from {self.dense_run.path} has another {key} than {self.run.path}: "
                                     "the two models must be the same network")
        else:
            self.dense_records = self.records
        if not self.dense_records:
            raise ValueError(f"{self.dense_run.path} has no finished round 0 (the dense model)")
        self.device, self.log, self.environment = device, log, environment
        d = self.spec.diffusion
        self.diffusion = GaussianDiffusion(d.num_timesteps, d.beta_start, d.beta_end)
        self.csv_path = self.run.file("mixed.csv")
        self._dense = None
        self._dataset = None
        self._evaluator = None
        self._sparse: dict[int, object] = {}  # round -> its sparsified model, for the timed chains

    def check_round(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(self.records):
            raise ValueError(f"--rounds: round {k} of {self.run.path} is not a finished pruning round "
                             f"(rounds 1-{len(self.records) - 1} are)")
        return k

    @property
    def dense_model(self):
        if self._dense is None:
            self._dense = load_trained(self.dense_run.path, 0, self.device)[0]
        return self._dense

    @property
    def dataset(self):
        if self._dataset is None:
            data = self.spec.data
            self._dataset = load_dataset(data.dataset, data.data_root or self.environment.data_root, train=True,
                                         image_size=data.image_size)
        return self._dataset

    @property
    def evaluator(self) -> FidEvaluator:
        """The run's own FID measurement (its settings, features and reference statistics), built once."""
        if self._evaluator is None:
            self._evaluator = FidEvaluator(self.spec.evaluation, self.spec.data.dataset, self.dataset, self.device,
                                           self.diffusion, environment=self.environment, progress=False)
        return self._evaluator

    def run_points(self, rounds, switch_points, orders, seeds) -> list[MixedRow]:
        """Every (round, order, switch point, seed) not already in mixed.csv, measured and appended as
        it finishes (so an interrupted experiment resumes); returns all rows."""
        for k in rounds:
            self.check_round(k)
        for order in orders:
            for f in switch_points:
                chain_parts(order, f)  # checks both before any work
        rows = read_rows(self.csv_path)
        done = {r.key for r in rows}
        todo = [(k, o, float(f), s) for k in rounds for o in orders for f in switch_points for s in seeds
                if (k, o, round(float(f), 9), s) not in done]
        self.log(f"{len(todo)} point(s) to measure, {len(rows)} already in {self.csv_path}")
        for i, (k, order, f, seed) in enumerate(todo):
            ticket, masks = load_trained(self.run.path, k, self.device)
            if k not in self._sparse:
                self._sparse[k] = sparsify(ticket, masks, device=self.device)
            row = self.measure(k, ticket, order, f, seed)
            rows.append(row)
            write_rows(rows, self.csv_path)
            self.log(f"[{i + 1}/{len(todo)}] round {k}, {order}, F = {f:g}, seed {seed}: FID {row.fid:.3f}, "
                     f"{100 * row.chain_macs / row.dense_chain_macs:.1f}% of the dense chain's MACs, "
                     f"{1000 * row.seconds_per_image:.2f} ms per image with the sparse kernels")
        return rows

    def measure(self, k: int, ticket, order: str, switch_point: float, seed: int) -> MixedRow:
        ev = self.spec.evaluation
        names, fractions = chain_parts(order, switch_point)
        sampler = make_sampler(ev.sampler, self.diffusion, ev.sample_steps, eta=ev.eta)
        owners = switch_owners(sampler.timesteps, fractions)
        models = {"dense": self.dense_model, "ticket": ticket}
        schedule = ModelSchedule([models[n] for n in names], owners)
        started = time.perf_counter()
        fid = self.evaluator.score(schedule, seed=seed)
        seconds = time.perf_counter() - started
        sparse = {"dense": self.dense_model, "ticket": self._sparse.get(k, ticket)}  # round 0 has no sparse layer
        timed = ModelSchedule([sparse[n] for n in names], owners)
        started = time.perf_counter()
        sample(timed, sampler, TIMING_IMAGES, self.spec.image_shape, seed=seed, batch_size=TIMING_IMAGES,
               device=self.device, progress=False)
        seconds_per_image = (time.perf_counter() - started) / TIMING_IMAGES
        steps = {name: sum(1 for owner in owners.values() if names[owner] == name) for name in ("dense", "ticket")}
        dense_macs = self.dense_records[0]["dense_macs"]
        ticket_macs = self.records[k]["macs"]
        return MixedRow(ticket_round=k, order=order, switch_point=switch_point, seed=seed, fid=fid["fid"],
                        fid_features=fid["fid_features"], fid_samples=fid["num_samples"], kid=fid["kid"],
                        dense_steps=steps["dense"], ticket_steps=steps["ticket"],
                        chain_macs=steps["dense"] * dense_macs + steps["ticket"] * ticket_macs,
                        dense_chain_macs=len(sampler.timesteps) * dense_macs, seconds=seconds,
                        seconds_per_image=seconds_per_image)


def summarize(rows: list[MixedRow]) -> dict:
    """(ticket round, order, switch point) -> (mean FID, sample std over seeds, seed count, mean chain MACs,
    the fastest of its timed chains in seconds per image: the least disturbed by other work)."""
    groups: dict[tuple, list[MixedRow]] = {}
    for r in rows:
        groups.setdefault((r.ticket_round, r.order, round(r.switch_point, 9)), []).append(r)
    out = {}
    for key, members in sorted(groups.items()):
        fids = [m.fid for m in members]
        mean = sum(fids) / len(fids)
        std = math.sqrt(sum((x - mean) ** 2 for x in fids) / (len(fids) - 1)) if len(fids) > 1 else 0.0
        timed = [m.seconds_per_image for m in members if not math.isnan(m.seconds_per_image)]
        out[key] = (mean, std, len(fids), sum(m.chain_macs for m in members) / len(members),
                    min(timed) if timed else math.nan)
    return out
