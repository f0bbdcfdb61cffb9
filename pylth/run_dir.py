"""The run directory's layout and its atomic reads and writes (rank 0 only calls the writers).

    config.json          the configuration the rounds were run with
    rounds.jsonl         one JSON object per finished round; a round is finished once it is here
    rewind.pt            theta_tau, the state_dict the survivors rewind to
    init.pt              theta_0 (only with --reset init)
    round_XX/mask.pt     parameter name -> bool tensor, prunable weights in forward order
    round_XX/model.pt    the trained EMA state_dict, exactly zero where the mask is False
    round_XX/samples.png a grid of samples from that model
    round_XX/checkpoint.pt  mid-round training state, removed when the round finishes
    report.png           FID against sparsity, sparsity per module for every round
"""
from __future__ import annotations

import json
import os
import re
import tempfile

from pylth.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, torch_load


ROUND_DIR_FORMAT = "round_{:02d}"
_ROUND_DIR = re.compile(r"^round_(\d+)$")


class RunDirectory:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)

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

    # -- reads --------------------------------------------------------------------------------
    def read_config(self) -> dict | None:
        if not os.path.exists(self.config_path):
            return None
        with open(self.config_path, encoding="utf-8") as f:
            return json.load(f)

    def read_rounds(self) -> list[dict]:
        """The finished rounds, in order; raises ValueError when the file is not a clean 0, 1, 2... sequence."""
        if not os.path.exists(self.rounds_path):
            return []
        with open(self.rounds_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        for expected, record in enumerate(records):
            if record.get("round") != expected:
                raise ValueError(f"{self.rounds_path}: line {expected + 1} is round {record.get('round')}, "
                                 f"expected {expected}")
        return records

    def load(self, path: str):
        return torch_load(path)

    # -- writes (rank 0) ----------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_json(config, self.config_path)

    def append_round(self, records: list[dict], record: dict) -> list[dict]:
        """Finish a round: rewrite rounds.jsonl atomically with ``record`` appended."""
        records = records + [record]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), self.rounds_path)
        return records

    def save(self, obj, path: str) -> None:
        atomic_torch_save(obj, path)

    def save_bytes(self, data: bytes, path: str) -> None:
        atomic_write_bytes(data, path)
