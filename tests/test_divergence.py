"""Divergence: a NaN from a huge learning rate stops training within a few steps, with one line that
names the round and the iteration; the last good checkpoint stays; no FID is computed from NaN weights;
the run can be started again with a lower --lr and --force."""
from __future__ import annotations

import math
import os

import pytest
import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.trainer import Diverged, TrainConfig, train
from pylth.ddpm.trainer.loop import REPORT_EVERY
from pylth.evaluation.config import EvalConfig
from pylth.evaluation.fid import FidEvaluator
from pylth.find_ticket import main as find_ticket_main
from pylth.foundations.io import torch_load
from pylth.lottery import LotteryParts

from test_lottery_helpers import fid_cache, small_digits_unet  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
HUGE_LR = dict(lr=1e4, warmup=0)


def fresh_model():
    return small_digits_unet(3)


def test_a_huge_learning_rate_stops_within_a_few_steps_and_writes_no_checkpoint(digits, tmp_path):
    path, seen = str(tmp_path / "ckpt.pt"), []
    config = TrainConfig(iterations=200, batch_size=16, checkpoint_every=1000, **HUGE_LR)
    with pytest.raises(Diverged, match=r"^training diverged at iteration (\d+): the loss is (nan|inf) and the "
                                       r"gradient norm (nan|inf); no checkpoint was written yet") as info:
        train(fresh_model(), GaussianDiffusion(), digits, config, checkpoint_path=path,
              on_iteration=lambda it, _m: seen.append(it))
    assert 1 <= info.value.iteration <= seen[-1] < info.value.iteration + REPORT_EVERY, "stopped within a few steps"
    assert seen[-1] < 200 and not os.path.exists(path)


def test_the_last_good_checkpoint_stays_and_holds_finite_weights(digits, tmp_path):
    path, seen = str(tmp_path / "ckpt.pt"), []
    config = TrainConfig(iterations=30, batch_size=16, checkpoint_every=1, **HUGE_LR)  # step 1 is still finite
    with pytest.raises(Diverged) as info:
        train(fresh_model(), GaussianDiffusion(), digits, config, checkpoint_path=path,
              on_iteration=lambda it, _m: seen.append(it))
    n = info.value.iteration
    assert n >= 2, "a checkpoint was written before the divergence"
    assert str(info.value).endswith(f"the last good checkpoint, {path}, is at iteration {n - 1} and stays")
    ckpt = torch_load(path)
    assert ckpt["iteration"] == n - 1 and seen[-1] == n  # read back at every checkpoint: caught at once
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(math.isfinite(x) for x in ckpt["losses"])


def test_no_fid_from_a_model_with_non_finite_weights(digits):
    model = fresh_model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    evaluator = FidEvaluator(EvalConfig(fid_samples=4, sample_steps=1), "digits", digits, "cpu", GaussianDiffusion(),
                             progress=False)
    with pytest.raises(ValueError, match="NaN or infinity .*no FID is computed"):
        evaluator.score(model, seed=0)


# tau = 27 comes after the first read-back of the losses (step 25)
QUICK = ["--iterations", "30", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1", "--rewind-fraction", "0.9"]


def test_find_ticket_with_a_huge_lr_is_one_line_naming_round_and_iteration_then_a_lower_lr_and_force_run(
        tmp_path, capsys, fid_cache):  # noqa: F811
    scored = []

    class Spy(FidEvaluator):
        def score(self, model, **kwargs):
            scored.append(model)
            return super().score(model, **kwargs)

    parts = LotteryParts(fid_evaluator=Spy)
    out = tmp_path / "run"
    argv = QUICK + ["--cache-dir", fid_cache, "--out", str(out)]
    assert find_ticket_main(argv + ["--lr", "10000", "--warmup", "0"], parts=parts) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m pylth.find_ticket: error: round 0: training diverged at iteration ")
    assert "no checkpoint was written yet" in err and "Lower --lr" in err and "--force" in err
    assert scored == [] and not (out / "rounds.jsonl").exists() and not (out / "rewind.pt").exists()
    assert find_ticket_main(argv + ["--lr", "5e-4", "--force"], parts=parts) == 0
    assert len(scored) == 2, "round 0 and round 1 were scored"
    moved = [p for p in os.listdir(tmp_path) if p.startswith("run.replaced-")]
    assert len(moved) == 1 and sorted(os.listdir(tmp_path / moved[0] / "round_00")) == [".mask.pt.sha256", "mask.pt"]
