"""Algorithm 1 with sparse training (``--sparse-training on``) against dense masked training (off) on
a tiny digits U-Net: the same masks and losses within summation-order tolerance, files in the dense
format, compact checkpoints, bit-identical resume, and a refused change of the setting."""
from __future__ import annotations

import os

import pytest
import torch

from pylth.foundations.io import torch_load
from pylth.lottery import ConfigMismatchError, LotteryParts, RunDirectory, find_ticket

from test_lottery_helpers import fid_cache, tiny_spec  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_for(cache, setting: str):
    return tiny_spec(cache, strategy="uniform", prune_ratio=0.5, train={"sparse_training": setting})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fid_cache):  # noqa: F811
    """The same two pruning rounds trained dense masked (off) and sparse (on)."""
    out = {}
    for setting in ("off", "on"):
        out[setting] = str(tmp_path_factory.mktemp(f"run-{setting}"))
        find_ticket(spec_for(fid_cache, setting), out[setting], log=lambda _m: None)
    return out


def round_file(run: str, k: int, name: str):
    return torch_load(os.path.join(run, f"round_{k:02d}", name))


def test_sparse_training_finds_the_masks_and_losses_of_dense_masked_training(runs):
    records = {s: RunDirectory(runs[s]).read_rounds() for s in runs}
    assert [r["round"] for r in records["on"]] == [0, 1, 2]
    for a, b in zip(records["off"], records["on"]):
        assert b["sparsity"] == a["sparsity"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    for k in range(3):
        a, b = round_file(runs["off"], k, "mask.pt"), round_file(runs["on"], k, "mask.pt")
        assert list(a) == list(b)
        # magnitude ties aside, the same weights are pruned (float sums in another order can swap two
        # nearly equal magnitudes at the threshold)
        differ = sum(int((a[n] != b[n]).sum()) for n in a)
        assert differ <= max(2, sum(m.numel() for m in a.values()) // 1000), (k, differ)
        a, b = round_file(runs["off"], k, "model.pt"), round_file(runs["on"], k, "model.pt")
        assert list(a) == list(b) and all(a[n].shape == b[n].shape for n in a)  # model.pt's format
        for n in a:  # the trained EMA weights, to a small fraction of one step (lr 2e-4)
            torch.testing.assert_close(b[n], a[n], rtol=0, atol=2e-5)
    rewind_a, rewind_b = (torch_load(os.path.join(runs[s], "rewind.pt")) for s in ("off", "on"))
    assert list(rewind_a) == list(rewind_b)  # theta_tau in the dense format too
    for n in rewind_a:
        torch.testing.assert_close(rewind_b[n], rewind_a[n], rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def resumed(runs, tmp_path_factory, fid_cache):  # noqa: F811
    """The sparse run again, interrupted in round 2 after its checkpoint at iteration 4, then resumed."""
    out = str(tmp_path_factory.mktemp("resumed-on"))
    real_train = LotteryParts().train
    held = {}

    def interrupted(*args, progress_desc, on_iteration=None, checkpoint_path=None, **kw):
        def stop(iteration, model):
            if iteration == 5:  # after round 2's checkpoint at iteration 4
                held.update(torch_load(checkpoint_path))
                raise KeyboardInterrupt
        return real_train(*args, progress_desc=progress_desc, checkpoint_path=checkpoint_path,
                          on_iteration=stop if progress_desc == "round 2" else on_iteration, **kw)

    spec = spec_for(fid_cache, "on")
    with pytest.raises(KeyboardInterrupt):
        find_ticket(spec, out, log=lambda _m: None, parts=LotteryParts(train=interrupted))
    find_ticket(spec, out, log=lambda _m: None)
    return out, held


def test_a_resumed_sparse_round_is_bit_identical_and_its_checkpoint_compact(resumed, runs):
    out, held = resumed
    assert held["iteration"] == 4 and held["sparse_layers"]
    assert any(k.endswith(".values") for k in held["model"]) and any(k.endswith(".values") for k in held["ema"])
    for k in range(3):
        a, b = round_file(out, k, "model.pt"), round_file(runs["on"], k, "model.pt")
        assert list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in b), k


def test_another_sparse_training_setting_on_a_run_is_refused(runs, fid_cache):  # noqa: F811
    with pytest.raises(ConfigMismatchError, match=r"train.sparse_training: 'on' -> 'off'.*add --sparse-training on"):
        find_ticket(spec_for(fid_cache, "off"), runs["on"], log=lambda _m: None)
