"""The published studies agree with their records: docs/results-fashion-mnist.md quotes the tables
`run.sh publish` wrote (pylth.compare's compare.md, pylth.cka's summary.txt) and those that
results/fashion-mnist/tables.py prints from the records, line for line; its table of rounds is
rounds.jsonl, rounded (read here without tables.py); the records are small and hold no weights."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(REPO_ROOT, "results", "fashion-mnist")
PAGE = os.path.join(REPO_ROOT, "docs", "results-fashion-mnist.md")
ARMS = {"A": "A-layerwise-rewind", "B": "B-uniform-rewind", "C": "C-global-rewind", "D": "D-layerwise-reinit",
        "E": "E-random-rewind", "F": "F-layerwise-rewind-seed1", "G": "G-dense-retrained"}


def page_lines() -> set[str]:
    with open(PAGE, encoding="utf-8") as f:
        return {line.rstrip("\n") for line in f}


def published(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(STUDY, pattern)))


def quoted_lines(path: str, table_only: bool) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return [line for line in lines if line.startswith("|")] if table_only else [line for line in lines if line]


@pytest.mark.parametrize("path", published("compare-*/compare.md") + published("cka*/summary.txt"),
                         ids=lambda p: os.path.relpath(p, STUDY))
def test_the_page_quotes_each_published_table_line_for_line(path):
    wanted = quoted_lines(path, table_only=path.endswith(".md"))
    quoted = page_lines()  # read once
    missing = [line for line in wanted if line not in quoted]
    assert wanted and not missing, f"{PAGE} does not quote {path}: {missing[:2]}"


def test_the_page_quotes_every_table_that_tables_py_prints():
    printed = subprocess.run([sys.executable, os.path.join(STUDY, "tables.py")], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    wanted = [line for line in printed.splitlines() if line.startswith("|")]
    quoted = page_lines()  # read once
    missing = [line for line in wanted if line not in quoted]
    assert len(wanted) > 20 and not missing, f"{PAGE} does not quote tables.py's lines: {missing[:2]}"


def rounds_table() -> list[list[str]]:
    """The cells of the page's table of rounds (header: arm | round | sparsity | FID | KID | ...)."""
    rows, inside = [], False
    with open(PAGE, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:5] == ["arm", "round", "sparsity", "FID", "KID"]:
                inside = True
            elif inside and line.startswith("|") and not set(line.strip()) <= set("|- "):
                rows.append(cells)
            elif inside and not line.startswith("|"):
                break
    return rows


def test_the_table_of_rounds_is_the_records():
    rows = rounds_table()
    assert rows, f"{PAGE} has no table of rounds"
    for arm, round_k, sparsity, fid, kid, train_cpu, eval_cpu in rows:
        k = int(re.match(r"\d+", round_k).group())
        with open(os.path.join(STUDY, "records", ARMS[arm], "rounds.jsonl"), encoding="utf-8") as f:
            record = [json.loads(line) for line in f][k]
        where = f"arm {arm} round {k}"
        if sparsity.endswith("%"):
            assert sparsity == f"{100 * record['sparsity']:.1f} %", where
        assert fid == f"{record['fid']:.2f}" and kid == f"{record['kid']:.2f}", where
        assert train_cpu == f"{record['train_cpu_seconds']:.0f}", where
        assert eval_cpu == f"{record['eval_cpu_seconds']:.0f}", where


def test_the_records_are_small_and_hold_no_weights():
    files = [p for p in glob.glob(os.path.join(STUDY, "**", "*"), recursive=True) if os.path.isfile(p)]
    assert not [p for p in files if p.endswith((".pt", ".safetensors", ".npz", ".npy"))]
    assert sum(os.path.getsize(p) for p in files) < 3 * 2 ** 20
