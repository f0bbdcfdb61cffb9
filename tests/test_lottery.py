"""Algorithm 1 end to end on a tiny digits U-Net with the real trainer, FID, pruning and files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.data import load_dataset
from pylth.ddpm.trainer import train
from pylth.foundations.io import torch_load
from pylth.lottery import ConfigMismatchError, LotteryParts, RunDirectory, find_ticket, load_round_start
from pylth.lottery.run_reader import fresh_model
from pylth.pruning import module_groups

from test_lottery_helpers import fid_cache, file_digests, tiny_spec  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

RECORD_KEYS = {"round", "sparsity", "module_sparsity", "fid", "fid_features", "loss", "macs", "dense_macs", "seconds"}


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory, fid_cache):  # noqa: F811
    """Two pruning rounds of the uniform strategy (p = 0.2), uninterrupted."""
    out = str(tmp_path_factory.mktemp("uniform-run"))
    spec = tiny_spec(fid_cache, strategy="uniform")
    records = find_ticket(spec, out, log=lambda _m: None)
    return spec, out, records


def load(path):
    return torch_load(path)


def test_run_directory_holds_every_file(uniform_run):
    spec, out, records = uniform_run
    assert [r["round"] for r in records] == [0, 1, 2]
    with open(os.path.join(out, "rounds.jsonl")) as f:
        assert [json.loads(line) for line in f] == records
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["fid_features"] == "classifier" and np.isfinite(r["fid"]) and np.isfinite(r["loss"])
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["lottery"]["strategy"] == "uniform"
    for name in ("rewind.pt", "report.png"):
        assert os.path.isfile(os.path.join(out, name))
    for k in range(3):
        for name in ("mask.pt", "model.pt", "samples.png"):
            assert os.path.isfile(os.path.join(out, f"round_{k:02d}", name)), (k, name)
        assert not os.path.exists(os.path.join(out, f"round_{k:02d}", "checkpoint.pt"))
    with open(os.path.join(out, "report.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_uniform_prunes_exactly_p_of_the_remaining_weights_of_every_tensor_and_masks_nest(uniform_run):
    spec, out, records = uniform_run
    masks = [load(os.path.join(out, f"round_{k:02d}", "mask.pt")) for k in range(3)]
    assert all(bool(m.all()) for m in masks[0].values())
    for k in (1, 2):
        assert list(masks[k]) == list(masks[0])  # same names, forward order
        for name, mask in masks[k].items():
            before = int(masks[k - 1][name].sum())
            assert int(mask.sum()) == before - int(np.floor(0.2 * before + 0.5)), (k, name)
            assert not bool((mask & ~masks[k - 1][name]).any()), "a pruned weight came back"
    sparsities = [r["sparsity"] for r in records]
    assert sparsities[0] == 0.0 and sparsities[0] < sparsities[1] < sparsities[2]
    for k, r in enumerate(records):  # recorded sparsity = fraction of False in mask.pt
        flat = np.concatenate([m.numpy().ravel() for m in masks[k].values()])
        assert r["sparsity"] == pytest.approx(1.0 - flat.mean(), abs=1e-12)
        assert r["macs"] <= r["dense_macs"] and (r["macs"] < r["dense_macs"]) == (k > 0)
    model = fresh_model(spec.model, 0)
    assert list(records[1]["module_sparsity"]) == [g for g, _ in module_groups(model)]


def test_model_pt_is_exactly_zero_where_masked(uniform_run):
    _, out, _ = uniform_run
    for k in range(3):
        state = load(os.path.join(out, f"round_{k:02d}", "model.pt"))
        mask = load(os.path.join(out, f"round_{k:02d}", "mask.pt"))
        for name, m in mask.items():
            assert state[name].shape == m.shape
            assert int((state[name][~m] != 0).sum()) == 0, name
            if k:
                assert int((state[name][m] != 0).sum()) > 0, name


def test_rewind_point_is_the_weights_after_tau_steps(uniform_run, fid_cache):  # noqa: F811
    spec, out, _ = uniform_run
    tau = spec.rewind_iteration
    assert tau == 2
    model = fresh_model(spec.model, spec.train.seed)
    train(model, GaussianDiffusion(), load_dataset("digits"), spec.train, end_iteration=tau,
          progress_desc="oracle")
    rewind = load(os.path.join(out, "rewind.pt"))
    for name, value in model.state_dict().items():
        assert torch.equal(rewind[name], value.cpu()), name


def test_load_round_start_returns_theta_tau_times_mask(uniform_run):
    _, out, _ = uniform_run
    model, masks = load_round_start(out, 2)
    rewind = load(os.path.join(out, "rewind.pt"))
    saved = load(os.path.join(out, "round_02", "mask.pt"))
    assert list(masks) == list(saved) and all(torch.equal(masks[n], saved[n]) for n in saved)
    for name, value in model.state_dict().items():
        expected = rewind[name] * saved[name] if name in saved else rewind[name]
        assert torch.equal(value, expected), name
    with pytest.raises(ValueError, match="round 3"):
        load_round_start(out, 3)
    with pytest.raises(ValueError, match="round must be an int"):
        load_round_start(out, True)


def test_same_command_on_a_finished_run_changes_nothing(uniform_run):
    spec, out, records = uniform_run
    before = file_digests(out)
    assert find_ticket(spec, out, log=lambda _m: None) == records
    assert file_digests(out) == before


@pytest.fixture(scope="module")
def resumed_run(uniform_run, tmp_path_factory):
    """The uniform run again, interrupted in round 2 after its checkpoint at iteration 4, then resumed."""
    spec, _, _ = uniform_run
    out = str(tmp_path_factory.mktemp("resumed-run"))
    real_train = LotteryParts().train
    seen = []

    def interrupted(*args, progress_desc, on_iteration=None, **kw):
        def stop(iteration, model):
            if iteration == 5:  # after round 2's checkpoint at iteration 4
                raise KeyboardInterrupt
        return real_train(*args, progress_desc=progress_desc,
                          on_iteration=stop if progress_desc == "round 2" else on_iteration, **kw)

    with pytest.raises(KeyboardInterrupt):
        find_ticket(spec, out, log=lambda _m: None, parts=LotteryParts(train=interrupted))
    run = RunDirectory(out)
    assert len(run.read_rounds()) == 2
    checkpoint = run.round_file(2, "checkpoint.pt")
    assert load(checkpoint)["iteration"] == 4
    finished = {p: d for p, d in file_digests(out).items() if p.startswith(("round_00", "round_01", "rewind"))}

    def spy(*args, checkpoint_path, **kw):
        seen.append(os.path.exists(checkpoint_path) and load(checkpoint_path)["iteration"])
        return real_train(*args, checkpoint_path=checkpoint_path, **kw)

    records = find_ticket(spec, out, log=lambda _m: None, parts=LotteryParts(train=spy))
    return out, records, seen, finished


def test_resume_after_an_interruption_mid_round_redoes_no_finished_round(resumed_run, uniform_run):
    out, records, seen, finished = resumed_run
    assert [r["round"] for r in records] == [0, 1, 2]
    assert seen == [4], "only round 2 trains again, from its checkpoint"
    after = file_digests(out)
    assert {p: after[p] for p in finished} == finished, "finished rounds were rewritten"
    assert not os.path.exists(os.path.join(out, "round_02", "checkpoint.pt"))
    a, b = load(os.path.join(out, "round_02", "mask.pt")), load(os.path.join(uniform_run[1], "round_02", "mask.pt"))
    assert all(torch.equal(a[n], b[n]) for n in b)


def test_resumed_round_is_bit_identical_to_the_uninterrupted_one(resumed_run, uniform_run):
    a = load(os.path.join(resumed_run[0], "round_02", "model.pt"))
    b = load(os.path.join(uniform_run[1], "round_02", "model.pt"))
    assert all(torch.equal(a[n], b[n]) for n in b)


def test_a_different_configuration_is_refused_and_nothing_is_touched(uniform_run, fid_cache):  # noqa: F811
    _, out, _ = uniform_run
    before = file_digests(out)
    with pytest.raises(ConfigMismatchError, match="prune_ratio"):
        find_ticket(tiny_spec(fid_cache, strategy="uniform", prune_ratio=0.3), out, log=lambda _m: None)
    assert file_digests(out) == before
