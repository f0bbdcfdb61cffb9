"""Where a round's time goes: training seconds (wall and CPU) summed over every invocation through the
checkpoint, evaluation seconds beside them in rounds.jsonl."""
from __future__ import annotations

import time

import pytest

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.trainer import TrainConfig, train
from pylth.foundations.io import torch_load
from pylth.lottery import LotteryParts, find_ticket
from test_lottery_helpers import fid_cache, small_digits_unet, tiny_spec  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
SLOW = 0.4  # seconds each way that the first invocation spends before its checkpoint


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_resumed_training_counts_the_seconds_of_the_invocation_before_it(tmp_path, digits):
    config = TrainConfig(iterations=4, batch_size=8, warmup=1, checkpoint_every=2)
    path = str(tmp_path / "checkpoint.pt")

    def slow_then_stop(iteration, _model):
        if iteration == 1:  # before the checkpoint at iteration 2: counted in it
            time.sleep(SLOW)
            _busy(SLOW)
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_digits_unet(0), GaussianDiffusion(), digits, config, checkpoint_path=path,
              on_iteration=slow_then_stop, progress_desc="first")
    wall, cpu = torch_load(path)["seconds"]
    assert wall >= 2 * SLOW and cpu >= SLOW
    result = train(small_digits_unet(0), GaussianDiffusion(), digits, config, checkpoint_path=path,
                   progress_desc="resumed")
    assert result.iterations == 4
    assert result.seconds > wall and result.cpu_seconds > cpu  # the second invocation alone took far less
    assert torch_load(path)["seconds"][0] == pytest.approx(result.seconds, abs=0.5)


def test_rounds_record_training_and_evaluation_seconds_within_the_wall_time(tmp_path, fid_cache):  # noqa: F811
    real_train = LotteryParts().train
    steps = []  # iterations each round trained (round 1 on starts at the rewind point)

    def slow_train(*args, on_iteration=None, **kw):  # training that takes long against the rest of a round
        steps.append(0)

        def step(iteration, model):
            steps[-1] += 1
            time.sleep(SLOW / 2)
            if on_iteration is not None:
                on_iteration(iteration, model)
        return real_train(*args, on_iteration=step, **kw)

    began = time.monotonic()
    records = find_ticket(tiny_spec(fid_cache, max_rounds=1), str(tmp_path / "run"), log=lambda _m: None,
                          parts=LotteryParts(train=slow_train))
    wall = time.monotonic() - began
    assert len(records) == 2 and steps == [6, 4]  # 6 iterations, rewind point 2 (tiny_spec: a third)
    for r, n in zip(records, steps):
        assert r["train_seconds"] >= n * SLOW / 2 - 1e-6 and 0 < r["train_cpu_seconds"] and 0 < r["eval_seconds"]
        assert 0 < r["eval_cpu_seconds"] and r["seconds"] >= r["train_seconds"] + r["eval_seconds"] - 1e-6
    # an uninterrupted run: the rounds' seconds are parts of the wall time, no training counted twice
    assert sum(r["seconds"] for r in records) <= wall
