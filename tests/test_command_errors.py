"""What a command says when it cannot go on: a bad flag is one line (argparse's usage is for --help); a
run's config.json that parses but lacks settings is one line naming it, for every reader; sample checks
its output files before sampling and says what a run without a finished round is; a writer taking a
run's lock removes the temp files a dead writer left."""
from __future__ import annotations

import json
import os

import pytest

from pylth import train as train_cli
from pylth.cka.__main__ import main as cka_main
from pylth.export import main as export_main
from pylth.find_ticket import main
from pylth.foundations.run_dir import DamagedRunError
from pylth.lottery import load_round_start
from pylth.lottery.run_reader import load_trained
from pylth.mixed import main as mixed_main
from pylth.sample import main as sample_main

from test_lottery_helpers import fake, file_digests, stopped_in  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1"]


@pytest.fixture
def finished(fake, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(QUICK + ["--out", str(out)], parts=fake.parts) == 0
    return out, fake.parts


# -- bad flags -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, prog, argv, message", [
    (main, "find_ticket", ["--dataset", "nosuch"], "argument --dataset: invalid choice: 'nosuch' (choose from "),
    (main, "find_ticket", ["--iterations", "many"], "argument --iterations: invalid int value: 'many'"),
    (main, "find_ticket", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (train_cli.main, "train", ["--dataset", "nosuch", "--out", "x"], "argument --dataset: invalid choice: 'nosuch'"),
    (train_cli.main, "train", ["--iterations", "0", "--out", "x"], "iterations must be a positive int, got 0"),
    (sample_main, "sample", [], "the following arguments are required: RUN"),
    (sample_main, "sample", ["run", "--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    (cka_main, "cka", [], "the following arguments are required"),
    (mixed_main, "mixed", ["run", "--order", "sideways"], "argument --order: invalid choice: 'sideways'"),
    (export_main, "export", [], "the following arguments are required"),
])
def test_a_bad_flag_is_one_line_and_exit_2(capsys, command, prog, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m pylth.{prog}: error: {message}"), err


def test_help_still_shows_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "usage: python -m pylth.find_ticket" in capsys.readouterr().out


# -- a config.json that parses but lacks settings ---------------------------------------------------------
def test_a_config_json_without_its_settings_is_one_line_naming_it_for_every_reader(finished, tmp_path, capsys):
    out, parts = finished
    config = out / "config.json"
    config.write_text('{"foo": 1}\n')
    before = file_digests(str(out))
    problem = f"{config} is damaged (it lacks data, model, image_shape, train, diffusion, evaluation, ...)"
    for command, argv in ((sample_main, [str(out), "--out", str(tmp_path / "s.png")]),  # (cka reads no config)
                          (mixed_main, [str(out)]),
                          (export_main, [str(out), str(tmp_path / "export")])):
        assert command(argv) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {problem}. Nothing was changed: restore it from a copy" in err, err
    assert main(QUICK + ["--out", str(out)], parts=parts) == 2
    assert f"python -m pylth.find_ticket: error: {problem}" in capsys.readouterr().err
    for reader in (load_round_start, load_trained):
        with pytest.raises(DamagedRunError, match="it lacks data"):
            reader(str(out), 0)
    assert file_digests(str(out)) == before


def test_a_config_json_lacking_one_key_names_that_key(finished, tmp_path, capsys):
    out, _ = finished
    config = json.loads((out / "config.json").read_text())
    del config["evaluation"]["sampler"]
    (out / "config.json").write_text(json.dumps(config))
    assert sample_main([str(out), "--out", str(tmp_path / "s.png")]) == 2
    assert f"{out / 'config.json'} is damaged (it lacks evaluation.sampler)" in capsys.readouterr().err


def test_a_record_of_rounds_jsonl_without_its_measurements_names_the_line(finished, tmp_path, capsys):
    out, _ = finished
    lines = (out / "rounds.jsonl").read_text().splitlines()
    (out / "rounds.jsonl").write_text(lines[0] + '\n{"round": 1}\n')
    assert sample_main([str(out), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"{out / 'rounds.jsonl'} is damaged: line 2 lacks sparsity, module_sparsity, fid, "
                                     "loss, macs, dense_macs, seconds") in err


# -- sample --------------------------------------------------------------------------------------------
@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling fails the test: the checks come first."""
    import pylth.sample

    def refuse(*args, **kwargs):
        raise AssertionError("sampled before checking the output")

    monkeypatch.setattr(pylth.sample, "sample_blocks", refuse)


def test_sample_checks_out_before_sampling(finished, tmp_path, capsys, no_sampling):
    out, _ = finished
    folder = tmp_path / "pictures"
    folder.mkdir()
    assert sample_main([str(out), "--out", str(folder)]) == 2
    assert capsys.readouterr().err == (f"python -m pylth.sample: error: --out {folder} is a folder: give the file to "
                                       f"write, e.g. {folder / 'samples.png'}\n")
    missing = tmp_path / "nonexistent" / "dir" / "x.png"
    assert sample_main([str(out), "--out", str(missing)]) == 2
    assert capsys.readouterr().err == (f"python -m pylth.sample: error: --out {missing}: the folder "
                                       f"{missing.parent} does not exist\n")
    assert not (tmp_path / "nonexistent").exists(), "no folder is created"
    assert sample_main([str(out), "--out", str(tmp_path / "x.png"), "--npz", str(missing.with_suffix(".npz"))]) == 2
    assert "error: --npz " in capsys.readouterr().err


def test_sample_before_round_0_is_finished_says_so(fake, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(QUICK + ["--out", str(out)], parts=stopped_in(fake.parts, 0)) == 130
    capsys.readouterr()
    assert sample_main([str(out), "--out", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err == (f"python -m pylth.sample: error: {out} has no finished round yet: round 0 (dense "
                                       "training) is still running or was stopped; run its find_ticket command again "
                                       "to finish it\n")


def test_sample_of_an_unfinished_round_names_the_finished_ones(finished, tmp_path, capsys):
    out, _ = finished
    assert sample_main([str(out), "--round", "5", "--out", str(tmp_path / "s.png")]) == 2
    assert f"round 5 of {out} is not finished (rounds 0-1 are)" in capsys.readouterr().err


# -- temp files of a dead writer ----------------------------------------------------------------------------
def test_the_next_writer_removes_the_temp_files_a_dead_writer_left(fake, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    argv = QUICK + ["--out", str(out)]
    assert main(argv, parts=stopped_in(fake.parts, 1)) == 130
    dead = [out / "round_01" / ".ticket.safetensors.k2j3h4l5.tmp", out / ".rewind.pt.a8sd7f6g.tmp",
            out / "round_01" / "..checkpoint.pt.sha256.q1w2e3r4.tmp", out / ".rounds.jsonl.z9x8c7v6.tmp"]
    others = [out / ".mixed.csv.p0o9i8u7.tmp", out / "notes.tmp"]  # mixed's (it writes beside us), the user's
    for path in dead + others:
        path.write_bytes(b"\0" * 1000)
    assert main(argv, parts=fake.parts) == 0
    assert [p for p in dead if p.exists()] == [] and all(p.exists() for p in others)


def test_the_train_command_removes_its_dead_writers_temp_files(tmp_path):
    out = tmp_path / "dense"
    out.mkdir()
    (out / ".checkpoint.pt.abcd1234.tmp").write_bytes(b"\0" * 1000)
    assert train_cli.main(["--iterations", "2", "--batch-size", "8", "--fid-samples", "0", "--out", str(out)]) == 0
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
