"""Mixed reverse chains (issue 15): the model schedule, python -m pylth.sample --mix, and the
python -m pylth.mixed experiment on a tiny real run."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from pylth.ddpm import GaussianDiffusion, build_model
from pylth.ddpm.model_schedule import ModelSchedule, switch_owners
from pylth.ddpm.samplers import make_sampler, sample
from pylth.lottery import find_ticket
from pylth.mixed import main as mixed_main
from pylth.sample import main as sample_main
from pylth.studies.mixed_chain import ORDERS, MixedExperiment, read_rows

from test_lottery_helpers import fid_cache, tiny_spec  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_switch_owners_splits_the_chain_in_order_by_fractions():
    ts = list(range(9, -1, -1))
    assert switch_owners(ts, [0.3, 0.7]) == {t: (0 if t >= 7 else 1) for t in ts}
    assert set(switch_owners(ts, [1.0, 0.0]).values()) == {0}
    assert set(switch_owners(ts, [0.0, 1.0]).values()) == {1}
    three = switch_owners(ts, [0.25, 0.25, 0.5])  # boundaries at round(2.5) = 3 and round(5) = 5
    assert [three[t] for t in ts] == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    for bad, match in (([0.5, 0.6], "add up to 1"), ([1.5, -0.5], r"\[0, 1\]"), ([], "at least one")):
        with pytest.raises(ValueError, match=match):
            switch_owners(ts, bad)


def two_models():
    torch.manual_seed(0)
    models = [build_model("digits", ch=32, ch_mult=(1,), attn_resolutions=()).eval() for _ in range(2)]
    with torch.no_grad():  # non-trivial predictions: lift the near-zero init of the output layers
        for m in models:
            m.tail[-1].weight.mul_(1e4)
    return models


@pytest.mark.parametrize("sampler_name, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_all_steps_to_one_model_is_exactly_that_models_chain(sampler_name, eta):
    diffusion = GaussianDiffusion(100)
    dense, ticket = two_models()
    sampler = make_sampler(sampler_name, diffusion, 8, eta=eta)

    def chain(model):
        return sample(model, sampler, 5, (1, 8, 8), seed=4, batch_size=3, device="cpu", progress=False)

    alone = {"dense": chain(dense), "ticket": chain(ticket)}
    for fractions, expected in (([1.0, 0.0], "dense"), ([0.0, 1.0], "ticket")):
        mixed = chain(ModelSchedule([dense, ticket], switch_owners(sampler.timesteps, fractions)))
        assert torch.equal(mixed, alone[expected]), (fractions, expected)
    halfway = chain(ModelSchedule([dense, ticket], switch_owners(sampler.timesteps, [0.5, 0.5])))
    assert not torch.allclose(halfway, alone["dense"]) and not torch.allclose(halfway, alone["ticket"])
    assert torch.equal(halfway, chain(ModelSchedule([dense, ticket], switch_owners(sampler.timesteps, [0.5, 0.5]))))


def test_a_schedule_refuses_timesteps_it_does_not_own_and_mixed_batches():
    dense, ticket = two_models()
    schedule = ModelSchedule([dense, ticket], {5: 0, 3: 1})
    with pytest.raises(ValueError, match="timestep 4"):
        schedule(torch.zeros(1, 1, 8, 8), torch.tensor([4]))
    with pytest.raises(ValueError, match="one timestep"):
        schedule(torch.zeros(2, 1, 8, 8), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="names models"):
        ModelSchedule([dense], {5: 1})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fid_cache):  # noqa: F811
    out = str(tmp_path_factory.mktemp("mixed") / "run")
    spec = tiny_spec(fid_cache, strategy="uniform", prune_ratio=0.6, max_rounds=1)
    records = find_ticket(spec, out, log=lambda _m: None)
    return out, records


def test_the_end_points_reproduce_rounds_jsonl_and_points_are_not_measured_twice(tiny_run):
    out, records = tiny_run
    logs = []
    experiment = MixedExperiment(out, log=logs.append)
    rows = experiment.run_points([1], [0.0, 0.5, 1.0], ORDERS, [0])
    by_key = {(r.order, r.switch_point): r for r in rows}
    assert by_key["dense-first", 1.0].fid == records[0]["fid"], "all dense: round 0's FID, to the bit"
    assert by_key["dense-first", 0.0].fid == records[1]["fid"], "all ticket: round 1's FID"
    assert by_key["ticket-first", 0.0].fid == records[0]["fid"] and by_key["ticket-first", 1.0].fid == records[1]["fid"]
    assert by_key["dense-first", 0.5].fid not in (records[0]["fid"], records[1]["fid"])
    dense = by_key["dense-first", 1.0]
    assert dense.chain_macs == dense.dense_chain_macs == 2 * records[0]["dense_macs"]  # 2 sampling steps
    assert by_key["dense-first", 0.5].chain_macs == records[0]["dense_macs"] + records[1]["macs"]
    assert by_key["dense-first", 0.0].ticket_steps == 2 and by_key["dense-first", 0.0].dense_steps == 0
    with open(os.path.join(out, "mixed.csv")) as f:
        assert len(list(csv.DictReader(f))) == 6
    before = os.stat(os.path.join(out, "mixed.csv")).st_mtime_ns
    again = MixedExperiment(out, log=logs.append).run_points([1], [0.0, 1.0], ORDERS, [0])
    assert "0 point(s) to measure" in logs[-1] and len(again) == 6
    assert os.stat(os.path.join(out, "mixed.csv")).st_mtime_ns == before
    assert [r.key for r in read_rows(os.path.join(out, "mixed.csv"))] == sorted(r.key for r in rows)


def test_the_command_writes_the_plot_and_the_table(tiny_run, capsys):
    out, _ = tiny_run
    assert mixed_main([out, "--switch-points", "0,1", "--seeds", "0,1", "--order", "dense-first"]) == 0
    printed = capsys.readouterr().out
    assert "dense-first" in printed and "mixed.png" in printed
    assert open(os.path.join(out, "mixed.png"), "rb").read(4) == b"\x89PNG"
    seeds = {(r.switch_point, r.seed) for r in read_rows(os.path.join(out, "mixed.csv")) if r.order == "dense-first"}
    assert {(0.0, 1), (1.0, 1), (0.0, 0), (1.0, 0)} <= seeds


@pytest.mark.parametrize("argv, message", [
    (["--switch-points", "0,1.5"], "--switch-points must lie in [0, 1], got 1.5"),
    (["--switch-points", "a,b"], "--switch-points takes comma-separated floats"),
    (["--rounds", "7"], "round 7 of"),
    (["--rounds", "0"], "not a finished pruning round"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_run, capsys, argv, message):
    out, _ = tiny_run
    before = sorted(os.listdir(out))
    assert mixed_main([out, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m pylth.mixed: error: ") and message in err and err.count("\n") == 1
    assert sorted(os.listdir(out)) == before


def test_a_dense_model_from_a_run_of_another_network_is_refused(tiny_run, tmp_path, fid_cache, capsys):  # noqa: F811
    out, _ = tiny_run
    other = str(tmp_path / "other")
    spec = tiny_spec(fid_cache, max_rounds=0)
    spec.model = dict(spec.model, ch=16, norm_groups=8)
    find_ticket(spec, other, log=lambda _m: None)
    assert mixed_main([out, "--dense-from", other]) == 2
    assert "has another model than" in capsys.readouterr().err


def test_sample_gives_the_rounds_fid_samples_and_mixes_rounds(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    assert sample_main([out, "--round", "0", "--num", "5", "--out", str(png), "--npz", str(npz)]) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and png.read_bytes()[:4] == b"\x89PNG"
    alone = np.load(npz)["samples"]
    assert alone.shape == (5, 1, 8, 8)
    assert sample_main([out, "--mix", "0:1,1:0", "--num", "5", "--out", str(png), "--npz", str(npz)]) == 0
    assert np.array_equal(np.load(npz)["samples"], alone), "all steps to round 0 is round 0"
    assert sample_main([out, "--mix", "0:0.5,1:0.5", "--num", "5", "--out", str(png), "--npz", str(npz)]) == 0
    assert not np.array_equal(np.load(npz)["samples"], alone)


@pytest.mark.parametrize("argv, message", [
    (["--mix", "0:0.5,1"], "--mix takes ROUND:FRACTION"),
    (["--mix", "0:0.5,1:0.6"], "add up to 1"),
    (["--round", "3"], "round 3 of"),
    (["--round", "1", "--mix", "0:1"], "not both"),
    (["--num", "0"], "--num must be a positive int"),
])
def test_sample_bad_input(tiny_run, tmp_path, capsys, argv, message):
    out, _ = tiny_run
    assert sample_main([out, *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_each_round_writes_its_ticket_file_and_records_its_size(tiny_run):
    out, records = tiny_run
    for r in records:
        path = os.path.join(out, f"round_{r['round']:02d}", "ticket.safetensors")
        assert os.path.getsize(path) == r["ticket_bytes"] and r["dense_bytes"] > 0
        assert f"round_{r['round']:02d}/ticket.safetensors" in r["files"], "its digest is checked on resume"
    assert records[1]["ticket_bytes"] < records[0]["ticket_bytes"], "fewer kept weights, a smaller file"


def test_sample_reads_a_ticket_file_and_the_sparse_model_matches_the_dense(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    ticket = os.path.join(out, "round_01", "ticket.safetensors")
    npz = tmp_path / "s.npz"
    args = ["--num", "3", "--out", str(tmp_path / "s.png"), "--npz", str(npz)]
    assert sample_main([out, "--round", "1", "--dense", *args]) == 0
    from_run = np.load(npz)["samples"]
    assert sample_main([ticket, "--dense", *args]) == 0
    assert np.array_equal(np.load(npz)["samples"], from_run), "the file holds the round's model and settings"
    assert sample_main([ticket, *args]) == 0
    assert "sparse (round 0:" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(npz)["samples"], from_run, atol=1e-3)
    assert sample_main([ticket, "--round", "0", *args]) == 2
