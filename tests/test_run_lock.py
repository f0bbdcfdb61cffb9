"""One writer per run directory: a second writer is refused with one line naming the directory and
the holder's pid; a dead holder's lock does not block; read-only commands take no lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pylth import train as train_cli
from pylth.cka.__main__ import main as cka_main
from pylth.find_ticket import main
from pylth.foundations.run_lock import DirectoryLock, RunLocked
from pylth.lottery import LotteryParts, load_round_start
from pylth.mixed import main as mixed_main
from pylth.sample import main as sample_main

from test_lottery_helpers import fake, file_digests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1"]
HOLD = ("import sys, time; from pylth.foundations.run_lock import DirectoryLock; "
        "DirectoryLock(sys.argv[1], name=sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(300)")


class Holder:
    """Another process holding a directory's lock until it is killed."""

    def __init__(self, directory, name=".lock"):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), name], stdout=subprocess.PIPE,
                                     text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


@pytest.fixture
def finished(fake, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(QUICK + ["--out", str(out)], parts=fake.parts) == 0
    return out, fake.parts


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holders_lock_does_not_block(finished, capsys):
    out, parts = finished
    holder = Holder(out)
    try:
        before = file_digests(str(out))
        capsys.readouterr()
        assert main(QUICK + ["--max-rounds", "2", "--out", str(out)], parts=parts) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"python -m pylth.find_ticket: error: --out {out} is in use: another process writes to it "
            f"(pid {holder.proc.pid} on ")
        assert "Wait for it to end or stop it, or use another --out" in err
        assert file_digests(str(out)) == before
    finally:
        holder.kill()
    assert f"pid {holder.proc.pid} on" in (out / ".lock").read_text(), "the dead holder's text stays"
    assert main(QUICK + ["--max-rounds", "2", "--out", str(out)], parts=parts) == 0
    assert (out / ".lock").read_text() == "", "released at the end"


def test_the_train_command_takes_the_lock_of_its_out_folder(tmp_path, capsys):
    out = tmp_path / "dense"
    out.mkdir()
    holder = Holder(out)
    try:
        assert train_cli.main(["--iterations", "2", "--batch-size", "8", "--fid-samples", "0", "--out", str(out)]) == 2
    finally:
        holder.kill()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} is in use" in err and f"pid {holder.proc.pid}" in err
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


def test_read_only_commands_work_while_a_writer_holds_the_run(finished, tmp_path, capsys):
    out, _ = finished
    holder = Holder(out)
    try:
        load_round_start(str(out), 1)
        assert cka_main([str(out), str(out), "--out", str(tmp_path / "cka")]) == 0
        assert sample_main([str(out), "--num", "2", "--steps", "1", "--out", str(tmp_path / "s.png")]) == 0
    finally:
        holder.kill()


def test_mixed_runs_beside_a_writer_but_not_beside_another_mixed(finished, capsys):
    out, _ = finished
    holder = Holder(out, ".mixed.lock")
    try:
        assert mixed_main([str(out), "--switch-points", "0.5"]) == 2
    finally:
        holder.kill()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"RUN {out} is in use: another process measures mixed chains in it" in err
    assert not (out / "mixed.csv").exists()


def test_force_locks_the_new_folder_and_lets_the_moved_one_go(finished):
    out, parts = finished
    checked = []

    def train_checking_the_locks(*args, **kwargs):
        if not checked:
            with pytest.raises(RunLocked):
                DirectoryLock(str(out)).acquire()
            moved = [p for p in os.listdir(out.parent) if p.startswith("run.replaced-")]
            DirectoryLock(str(out.parent / moved[0])).acquire().release()
            checked.append(moved[0])
        return parts.train(*args, **kwargs)

    forced = LotteryParts(train=train_checking_the_locks, fid_evaluator=parts.fid_evaluator,
                          render_report=parts.render_report)
    assert main(QUICK + ["--prune-ratio", "0.3", "--force", "--out", str(out)], parts=forced) == 0
    assert len(checked) == 1


def test_the_lock_is_per_holder_and_released_on_exit(tmp_path):
    first = DirectoryLock(str(tmp_path)).acquire()
    with pytest.raises(RunLocked, match=f"pid {os.getpid()} on "):
        DirectoryLock(str(tmp_path)).acquire()  # another open file: refused even in the same process
    first.release()
    with DirectoryLock(str(tmp_path)) as again:
        assert again.held
    assert not again.held and sorted(os.listdir(tmp_path)) == [".lock"]
