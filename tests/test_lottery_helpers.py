"""Shared pieces of the lottery/find_ticket tests: a tiny U-Net on digits and a quick FID classifier."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from pylth.ddpm import classifier
from pylth.ddpm.config import DataConfig, DiffusionConfig, EvalConfig
from pylth.ddpm.trainer import TrainConfig
from pylth.lottery import LotteryConfig, RunSpec

# 8x8 digits U-Net, ~20k weights: the same code paths as the presets, a fraction of the time.
TINY_MODEL = dict(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  dropout=0.0, norm_groups=4)


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
    """A cache folder for FID whose label classifier trains for a few steps only (features, not accuracy,
    are what the tests need), so the user's cache never holds a weak classifier."""
    mp = pytest.MonkeyPatch()
    original = classifier.train_classifier
    mp.setattr(classifier, "train_classifier", lambda dataset, device, **kw: original(dataset, device, steps=20))
    yield str(tmp_path_factory.mktemp("fid-cache"))
    mp.undo()


def file_digests(folder: str) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


@pytest.fixture(scope="module", autouse=False)
def one_thread():
    """One intra-op thread: on a busy 2-core box, spinning OpenMP threads make tiny steps 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
