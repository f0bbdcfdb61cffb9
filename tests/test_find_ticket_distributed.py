"""python -m pylth.find_ticket under torchrun: two gloo processes on the CPU write one run directory; a
rank killed mid-round (kill -9) leaves one error line on the survivor, and the same command resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pylth.find_ticket import main
from pylth.foundations.io import torch_load

from test_lottery_helpers import fid_cache  # noqa: F401  (fixtures)
from test_preemption import Progress

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


def worker_of_rank(launcher_pid: int, local_rank: int, timeout: float = 60) -> int:
    """The pid of the torchrun worker with LOCAL_RANK ``local_rank`` (Linux: /proc)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in open(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read().split():
            try:
                environ = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if f"LOCAL_RANK={local_rank}".encode() in environ:
                return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no worker of local rank {local_rank}")


def test_a_lost_rank_is_one_error_line_on_the_survivor_and_the_same_command_resumes(tmp_path, fid_cache):  # noqa: F811
    flags = FLAGS[:-4] + ["--iterations", "80", "--max-rounds", "0", "--checkpoint-every", "5", "--cache-dir",
                          fid_cache, "--out", str(tmp_path / "run")]
    assert main(flags[:-2] + ["--iterations", "2", "--out", str(tmp_path / "warm")]) == 0  # the FID classifier, cached
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "pylth.find_ticket", *flags]
    proc = subprocess.Popen(argv, cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    progress = Progress(proc.stderr)
    progress.wait_for("round 0", 12, proc)
    os.kill(worker_of_rank(proc.pid, 1), signal.SIGKILL)
    proc.wait(timeout=120)
    progress.finish()
    lines = progress.text.replace("\r", "\n").splitlines()
    errors = [line for line in lines if line.startswith("python -m pylth.find_ticket: error:")]
    assert errors == ["python -m pylth.find_ticket: error: rank 0 lost another process of this torchrun job "
                      + errors[0].split("job ", 1)[1]], progress.text[-3000:]
    assert "(Connection" in errors[0] or "by peer" in errors[0]
    assert errors[0].endswith("it was killed, ran out of memory or its machine failed. The files written so far are "
                              "intact: rerun the same command to resume from the last checkpoint")
    assert not [line for line in lines if "pylth/" in line and line.lstrip().startswith("File ")], \
        "no traceback of pylth's (torchrun prints its own summary)"
    assert torch_load(os.path.join(tmp_path, "run", "round_00", "checkpoint.pt"))["iteration"] >= 10
    rerun = subprocess.run(argv, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(open(tmp_path / "run" / "rounds.jsonl").readlines()) == 1
