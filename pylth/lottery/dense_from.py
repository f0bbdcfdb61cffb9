"""--dense-from RUN: a run that takes RUN's finished round 0 (the dense model, theta_tau, theta_0 where
RUN kept it, and the round's record) instead of training its own.

Arms of a study that differ only in how they prune (ARM_SETTINGS) then start from the same dense
model and pay for one dense round. RUN is only read, without its lock: round 0's files never change
once its record is in rounds.jsonl, so RUN may go on with later rounds meanwhile. Every file is
checked against the digest RUN recorded, before and after it is copied.
"""
from __future__ import annotations

import os

from pylth.foundations.io import atomic_write_bytes, sha256_file
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.spec import RunSpec, config_differences

# What may differ between RUN and the new run: how the rounds after round 0 prune and reset, and how
# far they go. Everything else (data, model, training, diffusion, evaluation, rewind point, held-out
# set) made round 0 and must match.
ARM_SETTINGS = frozenset({"lottery.strategy", "lottery.reset", "lottery.prune_ratio", "lottery.increment",
                          "lottery.cap", "lottery.target_sparsity", "lottery.max_rounds"})


def read_source(source: str, spec: RunSpec) -> tuple[RunDirectory, dict]:
    """RUN's directory and its round-0 record, once RUN is known to hold a finished round 0 made with the
    settings of ``spec`` that round 0 depends on; otherwise a ValueError naming --dense-from and, for
    settings, every difference in one message."""
    run = RunDirectory(source)
    if not os.path.isfile(run.config_path):
        raise ValueError(f"--dense-from {run.path} holds no find_ticket run (no config.json of one)")
    records = run.read_rounds()
    if not records:
        raise ValueError(f"--dense-from {run.path} has not finished round 0 yet")
    old = RunSpec.read(run, records)
    differences = config_differences(old.to_json(), spec.to_json(), ignore=ARM_SETTINGS)
    if differences:
        raise ValueError(f"--dense-from {run.path} trained its round 0 with other settings than this run's ("
                         + "; ".join(differences) + "); only " + ", ".join(
                             "--" + k.split(".")[1].replace("_", "-") for k in sorted(ARM_SETTINGS)) + " may differ")
    return run, records[0]


def adopt_round_zero(run: RunDirectory, source: str, spec: RunSpec) -> dict:
    """Copy RUN's round-0 files into ``run`` (rank 0, holding ``run``'s lock) and return the round-0
    record for ``run``: RUN's, with ``dense_from`` = {path, files} saying where it came from."""
    origin, record = read_source(source, spec)
    files = record.get("files")
    if not files:
        raise ValueError(f"--dense-from {origin.path}: its round 0 records no file digests (a run made before "
                         "pylth recorded them), so its files cannot be checked; rerun round 0 instead")
    origin.verify([record])  # a damaged file of RUN is a DamagedRunError naming it
    for rel, digest in files.items():
        with open(origin.file(rel), "rb") as f:
            data = f.read()
        target = run.file(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        atomic_write_bytes(data, target)
        if sha256_file(target) != digest:  # changed between the check and the read, or on the way
            raise ValueError(f"--dense-from {origin.file(rel)} changed while it was copied; rerun")
    return dict(record, dense_from=dict(path=origin.path, files=dict(files)))


def check_adopted(record: dict, source: str | None) -> None:
    """A resumed run's round 0 must be the one --dense-from names, when it names one."""
    if source is None:
        return
    recorded = (record.get("dense_from") or {}).get("path")
    wanted = os.path.abspath(source)
    if recorded != wanted:
        where = f"was taken from {recorded}" if recorded else "was trained by this run"
        raise ValueError(f"--dense-from {wanted}: round 0 of this run {where}; drop --dense-from, or use another --out")
