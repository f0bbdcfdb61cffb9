"""The run directory's layout and its atomic reads and writes (rank 0 only calls the writers).

    config.json          the configuration the rounds were run with
    rounds.jsonl         one JSON object per finished round; a round is finished once it is here
    rewind.pt            theta_tau, the state_dict the survivors rewind to
    init.pt              theta_0 (only with --reset init)
    round_XX/mask.pt     parameter name -> bool tensor, prunable weights in forward order
    round_XX/model.pt    the trained EMA state_dict, exactly zero where the mask is False
    round_XX/ticket.safetensors  the same model with only its kept weights (pylth.tickets.load_sparse)
    round_XX/samples.png a grid of samples from that model
    round_XX/checkpoint.pt  mid-round training state, removed when the round finishes
    report.png           FID against sparsity, sparsity per module for every round
    .lock                held by the process writing the run (pylth.foundations.run_lock); read-only commands ignore it
    .<name>.sha256       the digest written with a file of the unfinished round (pylth.foundations.io's sidecar)

Integrity: a round's record in rounds.jsonl holds ``files``, the SHA-256 of every file the round
wrote (its round_XX folder but checkpoint.pt, and for round 0 rewind.pt / init.pt too), as paths
relative to the run directory. ``verify`` checks them before a resume and before a ticket is
loaded. Until its round is finished, a file carries its digest in a sidecar written with it;
``verify_unfinished`` checks those before a resume and before the round is committed, and the
sidecars go once rounds.jsonl holds the digests. A damaged or missing file, an unreadable line of
rounds.jsonl or a config.json without the settings every reader needs is a DamagedRunError that
names the file and says what to do, and nothing is written.
"""
from __future__ import annotations

import json
import os
import re
import tempfile

from pylth.foundations.io import (UnreadableFileError, atomic_torch_save, atomic_write_bytes, atomic_write_json,
                                  atomic_write_text, digest_path, digest_problem, remove_digest, remove_file,
                                  remove_stale_temp_files, sha256_file, torch_load)
from pylth.foundations.run_lock import DirectoryLock

ROUND_DIR_FORMAT = "round_{:02d}"
TICKET_FILE = "ticket.safetensors"  # a round's model with only its kept weights (pylth.tickets.save_sparse)
_ROUND_DIR = re.compile(r"^round_(\d+)$")
UNRECORDED_ROUND_FILES = frozenset({"checkpoint.pt"})  # mid-round state: changes, then goes
RUN_FILES_OF_ROUND_0 = ("rewind.pt", "init.pt")  # written during round 0, read by every later round
RUN_FILES = ("config.json", "rounds.jsonl", *RUN_FILES_OF_ROUND_0, "report.png")  # the writer's files at the top
CONFIG_REMEDY = "restore it from a copy, or start over with --force (the run is moved aside)"
# What every reader of a round's record uses, in every version's rounds.jsonl.
RECORD_KEYS = ("sparsity", "module_sparsity", "fid", "loss", "macs", "dense_macs", "seconds")


class DamagedRunError(UnreadableFileError):
    """A run directory file that is missing, damaged, or differs from its recorded digest: ``problem``
    says which and how, ``remedy`` what to do; the message is both."""

    def __init__(self, problem: str, remedy: str):
        super().__init__(f"{problem}. Nothing was changed: {remedy}")
        self.problem, self.remedy = problem, remedy


def redo_hint(k: int) -> str:
    """What to do about a damaged file of finished round k (README: "A damaged run directory")."""
    if k == 0:
        return ("restore it from a copy, or start over with --force (the run is moved aside, nothing is deleted): "
                "every round depends on round 0")
    return (f"restore it from a copy, or redo rounds {k} onwards: move round_{k:02d} and any later round folders "
            f"out of the run, cut rounds.jsonl to {_first_lines(k)}, and rerun")


def unfinished_hint(k: int, name: str) -> str:
    """What to delete about a damaged file ``name`` (relative to the run) of unfinished round k."""
    if name == "rewind.pt":
        return "delete it to redo round 0's training as far as the rewind point, which writes it again"
    if name == "init.pt":
        return "delete it: it is written again from the run's seed (or --init-from)"
    if name.endswith("/checkpoint.pt"):
        return f"delete it to redo round {k}'s training from its start"
    if name.endswith("/mask.pt") and k > 0:
        return (f"delete {ROUND_DIR_FORMAT.format(k)} (the whole folder) to redo round {k} from its start: its masks "
                f"are computed again from round {k - 1}'s model.pt")
    return f"delete it and rerun: round {k} writes it again"


def _first_lines(n: int) -> str:
    return "its first line" if n == 1 else f"its first {n} lines"


class RunDirectory:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._lock: DirectoryLock | None = None

    # -- layout -------------------------------------------------------------------------------
    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_path(self) -> str:
        return self.file("config.json")

    @property
    def rounds_path(self) -> str:
        return self.file("rounds.jsonl")

    @property
    def rewind_path(self) -> str:
        return self.file("rewind.pt")

    @property
    def init_path(self) -> str:
        return self.file("init.pt")

    @property
    def report_path(self) -> str:
        return self.file("report.png")

    def round_dir(self, k: int) -> str:
        return self.file(ROUND_DIR_FORMAT.format(k))

    def round_file(self, k: int, name: str) -> str:
        return os.path.join(self.round_dir(k), name)

    def rounds_holding(self, names) -> list[int]:
        """The round numbers whose round_XX folder holds every file of ``names``, ascending."""
        found = []
        for entry in (os.listdir(self.path) if os.path.isdir(self.path) else []):
            match = _ROUND_DIR.match(entry)
            if match and all(os.path.isfile(self.round_file(int(match.group(1)), n)) for n in names):
                found.append(int(match.group(1)))
        return sorted(found)

    # -- checks -------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Create the directory and prove a file can be written there, or raise ValueError naming --out."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--out {self.path} exists and is not a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as exc:
            raise ValueError(f"--out {self.path} is not writable: {exc.strerror or exc}") from None

    def has_contents(self) -> bool:
        return os.path.isdir(self.path) and any(not n.startswith(".") for n in os.listdir(self.path))

    # -- one writer ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the directory's lock (it must exist), or raise RunLocked naming the holder. Locking
        again after the folder was renamed (--force) locks the new folder and lets the old one go.
        The temp files a dead writer left (kill -9 mid-write) are removed then."""
        lock = DirectoryLock(self.path).acquire()
        if self._lock is not None:
            self._lock.release()
        self._lock = lock
        remove_stale_temp_files(self.path, RUN_FILES)  # not mixed.py's: it writes beside this writer
        for k in self.rounds_holding(()):
            remove_stale_temp_files(self.round_dir(k))

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- reads --------------------------------------------------------------------------------
    def read_config(self) -> dict | None:
        """config.json's JSON object (None when there is none): the file only. Its settings are read,
        checked and upgraded by pylth.lottery.spec.RunSpec.from_json, the one reader of them."""
        if not os.path.exists(self.config_path):
            return None
        try:
            with open(self.config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedRunError(f"{self.config_path} is damaged (not valid JSON: {exc})", CONFIG_REMEDY) from None
        if not isinstance(config, dict):
            raise DamagedRunError(f"{self.config_path} is damaged (not a JSON object)", CONFIG_REMEDY)
        return config

    def read_rounds(self) -> list[dict]:
        """The finished rounds, in order; a line that is not a record, or rounds that are not 0, 1, 2...,
        is a DamagedRunError naming the file and the line."""
        if not os.path.exists(self.rounds_path):
            return []
        with open(self.rounds_path, "rb") as f:
            lines = [line for line in f.read().split(b"\n") if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                problem = None if isinstance(record, dict) and record.get("round") == number - 1 else (
                    f"holds round {record.get('round')!r}, expected {number - 1}" if isinstance(record, dict)
                    else "is not a JSON object")
                missing = [key for key in RECORD_KEYS if problem is None and key not in record]
                if missing:
                    problem = f"lacks {', '.join(missing)}"
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problem = f"is not valid JSON ({exc})"
            if problem is not None:
                redo = (f"cut it to {_first_lines(number - 1)} to redo rounds {number - 1} onwards" if number > 1
                        else "start over with --force (the run is moved aside)")
                raise DamagedRunError(f"{self.rounds_path} is damaged: line {number} {problem}",
                                      f"restore it from a copy, or {redo}")
            records.append(record)
        return records

    def load(self, path: str, remedy: str = ""):
        """A .pt file of the run; a missing or unreadable one is an UnreadableFileError naming it."""
        return torch_load(path, remedy=remedy)

    # -- integrity ----------------------------------------------------------------------------
    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.path).replace(os.sep, "/")

    def round_digests(self, k: int) -> dict[str, str]:
        """Relative path -> SHA-256 of every file round k wrote: its folder but checkpoint.pt (and temp
        files), and for round 0 the run files it wrote (rewind.pt, init.pt)."""
        folder = self.round_dir(k)
        paths = [p for p in (os.path.join(folder, n) for n in sorted(os.listdir(folder))
                             if not n.startswith(".") and n not in UNRECORDED_ROUND_FILES) if os.path.isfile(p)]
        if k == 0:
            paths += [self.file(n) for n in RUN_FILES_OF_ROUND_0 if os.path.isfile(self.file(n))]
        return {self.relative(p): sha256_file(p) for p in paths}

    def verify(self, records: list[dict], paths=None) -> None:
        """Check files against the digests the records hold (every recorded file, or only ``paths``):
        a missing or changed file is a DamagedRunError. Rounds recorded before digests existed are
        not checked."""
        wanted = None if paths is None else {self.relative(os.path.abspath(p)) for p in paths}
        for record in records:
            for rel, digest in record.get("files", {}).items():
                if wanted is not None and rel not in wanted:
                    continue
                path, k = self.file(rel), record["round"]
                if not os.path.isfile(path):
                    problem = "is missing"
                elif sha256_file(path) != digest:
                    problem = "is damaged: its SHA-256 differs from the one rounds.jsonl records"
                else:
                    continue
                raise DamagedRunError(f"{path} (a file of finished round {k}) {problem}", redo_hint(k))

    def unfinished_files(self, k: int) -> list[str]:
        """The files of unfinished round k that carry a digest written with them: in its folder, and
        for round 0 the run files it writes."""
        folder = self.round_dir(k)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        paths = [os.path.join(folder, n) for n in names if not n.startswith(".")]
        if k == 0:
            paths += [self.file(n) for n in RUN_FILES_OF_ROUND_0]
        return [p for p in paths if os.path.isfile(p) and os.path.isfile(digest_path(p))]

    def verify_unfinished(self, k: int) -> None:
        """Check the files of unfinished round k against the digests written with them (files from
        before those digests are not checked): a changed one is a DamagedRunError saying what to delete."""
        for path in self.unfinished_files(k):
            problem = digest_problem(path)
            if problem is not None:
                raise DamagedRunError(f"{path} (a file of unfinished round {k}) is damaged: {problem}",
                                      unfinished_hint(k, self.relative(path)))

    # -- writes (rank 0) ----------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_json(config, self.config_path)

    def append_round(self, records: list[dict], record: dict) -> list[dict]:
        """Finish a round: rewrite rounds.jsonl atomically with ``record`` appended."""
        records = records + [record]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), self.rounds_path)
        return records

    def save(self, obj, path: str) -> None:
        """A file of the unfinished round, with its digest (checked on resume and before the commit)."""
        atomic_torch_save(obj, path, digest=True)

    def save_bytes(self, data: bytes, path: str, digest: bool = True) -> None:
        atomic_write_bytes(data, path, digest=digest)

    def finish_round(self, k: int) -> None:
        """After round k is in rounds.jsonl: its checkpoint goes, and the digests written with its files
        (rounds.jsonl holds them now)."""
        remove_file(self.round_file(k, "checkpoint.pt"))
        for path in self.unfinished_files(k):
            remove_digest(path)
