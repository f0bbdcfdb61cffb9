"""python -m pylth.cka on two small fake find_ticket run directories written here."""
import csv
import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pylth.cka import rbf_cka, weight_rows
from pylth.cka.__main__ import main
from pylth.cka.between_runs import LayerCka, halves_permutation_p

LAYERS = ["0.weight", "1.weight", "3.weight", "4.weight"]  # forward order, as mask.pt lists them


def write_run(path, seed, rounds):
    torch.manual_seed(seed)
    # The last layer has a single output row, like a 1-channel image's output conv: no CKA there.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 10), nn.Linear(10, 1))
    for k in rounds:
        state = {n: v.detach().clone() for n, v in model.state_dict().items()}
        masks = {n: torch.rand(state[n].shape) > 0.2 * k for n in LAYERS}
        for n, m in masks.items():
            state[n][~m] = 0
        folder = os.path.join(path, f"round_{k:02d}")
        os.makedirs(folder)
        torch.save(state, os.path.join(folder, "model.pt"))
        torch.save(masks, os.path.join(folder, "mask.pt"))
    return str(path)


@pytest.fixture
def runs(tmp_path):
    return write_run(tmp_path / "seed0", 0, [0, 1]), write_run(tmp_path / "seed1", 1, [0, 1, 2])


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compares_the_last_common_round_layer_by_layer(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*runs, "--out", str(out)]) == 0
    rows = read_csv(out / "cka.csv")
    assert [r["layer"] for r in rows] == LAYERS
    weights = []
    for run in runs:
        state = torch.load(os.path.join(run, "round_01", "model.pt"))
        weights.append([weight_rows(state[n]) for n in LAYERS])
    want = rbf_cka(*(w[:3] for w in weights))
    assert [float(r["rbf_cka"]) for r in rows[:3]] == pytest.approx(want.tolist(), abs=1e-12)
    assert rows[3]["rbf_cka"] == "nan" and rows[3]["linear_cka"] == "nan"
    assert float(rows[0]["sparsity_a"]) > 0.1 and int(rows[1]["fan_in"]) == 8 * 9
    assert (out / "cka.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "round 1: 4 layers" in printed and "upstream" in printed and "downstream" in printed
    kept = (out / "summary.txt").read_text()
    assert kept.splitlines()[0] == "seed0 vs seed1" and kept in printed


def test_round_flag_and_module_entry_point(runs, tmp_path):
    out = tmp_path / "round0"
    done = subprocess.run([sys.executable, "-m", "pylth.cka", *runs, "--round", "0", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "round 0" in done.stdout and len(read_csv(out / "cka.csv")) == 4


def test_default_output_folder_names_both_runs(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(list(runs)) == 0
    assert (tmp_path / "cka_seed0_vs_seed1_round_01" / "cka.csv").exists()


def corrupt_model(run_a, run_b):
    with open(os.path.join(run_b, "round_01", "model.pt"), "wb") as f:
        f.write(b"not a checkpoint")


def rename_layer(run_a, run_b):
    for name in ("mask.pt", "model.pt"):
        path = os.path.join(run_b, "round_01", name)
        tensors = torch.load(path)
        tensors["extra.weight"] = tensors.pop("4.weight")
        torch.save(tensors, path)


def drop_from_model(run_a, run_b):
    path = os.path.join(run_b, "round_01", "model.pt")
    state = torch.load(path)
    del state["1.weight"]
    torch.save(state, path)


@pytest.mark.parametrize(
    "make_bad, extra, message",
    [
        (None, ["--round", "2"], "no finished round 2"),
        (None, ["--threshold", "0"], "threshold"),
        (corrupt_model, [], "cannot read"),
        (rename_layer, [], "'4.weight' vs 'extra.weight'"),
        (drop_from_model, [], "does not have"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(runs, tmp_path, capsys, make_bad, extra, message):
    if make_bad:
        make_bad(*runs)
    assert main([*runs, "--out", str(tmp_path / "out"), *extra]) == 2  # every command's status for bad input
    err = capsys.readouterr().err
    assert err.startswith("python -m pylth.cka: error:") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_missing_run_directory(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a find_ticket run" in capsys.readouterr().err


@pytest.mark.parametrize("values", [
    [0.9, 0.8, 0.85, 0.95, 0.7, 0.3, 0.2, 0.4, 0.35, 0.1],    # upstream clearly higher: p near 2/252
    [0.5, 0.7, 0.2, 0.9, 0.4, 0.6, 0.3, 0.8, 0.45, 0.55],     # mixed: p large
    [0.6, 0.4, float("nan"), 0.7, 0.5, 0.3, 0.8, 0.2, 0.65, 0.45],
])
def test_the_halves_permutation_p_is_the_exact_share_of_splits(values):
    """Against every one of the C(n, n_up) splits, counted with itertools: the seeded estimate from
    10,000 random splits lands within 0.015 of the exact share."""
    results = [LayerCka(i, f"l{i}", 4, 4, 0.0, 0.0, v, v) for i, v in enumerate(values)]
    up = [v for v in values[:5] if not math.isnan(v)]
    down = [v for v in values[5:] if not math.isnan(v)]
    pool = up + down
    observed = abs(np.mean(up) - np.mean(down))
    splits = list(itertools.combinations(range(len(pool)), len(up)))
    hits = sum(abs(np.mean([pool[i] for i in s]) - np.mean([pool[i] for i in range(len(pool)) if i not in s]))
               >= observed - 1e-12 for s in splits)
    assert halves_permutation_p(results) == pytest.approx(hits / len(splits), abs=0.015)
