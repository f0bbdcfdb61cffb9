"""python -m pylth.evaluate (finished rounds scored again into evaluations.jsonl) and python -m
pylth.compare (runs side by side): scores reproduce rounds.jsonl, rows resume, tables read back."""
from __future__ import annotations

import csv
import json
import os

import pytest

from pylth.compare import main as compare_main
from pylth.evaluate import main as evaluate_main
from pylth.foundations.run_lock import DirectoryLock
from pylth.lottery import find_ticket
from pylth.studies.evaluations import EVALUATION_LOCK

from test_lottery_helpers import fid_cache, file_digests, tiny_spec  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fid_cache):  # noqa: F811
    """A layerwise run and a uniform arm sharing its round 0."""
    root = tmp_path_factory.mktemp("runs")
    layerwise, uniform = str(root / "layerwise"), str(root / "uniform")
    find_ticket(tiny_spec(fid_cache, max_rounds=2), layerwise, log=lambda _m: None)
    find_ticket(tiny_spec(fid_cache, max_rounds=2, strategy="uniform"), uniform, log=lambda _m: None,
                dense_from=layerwise)
    return layerwise, uniform


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_evaluate_with_the_runs_own_settings_reproduces_its_fid_and_resumes(runs, capsys):
    layerwise, _ = runs
    records = _lines(os.path.join(layerwise, "rounds.jsonl"))
    assert evaluate_main([layerwise, "--rounds", "1,2"]) == 0
    rows = _lines(os.path.join(layerwise, "evaluations.jsonl"))
    assert [(r["round"], r["seed"]) for r in rows] == [(1, 0), (2, 0)]
    for row in rows:
        assert row["fid"] == records[row["round"]]["fid"] and row["kid"] == records[row["round"]]["kid"]
        assert row["fid_weights"] == records[row["round"]]["fid_weights"] and row["sampler"] == "ddim"
    before = file_digests(layerwise)
    capsys.readouterr()
    assert evaluate_main([layerwise, "--rounds", "1,2"]) == 0  # measured already: nothing to do
    assert "2 of 2 score(s) already" in capsys.readouterr().out
    assert file_digests(layerwise) == before
    assert evaluate_main([layerwise, "--sparsity", "0", "--seeds", "1,2"]) == 0  # round 0, two more seeds
    rows = _lines(os.path.join(layerwise, "evaluations.jsonl"))
    assert [(r["round"], r["seed"]) for r in rows[2:]] == [(0, 1), (0, 2)] and rows[2]["fid"] != rows[3]["fid"]


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "9"], "round 9 of"),
    (["--sparsity", "0.99"], "--sparsity 0.99: no finished round is within 2.5 points of it (the nearest is round 2"),
    (["--fid-features", "inception", "--inception-path", "/nonexistent.pt"], "nonexistent"),
])
def test_bad_evaluate_input_is_one_line_and_writes_nothing(runs, capsys, argv, message):
    _, uniform = runs
    before = file_digests(uniform)
    assert evaluate_main([uniform] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert file_digests(uniform) == before


@pytest.mark.parametrize("argv", [["--fid-samples", "1"], ["--rounds", "a,b"], ["--seeds", "-1"]])
def test_bad_evaluate_flags_are_argparse_errors_naming_them(runs, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main([runs[1]] + argv)
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err


def test_evaluate_refuses_a_run_another_evaluation_holds(runs, capsys):
    _, uniform = runs
    with DirectoryLock(uniform, name=EVALUATION_LOCK, flag="RUN", purpose="evaluates it"):
        assert evaluate_main([uniform, "--rounds", "0"]) == 2
    assert "evaluates it" in capsys.readouterr().err


def test_compare_writes_the_table_figure_and_csv_read_back_from_the_records(runs, tmp_path, capsys):
    layerwise, uniform = runs
    out = tmp_path / "cmp"
    assert compare_main([layerwise, uniform, "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ours = {row["label"]: row for row in csv.DictReader(open(out / "compare.csv"))}
    assert set(ours) == {"layerwise", "uniform"}  # labels: what differs between the configurations
    # The evaluate test above scored the layerwise round 0 at seeds 1 and 2 with the run's own settings:
    # those rows pool with rounds.jsonl's seed 0, and the uniform arm shares that dense model.
    extra = [r for r in _lines(os.path.join(layerwise, "evaluations.jsonl")) if r["seed"] != 0]
    assert {(r["round"], r["seed"]) for r in extra} == {(0, 1), (0, 2)}
    for path, label in ((layerwise, "layerwise"), (uniform, "uniform")):
        records = _lines(os.path.join(path, "rounds.jsonl"))
        rows = [r for r in csv.DictReader(open(out / "compare.csv")) if r["label"] == label]
        pooled = [[rec["fid"]] + [r["fid"] for r in extra if r["round"] == rec["round"] and rec["round"] == 0]
                  for rec in records]
        assert [float(r["mean"]) for r in rows] == pytest.approx([sum(v) / len(v) for v in pooled], rel=1e-12)
        assert [json.loads(r["seeds"]) for r in rows] == [[0, 1, 2]] + [[0]] * (len(records) - 1)
        assert [float(r["sparsity"]) for r in rows] == [r["sparsity"] for r in records]
        assert f"| {label} | {sum(pooled[0]) / 3:.4g} ± " in table
    assert compare_main([layerwise, uniform, "--out", str(out), "--labels", "A,B"]) == 0
    assert "| A |" in (out / "compare.md").read_text()


def test_compare_pools_seeds_from_evaluations_and_shares_the_dense_model(runs, tmp_path):
    layerwise, uniform = runs
    evaluate_main([layerwise, "--rounds", "0", "--seeds", "1,2"])
    out = tmp_path / "cmp"
    assert compare_main([layerwise, uniform, "--out", str(out), "--evaluation", "fid_samples=8"]) == 0
    rows = _lines(os.path.join(layerwise, "evaluations.jsonl"))
    dense = sorted(r["fid"] for r in rows if r["round"] == 0)
    table = (out / "compare.md").read_text()
    assert f"Dense band: {dense[0]:.4g} to {dense[-1]:.4g} ({len(dense)} dense score(s)" in table
    csv_rows = list(csv.DictReader(open(out / "compare.csv")))
    uniform_dense = next(r for r in csv_rows if r["label"] == "uniform" and r["round"] == "0")
    assert float(uniform_dense["low"]) == dense[0] and float(uniform_dense["high"]) == dense[-1]


def test_incomparable_runs_are_refused_naming_the_difference(runs, tmp_path, fid_cache, capsys):  # noqa: F811
    layerwise, _ = runs
    other = str(tmp_path / "other")
    spec = tiny_spec(fid_cache, max_rounds=0)
    spec.evaluation.fid_samples = 6
    find_ticket(spec, other, log=lambda _m: None)
    capsys.readouterr()
    assert compare_main([layerwise, other, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "not comparable: fid_samples" in err and "\n" not in err.strip()
    assert not (tmp_path / "cmp").exists()
    assert compare_main([layerwise, str(tmp_path / "absent"), "--out", str(tmp_path / "cmp")]) == 2
    assert "holds no find_ticket run" in capsys.readouterr().err
