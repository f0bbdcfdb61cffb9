"""python -m pylth.find_ticket under torchrun: two gloo processes on the CPU write one run directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pylth.find_ticket import main
from pylth.io import torch_load
from test_lottery_helpers import fid_cache  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
FLAGS = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1"]


def test_two_processes_write_one_run_with_the_sparsity_of_one_process(tmp_path, fid_cache):  # noqa: F811
    two, one = tmp_path / "two", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "pylth.find_ticket", *FLAGS, "--cache-dir", fid_cache, "--out", str(two)]
    # One process first: it also trains the quick FID classifier that the torchrun processes then read.
    assert main(FLAGS + ["--cache-dir", fid_cache, "--out", str(one)]) == 0
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1, "only rank 0 logs"
    records = [[json.loads(line) for line in open(run / "rounds.jsonl")] for run in (two, one)]
    assert [r["sparsity"] for r in records[0]] == [r["sparsity"] for r in records[1]]
    masks = [torch_load(os.path.join(run, "round_01", "mask.pt")) for run in (two, one)]
    assert {n: int(m.sum()) for n, m in masks[0].items()} == {n: int(m.sum()) for n, m in masks[1].items()}
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    # The same command again: a finished run, resumed under torchrun exactly as in one process.
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=180)
    assert proc.returncode == 0 and "resuming" in proc.stdout, proc.stderr[-3000:]
    assert [json.loads(line) for line in open(two / "rounds.jsonl")] == records[0]
    assert torch.equal(torch_load(os.path.join(two, "round_01", "mask.pt"))["head.weight"], masks[0]["head.weight"])
