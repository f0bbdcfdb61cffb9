"""find_ticket --dense-from RUN: arms that differ only in how they prune share RUN's round 0, copied
to the bit with its digests checked; other settings, a missing or unfinished RUN are refused."""
from __future__ import annotations

import json
import os

import pytest

from pylth.find_ticket import main
from pylth.foundations.run_dir import DamagedRunError
from pylth.lottery import find_ticket

from test_lottery_helpers import fid_cache, file_digests, tiny_spec  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory, fid_cache):  # noqa: F811
    out = str(tmp_path_factory.mktemp("source"))
    find_ticket(tiny_spec(fid_cache, max_rounds=1), out, log=lambda _m: None)
    return out


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_an_arm_takes_round_0_to_the_bit_and_says_where_it_came_from(source, tmp_path, fid_cache):  # noqa: F811
    out = str(tmp_path / "arm")
    records = find_ticket(tiny_spec(fid_cache, max_rounds=1, strategy="uniform", reset="reinit"), out,
                          log=lambda _m: None, dense_from=source)
    theirs, ours = file_digests(source), file_digests(out)
    for rel in ("round_00/model.pt", "round_00/mask.pt", "round_00/ticket.safetensors", "round_00/samples.png",
                "rewind.pt"):
        assert ours[rel][0] == theirs[rel][0], rel
    original = _read(os.path.join(source, "rounds.jsonl"))[0]
    assert records[0] == dict(original, dense_from=dict(path=os.path.abspath(source), files=original["files"]))
    assert records[1]["round"] == 1 and records[1]["sparsity"] > 0
    # resuming with the same --dense-from is fine; another one, or none trained here, is refused
    before = file_digests(out)
    assert find_ticket(tiny_spec(fid_cache, max_rounds=1, strategy="uniform", reset="reinit"), out,
                       log=lambda _m: None, dense_from=source) == records
    assert file_digests(out) == before
    with pytest.raises(ValueError, match="was taken from"):
        find_ticket(tiny_spec(fid_cache, max_rounds=1, strategy="uniform", reset="reinit"), out,
                    log=lambda _m: None, dense_from=out)  # a run, but not the one round 0 came from


def test_init_reset_without_theta_0_in_run_makes_it_again_from_the_seed(source, tmp_path, fid_cache):  # noqa: F811
    from pylth.ddpm.models import model_kind
    from pylth.foundations.io import torch_load

    spec = tiny_spec(fid_cache, max_rounds=1, reset="init")
    find_ticket(spec, str(tmp_path / "arm"), log=lambda _m: None, dense_from=source)
    theta0 = model_kind("unet").initial(spec.model, spec.train.seed).state_dict()
    saved = torch_load(str(tmp_path / "arm" / "init.pt"))
    assert all(saved[k].equal(v) for k, v in theta0.items())
    assert "init.pt" in _read(str(tmp_path / "arm" / "rounds.jsonl"))[0]["files"]


def test_other_settings_are_listed_in_one_error_and_nothing_is_written(source, tmp_path, fid_cache):  # noqa: F811
    out = tmp_path / "arm"
    spec = tiny_spec(fid_cache, iterations=8, train={"lr": 1e-3}, heldout_samples=8)
    with pytest.raises(ValueError) as error:
        find_ticket(spec, str(out), log=lambda _m: None, dense_from=source)
    message = str(error.value)
    for key in ("train.iterations", "train.lr", "lottery.heldout_samples", "rewind_iteration"):
        assert key in message, key
    assert not out.exists()


def test_a_damaged_file_of_run_is_named(source, tmp_path, fid_cache):  # noqa: F811
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(source, copy)
    with open(os.path.join(copy, "rewind.pt"), "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\x00" * 10)
    with pytest.raises(DamagedRunError, match="rewind.pt"):
        find_ticket(tiny_spec(fid_cache, max_rounds=1), str(tmp_path / "arm"), log=lambda _m: None, dense_from=copy)


@pytest.mark.parametrize("problem", ["missing", "unfinished"])
def test_a_missing_or_unfinished_run_is_one_line_and_nothing_is_written(source, tmp_path, capsys, problem):
    run = tmp_path / "run"
    if problem == "unfinished":  # a run whose round 0 is still training: its config, no rounds.jsonl yet
        run.mkdir()
        (run / "config.json").write_text(open(os.path.join(source, "config.json")).read())
    out = tmp_path / "arm"
    argv = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
            "--dense-from", str(run), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.find_ticket: error: --dense-from") and "\n" not in err
    assert ("no find_ticket run" if problem == "missing" else "not finished round 0") in err
    assert not out.exists()
