"""A run's ``evaluations.jsonl``: finished rounds scored again with other evaluation settings (more
samples, Inception features, other sampling seeds) by ``python -m pylth.evaluate``, one row per
(round, settings, seed). rounds.jsonl is never rewritten: find_ticket may extend the run meanwhile.

A row is identified by ``IDENTITY``; a row already in the file is not measured again, so an
interrupted evaluation resumes where it stopped. Rows are appended atomically (the file is rewritten
with the row added), under a lock of the evaluations' own, so two evaluations of one run do not
interleave while find_ticket keeps its own lock.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from pylth.foundations.io import atomic_write_text
from pylth.foundations.run_dir import DamagedRunError, RunDirectory
from pylth.foundations.run_lock import DirectoryLock

EVALUATIONS_FILE = "evaluations.jsonl"
EVALUATION_LOCK = ".evaluate.lock"
# What makes two scores the same measurement (the reference statistics are the run's training set).
SETTINGS = ("fid_features", "fid_samples", "sampler", "sample_steps", "eta", "sample_batch_size")
IDENTITY = ("round", "seed") + SETTINGS


@dataclass(frozen=True)
class Job:
    """One score to measure: a finished round, the sampling seed and the evaluation settings."""

    round: int
    seed: int
    settings: dict  # SETTINGS -> value

    @property
    def key(self) -> tuple:
        return identity(dict(self.settings, round=self.round, seed=self.seed))


def identity(row: dict) -> tuple:
    return tuple(json.dumps(row.get(k)) for k in IDENTITY)


def evaluations_path(run: RunDirectory) -> str:
    return run.file(EVALUATIONS_FILE)


def read_evaluations(run: RunDirectory) -> list[dict]:
    """The rows so far (none when the file does not exist); a line that is not a JSON object is a
    DamagedRunError naming the file and the line."""
    path = evaluations_path(run)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f.read().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                row = exc
            if not isinstance(row, dict):
                raise DamagedRunError(f"{path} is damaged: line {number} is not a JSON object",
                                      "restore it from a copy, or delete that line (its score is measured again)")
            rows.append(row)
    return rows


def append_evaluation(run: RunDirectory, rows: list[dict], row: dict) -> list[dict]:
    rows = rows + [row]
    atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), evaluations_path(run))
    return rows


def evaluation_lock(run: RunDirectory) -> DirectoryLock:
    return DirectoryLock(run.path, name=EVALUATION_LOCK, flag="RUN", purpose="evaluates it")


def make_row(job: Job, record: dict, score: dict, seconds: float, cpu_seconds: float, version: str) -> dict:
    """The row of ``job``: its identity, the round's sparsity, the scores and what measured them."""
    return dict(round=job.round, seed=job.seed, **job.settings, sparsity=record["sparsity"],
                fid=score["fid"], kid=score.get("kid"), fid_weights=score["fid_weights"],
                seconds=seconds, cpu_seconds=cpu_seconds, pylth=version,
                evaluated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


NEAR = 0.025  # a round this close to a target sparsity stands for it


def nearest_rounds(records: list[dict], sparsities) -> list[int]:
    """For each target sparsity, the finished round whose sparsity is nearest (the sparser on a tie); a
    ValueError naming the target when no finished round is within NEAR of it (a run still pruning
    towards it, or one that stopped short): scoring some other round in its place would mislead."""
    rounds = []
    for s in sparsities:
        k = min(range(len(records)), key=lambda k: (abs(records[k]["sparsity"] - s), -records[k]["sparsity"]))
        if abs(records[k]["sparsity"] - s) > NEAR + 1e-12:
            raise ValueError(f"--sparsity {s:g}: no finished round is within {100 * NEAR:g} points of it (the nearest "
                             f"is round {k} at {100 * records[k]['sparsity']:.2f} %)")
        rounds.append(k)
    return rounds
