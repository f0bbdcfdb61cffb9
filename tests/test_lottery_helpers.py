"""Shared pieces of the lottery/find_ticket tests: a tiny U-Net on digits and a quick FID classifier."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os

import pytest
import torch

from pylth.ddpm import build_model
from pylth.ddpm.config import DataConfig, DiffusionConfig
from pylth.ddpm.trainer import TrainConfig, TrainResult
from pylth.ddpm.data import load_dataset
from pylth.evaluation.classifier import load_or_train_classifier
from pylth.evaluation.config import EvalConfig
from pylth.lottery import LotteryConfig, LotteryParts, RunSpec
from pylth.pruning import apply_masks

QUICK_CLASSIFIER_STEPS = 20  # the FID classifier of the tests' caches: features, not accuracy
# 8x8 digits U-Net, ~20k weights: the same code paths as the presets, a fraction of the time.
TINY_MODEL = dict(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  dropout=0.0, norm_groups=4)


def small_digits_unet(seed: int):
    """A one-level digits U-Net (ch 32) initialised from ``seed``: for tests of the trainer."""
    torch.manual_seed(seed)
    return build_model("digits", ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())


def tiny_spec(cache_dir: str, iterations: int = 6, train: dict | None = None, **lottery) -> RunSpec:
    lottery = {"max_rounds": 2, "heldout_samples": 16, "rewind_fraction": 1 / 3, **lottery}
    train = {"iterations": iterations, "batch_size": 16, "warmup": 2, "ema_decay": 0.9, "checkpoint_every": 2,
             **(train or {})}
    return RunSpec(data=DataConfig("digits"), model=dict(TINY_MODEL), image_shape=(1, 8, 8),
                   train=TrainConfig(**train), diffusion=DiffusionConfig(),
                   evaluation=EvalConfig(fid_samples=8, sample_steps=2, sample_batch_size=64, cache_dir=cache_dir),
                   lottery=LotteryConfig(**lottery))


@pytest.fixture(scope="session")
def fid_cache(tmp_path_factory):
    """A cache folder for FID holding a digits label classifier trained for a few steps only (features,
    not accuracy, are what the tests need), so the user's cache never holds a weak classifier. Every
    test that scores with it scores digits at their own size: that classifier is the cache's."""
    cache = str(tmp_path_factory.mktemp("fid-cache"))
    load_or_train_classifier("digits", load_dataset("digits"), cache, "cpu", steps=QUICK_CLASSIFIER_STEPS)
    return cache


LOCK_FILES = (".lock", ".mixed.lock", ".evaluate.lock")  # every writer rewrites its lock file (the holder's pid): not run content


def file_digests(folder: str) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under ``folder``, lock files aside."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name in LOCK_FILES:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


class FakeCalls(list):
    """The calls of the stand-in trainer, and ``parts``: the collaborators to hand the Lottery."""

    parts: LotteryParts


@pytest.fixture
def fake():
    """Collaborators that replace training by seeded random steps (so trained magnitudes differ from
    theta_tau) and FID by a constant; the fixture is the list of training calls."""
    return fake_calls()


def fake_calls(step_size: float = 1.0) -> FakeCalls:
    """``fake``'s collaborators, each training step adding ``step_size`` times a standard normal draw."""
    calls = FakeCalls()

    def train(model, diffusion, dataset, config, *, masks=None, start_iteration=0, end_iteration=None,
              ema_state=None, checkpoint_path=None, on_iteration=None, progress_desc="train"):
        calls.append(dict(start=start_iteration, end=end_iteration, masks=masks,
                          state={k: v.detach().clone() for k, v in model.state_dict().items()}))
        gen = torch.Generator().manual_seed(len(calls))
        for it in range(start_iteration + 1, end_iteration + 1):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen), alpha=step_size)
            apply_masks(model, masks)
            if on_iteration is not None:
                on_iteration(it, model)
        return TrainResult(model=model, ema_model=copy.deepcopy(model), loss=0.5, iterations=end_iteration)

    class FakeEvaluator:
        def __init__(self, config, name, dataset, device, schedule, **kw):
            self.num_samples, self.image_shape = config.fid_samples, dataset[0][0].shape

        def score(self, model, *, seed, return_samples=False):
            return dict(fid=10.0, kid=0.0, fid_features="classifier", fid_weights="classifier:fake",
                        num_samples=self.num_samples, samples=torch.zeros(self.num_samples, *self.image_shape))

    calls.parts = LotteryParts(train=train, fid_evaluator=FakeEvaluator,
                               render_report=lambda records, title="": b"not drawn")
    return calls


def stopped_in(parts, round_k: int, at_iteration: int | None = None):
    """``parts`` whose training raises KeyboardInterrupt (Ctrl-C) in round ``round_k``: at its start, or
    after step ``at_iteration`` (after the checkpoints written until then)."""
    def train(model, *args, masks=None, on_iteration=None, checkpoint_path=None, **kwargs):
        if f"round_{round_k:02d}" in checkpoint_path:
            if at_iteration is None:
                raise KeyboardInterrupt

            def stop(iteration, trained):
                if on_iteration is not None:
                    on_iteration(iteration, trained)
                if iteration == at_iteration:
                    raise KeyboardInterrupt

            return parts.train(model, *args, masks=masks, on_iteration=stop, checkpoint_path=checkpoint_path, **kwargs)
        return parts.train(model, *args, masks=masks, on_iteration=on_iteration, checkpoint_path=checkpoint_path,
                           **kwargs)

    return dataclasses.replace(parts, train=train)
