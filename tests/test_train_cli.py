"""python -m pylth.train: writes checkpoint, samples and metrics; resumes; bad arguments fail cleanly."""
import json
import os
import subprocess
import sys

import pytest

from pylth import train as train_cli
from pylth.ddpm.data import load_dataset
from pylth.evaluation.classifier import load_or_train_classifier
from pylth.foundations.io import torch_load

from test_lottery_helpers import QUICK_CLASSIFIER_STEPS
from test_run_spec import FIND_TICKET, TRAIN_NOW


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pylth.train", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--iterations", "5"], "--out"),
    (["--out", "X", "--iterations", "0"], "iterations"),
    (["--out", "X", "--iterations", "5", "--dataset", "imagenet"], "dataset"),
    (["--out", "X", "--iterations", "5", "--sampler", "euler"], "sampler"),
    (["--out", "X", "--iterations", "five"], "iterations"),
    (["--out", "X", "--iterations", "5", "--fid-samples", "1"], "fid_samples"),
])
def test_bad_arguments_are_argparse_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "X").exists()


def test_missing_data_is_a_one_line_error_without_traceback(tmp_path):
    proc = run_cli("--out", str(tmp_path / "run"), "--iterations", "2", "--dataset", "mnist",
                   "--data-root", str(tmp_path / "empty"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "train-images-idx3-ubyte" in proc.stderr


def test_digits_run_writes_outputs_and_the_same_command_resumes(tmp_path):
    # the FID classifier, trained briefly into the run's cache first: the command uses the cached one
    load_or_train_classifier("digits", load_dataset("digits"), str(tmp_path / "cache"), "cpu",
                             steps=QUICK_CLASSIFIER_STEPS)
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--iterations", "2", "--batch-size", "8", "--out", str(out),
            "--fid-samples", "10", "--sample-steps", "2", "--cache-dir", str(tmp_path / "cache"),
            "--checkpoint-every", "1"]
    assert train_cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid_features"] == "classifier" and metrics["iterations"] == 2
    assert {"fid", "kid", "loss"} <= set(metrics) and metrics["fid"] > 0
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch_load(str(out / "checkpoint.pt"))["iteration"] == 2
    argv[argv.index("--iterations") + 1] = "3"
    assert train_cli.main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3
    assert torch_load(str(out / "checkpoint.pt"))["iteration"] == 3


def test_the_config_json_train_writes_names_its_settings_as_find_ticket_s_does(tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", "digits", "--iterations", "1", "--fid-samples", "0", "--out", str(out)]) == 0
    written, ticket = json.loads((out / "config.json").read_text()), json.loads(FIND_TICKET)
    assert set(written) == set(json.loads(TRAIN_NOW)) and set(written) <= set(ticket)
    assert all(set(written[k]) == set(ticket[k]) for k in written if isinstance(written[k], dict) and k != "model")


def test_help_lists_shared_flags_and_digits_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--dataset", "digits", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-root", "--device", "--seed", "--batch-size", "--lr", "--fid-samples",
                 "--sampler", "--sample-steps", "--iterations", "--out"):
        assert flag in text
    assert "--warmup WARMUP iterations of linear learning-rate warm-up (default: 100)" in " ".join(text.split())
