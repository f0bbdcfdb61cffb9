"""SIGTERM and SIGUSR1: training finishes its step, writes a checkpoint and stops with exit 75, and the
same command resumes bit-identically; outside training a signal stops at once; the handlers go back."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from pylth import train as train_cli
from pylth.cli import run_command
from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.data import load_dataset
from pylth.ddpm.trainer import TrainConfig, train
from pylth.evaluation.classifier import load_or_train_classifier
from pylth.find_ticket import main as find_ticket_main
from pylth.foundations.io import torch_load
from pylth.foundations.preemption import EXIT_PREEMPTED, Preempted, deferred_stop, stop_on_signals, stop_requested

from test_lottery_helpers import fid_cache, small_digits_unet  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_model():
    return small_digits_unet(2)


def signal_at(iteration: int, signum: int, seen: list):
    def on_iteration(it, _model):
        seen.append(it)
        if it == iteration:
            os.kill(os.getpid(), signum)
    return on_iteration


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_mid_training_checkpoints_after_that_step_and_the_resume_is_exact(digits, tmp_path, signum):
    config = TrainConfig(iterations=8, batch_size=16, warmup=3, checkpoint_every=1000, seed=5)
    straight = train(fresh_model(), GaussianDiffusion(), digits, config)
    path, seen = str(tmp_path / "ckpt.pt"), []
    with stop_on_signals():
        with pytest.raises(Preempted, match=f"^stopped by {signal.Signals(signum).name} after iteration 3 of 8; "
                                            f"{re.escape(path)} holds the state$"):
            train(fresh_model(), GaussianDiffusion(), digits, config, checkpoint_path=path,
                  on_iteration=signal_at(3, signum, seen))
    assert seen == [1, 2, 3], "the step in progress finishes, no further one starts"
    assert torch_load(path)["iteration"] == 3
    resumed = train(fresh_model(), GaussianDiffusion(), digits, config, checkpoint_path=path)
    assert resumed.iterations == 8 and resumed.loss == straight.loss
    for a, b in zip([*straight.model.state_dict().values(), *straight.ema_model.state_dict().values()],
                    [*resumed.model.state_dict().values(), *resumed.ema_model.state_dict().values()]):
        assert torch.equal(a, b)


def test_outside_training_a_signal_stops_at_once_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    with stop_on_signals():
        with pytest.raises(Preempted, match="^stopped by SIGTERM$"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # not reached
        assert stop_requested() == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before
    assert stop_requested() is None


def test_a_request_the_training_loop_could_not_answer_stops_as_its_block_ends():
    reached_the_end_of_the_block = False
    with stop_on_signals():
        with pytest.raises(Preempted, match="^stopped by SIGUSR1$"):
            with deferred_stop():
                os.kill(os.getpid(), signal.SIGUSR1)
                assert stop_requested() == "SIGUSR1"  # recorded, not raised: the block saves first
                reached_the_end_of_the_block = True
    assert reached_the_end_of_the_block


def test_run_command_ends_a_stopped_command_with_75_and_one_line(capsys):
    def body(_environment):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(30)

    assert run_command("prog", body, needs_native=False, stops_on_signals=True) == EXIT_PREEMPTED == 75
    assert capsys.readouterr().err == "prog: stopped by SIGUSR1; run the same command again to resume\n"


def test_train_command_sigterm_then_the_same_command_resumes_bit_identically(tmp_path, monkeypatch, capsys):
    argv = ["--dataset", "digits", "--iterations", "6", "--batch-size", "8", "--fid-samples", "0",
            "--sample-steps", "1", "--checkpoint-every", "1000"]
    assert train_cli.main(argv + ["--out", str(tmp_path / "straight")]) == 0
    real_train, seen = train_cli.train, []
    monkeypatch.setattr(train_cli, "train",
                        lambda *a, **kw: real_train(*a, on_iteration=signal_at(2, signal.SIGTERM, seen), **kw))
    out = tmp_path / "stopped"
    capsys.readouterr()
    assert train_cli.main(argv + ["--out", str(out)]) == 75
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"python -m pylth.train: stopped by SIGTERM after iteration 2 of 6; {out / 'checkpoint.pt'} "
                   "holds the state; run the same command again to resume")
    assert torch_load(str(out / "checkpoint.pt"))["iteration"] == 2 and not (out / "metrics.json").exists()
    monkeypatch.setattr(train_cli, "train", real_train)
    assert train_cli.main(argv + ["--out", str(out)]) == 0
    a, b = (torch_load(str(tmp_path / d / "checkpoint.pt")) for d in ("straight", "stopped"))
    assert a["iteration"] == b["iteration"] == 6 and a["losses"] == b["losses"]
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


# -- the command in its own process, as a scheduler stops it ---------------------------------------
TICKET = ["--iterations", "40", "--batch-size", "16", "--fid-samples", "8", "--sample-steps", "1",
          "--heldout-samples", "8", "--max-rounds", "1", "--checkpoint-every", "1000"]


class Progress:
    """The latest progress-bar position of each bar a subprocess prints on stderr, and all of stderr."""

    def __init__(self, stream):
        self.text, self.position = "", {}
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for chunk in iter(lambda: stream.read(1), ""):
            self.text += chunk
            if chunk in "\r\n":
                line = self.text[max(self.text.rfind("\r", 0, len(self.text) - 1),
                                     self.text.rfind("\n", 0, len(self.text) - 1)) + 1:]
                match = re.match(r"\s*(round \d+)[^|]*\|[^|]*\|\s*(\d+)/(\d+)", line)
                if match:
                    self.position[match.group(1)] = int(match.group(2))

    def wait_for(self, bar: str, at_least: int, proc, timeout: float = 300):
        deadline = time.time() + timeout
        while self.position.get(bar, -1) < at_least:
            assert proc.poll() is None, f"the run ended early:\n{self.text[-3000:]}"
            assert time.time() < deadline, f"no {bar} at {at_least} within {timeout} s:\n{self.text[-3000:]}"
            time.sleep(0.05)

    def finish(self):
        self._thread.join(timeout=30)


def start_find_ticket(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "pylth.find_ticket", *args], cwd=str(cwd), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_find_ticket_sigterm_mid_round_then_the_same_command_resumes_bit_identically(tmp_path, fid_cache):  # noqa: F811
    load_or_train_classifier("digits", load_dataset("digits"), fid_cache, "cpu")  # the quick one, cached
    args = TICKET + ["--cache-dir", fid_cache, "--out", str(tmp_path / "run")]
    proc = start_find_ticket(args, tmp_path)
    progress = Progress(proc.stderr)
    progress.wait_for("round 1", 8, proc)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    assert proc.wait(timeout=120) == 75
    seconds = time.time() - sent
    progress.finish()
    stopped_at = torch_load(str(tmp_path / "run" / "round_01" / "checkpoint.pt"))["iteration"]
    assert 8 <= stopped_at < 40
    last = progress.text.strip().splitlines()[-1]
    assert last == (f"python -m pylth.find_ticket: stopped by SIGTERM after iteration {stopped_at} of 40; "
                    f"{tmp_path / 'run' / 'round_01' / 'checkpoint.pt'} holds the state; run the same command "
                    "again to resume")
    assert "Traceback" not in progress.text
    assert seconds < 60, seconds  # a step and a small checkpoint, then the interpreter's exit (a busy CI box)
    with open(tmp_path / "run" / "rounds.jsonl") as f:
        assert len(f.readlines()) == 1, "round 1 is not finished"

    rerun = start_find_ticket(args, tmp_path)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert not (tmp_path / "run" / "round_01" / "checkpoint.pt").exists()

    assert find_ticket_main(TICKET + ["--cache-dir", fid_cache, "--out", str(tmp_path / "straight")]) == 0
    for name in ("round_00/model.pt", "round_00/mask.pt", "rewind.pt", "round_01/model.pt", "round_01/mask.pt"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_a_second_sigterm_while_stopping_changes_nothing(tmp_path, fid_cache, gap):  # noqa: F811
    """Schedulers and torchrun send SIGTERM again: the run still ends with 75 and its checkpoint intact,
    not with 143 (the signal's default action, killing the process as it exits)."""
    load_or_train_classifier("digits", load_dataset("digits"), fid_cache, "cpu")
    proc = start_find_ticket(TICKET + ["--cache-dir", fid_cache, "--out", str(tmp_path / "run")], tmp_path)
    progress = Progress(proc.stderr)
    progress.wait_for("round 1", 8, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(gap)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    progress.finish()
    checkpoint = tmp_path / "run" / "round_01" / "checkpoint.pt"
    stopped_at = torch_load(str(checkpoint))["iteration"]  # loads, and matches the digest written with it
    assert progress.text.strip().splitlines()[-1] == (
        f"python -m pylth.find_ticket: stopped by SIGTERM after iteration {stopped_at} of 40; {checkpoint} holds the "
        "state; run the same command again to resume")
    assert "Traceback" not in progress.text


def test_after_a_stop_the_command_ignores_further_stop_signals_until_it_exits():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def body(_environment):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    assert run_command("prog", body, needs_native=False, stops_on_signals=True) == EXIT_PREEMPTED
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN == signal.getsignal(signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)  # would end this process with 143
    for s, handler in before.items():
        signal.signal(s, handler)
    assert run_command("prog", lambda _environment: None, needs_native=False, stops_on_signals=True) == 0
    assert {s: signal.getsignal(s) for s in before} == before, "a command that ends well gives the handlers back"
