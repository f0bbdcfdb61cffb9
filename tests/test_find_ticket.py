"""python -m pylth.find_ticket: flags, default run directory, bad input, refusal of another run's folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pylth.find_ticket import main
from test_lottery_helpers import fake, fid_cache, file_digests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1"]


def test_a_real_round_zero_through_the_command_line_prints_the_table(tmp_path, capsys, fid_cache):  # noqa: F811
    out = tmp_path / "run"
    assert main(QUICK + ["--max-rounds", "0", "--cache-dir", fid_cache, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FID (classifier features)" in printed and "sparsity" in printed
    with open(out / "rounds.jsonl") as f:
        record = json.loads(f.readline())
    assert record["round"] == 0 and record["sparsity"] == 0.0 and record["macs"] == record["dense_macs"]
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["data"]["dataset"] == "digits" and config["train"]["iterations"] == 4
    assert config["lottery"] == dict(config["lottery"], strategy="layerwise", prune_ratio=0.2, increment=0.01,
                                     reset="rewind", rewind_fraction=0.05)


def test_the_default_run_directory_is_named_from_the_configuration(fake, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    assert main(QUICK + ["--strategy", "uniform", "--seed", "3"], parts=fake.parts) == 0
    assert os.listdir(tmp_path / "runs") == ["digits-uniform-rewind-p0.2-q0.01-i4-s3"]


@pytest.mark.parametrize("argv, flag", [
    (["--prune-ratio", "1.5"], "--prune-ratio"),
    (["--prune-ratio", "-0.2"], "--prune-ratio"),
    (["--increment", "2"], "--increment"),
    (["--target-sparsity", "1.01"], "--target-sparsity"),
    (["--rewind-fraction", "-0.05"], "--rewind-fraction"),
    (["--cap", "nan"], "--cap"),
    (["--batch-size", "0"], "--batch-size"),
    (["--fid-samples", "1"], "--fid-samples"),
    (["--max-rounds", "-1"], "--max-rounds"),
])
def test_bad_values_fail_with_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    out = tmp_path / "run"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.find_ticket: error: " + flag) and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--dataset", "imagenet"], ["--strategy", "magic"], ["--reset", "later"],
                                  ["--iterations", "many"]])
def test_malformed_flags_are_argparse_errors(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "run")])
    assert exc.value.code == 2


def test_an_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert main(["--out", str(blocker / "run")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_another_configuration_on_a_run_is_refused_and_nothing_is_lost(fake, tmp_path, capsys):  # noqa: F811
    out = str(tmp_path / "run")
    assert main(QUICK + ["--out", out], parts=fake.parts) == 0
    before = file_digests(out)
    capsys.readouterr()
    assert main(QUICK + ["--prune-ratio", "0.3", "--out", out], parts=fake.parts) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "prune_ratio" in err and "--force" in err
    assert file_digests(out) == before
    assert main(QUICK + ["--max-rounds", "2", "--out", out], parts=fake.parts) == 0, "a larger --max-rounds is the same run, extended"
    assert {p: d for p, d in file_digests(out).items() if p in before and p.startswith("round_")} == \
        {p: d for p, d in before.items() if p.startswith("round_")}


def test_bad_input_in_a_fresh_process_has_no_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "pylth.find_ticket", "--prune-ratio", "2", "--out", str(tmp_path / "r")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "--prune-ratio must be a number in [0, 1], got 2.0" in proc.stderr


def test_a_missing_data_file_names_it_and_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--dataset", "mnist", "--data-root", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.find_ticket: error:") and "no-data" in err and "\n" not in err
    assert not out.exists()
