"""torch.distributed on CPU with gloo: one ``torchrun --standalone --nproc_per_node 2`` job (this file
is also its worker script) against the same work done in one process here.

- training: 2 ranks with the same global batch match 1 process; both ranks hold the same weights and EMA; a
  run interrupted and resumed under torchrun equals the uninterrupted one bit for bit; a SIGTERM to one
  rank stops both at the same step with a checkpoint, and the resume is exact too;
- FID: the sharded samples are the one-process samples bit for bit, and the scores are equal;
- find_ticket: one round writes one run directory, every rank trains on the same masks, and the
  sparsity equals the one-process run's; round 0 of a U-Net with dropout matches one process (every
  row of the global batch gets the same dropout mask, and the same flip, whatever the processes);
- helpers: broadcasts, uneven gathers, checksum mismatches and rank-local errors raised everywhere;
- a rank that dies brings the whole job down with its error.
"""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.data import ImageDataset, load_dataset
from pylth.ddpm.models import UNet
from pylth.ddpm.trainer import TrainConfig, train
from pylth.evaluation.classifier import load_or_train_classifier
from pylth.evaluation.config import EvalConfig
from pylth.evaluation.fid import FidEvaluator
from pylth.foundations import distributed as D
from pylth.foundations.environment import DIST_TIMEOUT_ENV, Environment
from pylth.foundations.io import torch_load
from pylth.foundations.preemption import Preempted, stop_on_signals
from pylth.lottery import find_ticket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # when run as the torchrun worker
from test_lottery_helpers import QUICK_CLASSIFIER_STEPS, TINY_MODEL, tiny_spec  # noqa: E402

FAILING_MESSAGE = "rank 1 fails on purpose"


# -- the work, the same in one process and under torchrun -----------------------------------------
def tiny_model() -> UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet(**TINY_MODEL)


def tiny_masks(model) -> dict:
    g = torch.Generator().manual_seed(1)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if p.ndim > 1}


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


class Killed(Exception):
    pass


def train_tiny(checkpoint=None, killed_after=None) -> tuple[torch.Tensor, float]:
    """4 masked steps of a global batch of 16; returns (the weights then the EMA's, loss). With
    ``killed_after``: first a run that dies in the step after that iteration's checkpoint, then the
    same call again, which resumes from ``checkpoint``."""
    config = TrainConfig(iterations=4, batch_size=16, warmup=0, ema_decay=0.9, checkpoint_every=2)
    dataset = load_dataset("digits")
    if killed_after is not None:
        def die(iteration, _model):
            if iteration == killed_after + 1:
                raise Killed

        model = tiny_model()
        with pytest.raises(Killed):
            train(model, GaussianDiffusion(), dataset, config, masks=tiny_masks(model), checkpoint_path=checkpoint,
                  on_iteration=die)
    model = tiny_model()
    result = train(model, GaussianDiffusion(), dataset, config, masks=tiny_masks(model), checkpoint_path=checkpoint)
    return torch.cat([flat(result.model), flat(result.ema_model)]), result.loss


def preempted_tiny(checkpoint: str, rank: int) -> dict:
    """30 steps, uninterrupted; then the same with SIGTERM to rank 1 alone at iteration 3, then resumed.
    Returns how the stopped run ended on this rank and whether the resumed run equals the straight one."""
    config = TrainConfig(iterations=30, batch_size=16, warmup=0, ema_decay=0.9, checkpoint_every=1000)
    dataset = load_dataset("digits")
    model = tiny_model()
    straight = train(model, GaussianDiffusion(), dataset, config, masks=tiny_masks(model))

    def signal_rank_1(iteration, _model):
        if rank == 1 and iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    outcome = None
    with stop_on_signals():
        model = tiny_model()
        try:
            train(model, GaussianDiffusion(), dataset, config, masks=tiny_masks(model), checkpoint_path=checkpoint,
                  on_iteration=signal_rank_1)
        except Preempted as exc:
            outcome = str(exc)
    model = tiny_model()
    resumed = train(model, GaussianDiffusion(), dataset, config, masks=tiny_masks(model), checkpoint_path=checkpoint)
    exact = torch.equal(torch.cat([flat(straight.model), flat(straight.ema_model)]),
                        torch.cat([flat(resumed.model), flat(resumed.ema_model)]))
    return dict(outcome=outcome, exact=exact, loss_exact=straight.loss == resumed.loss)


def fid_tiny(cache: str) -> dict:
    """10 samples in blocks of 4 (3 blocks: the ranks get unequal shares), ancestral sampler (fresh
    noise every step)."""
    config = EvalConfig(fid_samples=10, sampler="ddpm", sample_steps=3, sample_batch_size=4, cache_dir=cache)
    evaluator = FidEvaluator(config, "digits", load_dataset("digits"), "cpu", GaussianDiffusion(), progress=False)
    return evaluator.score(tiny_model(), seed=5, return_samples=True)


def lottery_spec(cache: str):
    return tiny_spec(cache, iterations=4, max_rounds=1)


def dropout_spec(cache: str):
    """Round 0 of the tiny U-Net with dropout 0.1, rewind point at iteration 2 of 6."""
    spec = tiny_spec(cache, iterations=6, max_rounds=0)
    spec.model["dropout"] = 0.1
    return spec


def train_with_dropout_and_flips() -> torch.Tensor:
    """4 steps of the tiny U-Net with dropout 0.3 on digits with random flips; the weights, then the EMA's."""
    config = TrainConfig(iterations=4, batch_size=16, warmup=0, ema_decay=0.9, checkpoint_every=1000)
    digits = load_dataset("digits")
    flipping = ImageDataset(digits.images, digits.labels, digits.num_classes, hflip=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UNet(**dict(TINY_MODEL, dropout=0.3))
    result = train(model, GaussianDiffusion(), flipping, config)
    return torch.cat([flat(result.model), flat(result.ema_model)])


# -- the torchrun worker ---------------------------------------------------------------------------
def worker(out: str, cache: str) -> None:
    torch.set_num_threads(1)
    rank, device = D.init_distributed(torch.device("cpu"), Environment.from_environ(os.environ))  # as a command
    import torch.distributed as dist
    from pylth.lottery import LotteryParts

    results = dict(world=D.world_size(), backend=dist.get_backend())

    def gathered(obj):
        every = [None] * D.world_size()
        dist.all_gather_object(every, obj)
        return every

    # helpers
    results["object"] = gathered(D.broadcast_object({"from": rank}))
    like = {"m": torch.zeros(3, dtype=torch.bool), "w": torch.zeros(2, 2)}
    sent = {"m": torch.tensor([True, False, True]), "w": torch.arange(4.0).view(2, 2)} if rank == 0 else None
    results["tensors"] = gathered(D.masks_checksum(D.broadcast_tensors(sent, like)))
    results["rows"] = D.all_gather_rows(torch.full((rank + 1, 2), float(rank))).tolist()
    results["shard"] = gathered(list(D.shard(5)))
    try:
        D.verify_same_on_all_ranks(f"digest of rank {rank}", "masks")
    except RuntimeError as exc:
        results["mismatch"] = str(exc)
    try:
        with D.fail_together("a local step"):
            if rank == 1:
                raise ValueError("missing file on rank 1")
    except (RuntimeError, ValueError) as exc:
        results["fail_together"] = gathered(f"{type(exc).__name__}: {exc}")

    # training: uninterrupted, then killed after the checkpoint at iteration 2 and resumed; rank 1
    # never reads the checkpoint file (rank 0 sends it: machines need not share a disk)
    if rank == 1:
        import pylth.ddpm.trainer.checkpoint as checkpoint

        def no_reading(path, *args, **kwargs):
            raise AssertionError(f"rank 1 read {path}")

        checkpoint.torch_load = no_reading
    weights, loss = train_tiny()
    resumed, resumed_loss = train_tiny(os.path.join(out, "ckpt.pt"), killed_after=2)
    results["same_weights_on_ranks"] = len(set(gathered(D.masks_checksum({"w": weights})))) == 1
    results["loss"], results["resumed_loss"] = loss, resumed_loss
    results["resume_exact"] = bool(torch.equal(weights, resumed))
    results["ckpt_rng_states"] = len(torch_load(os.path.join(out, "ckpt.pt"))["rng"]) if rank == 0 else None

    # a stop signal to one rank: every rank stops at the same step, after rank 0 wrote the checkpoint
    results["preempt"] = gathered(preempted_tiny(os.path.join(out, "preempt.pt"), rank))

    # FID
    fid = fid_tiny(cache)
    results["fid"] = gathered({k: fid[k] for k in ("fid", "kid", "num_samples")})

    # find_ticket: record the masks every rank trains on
    seen = []
    real_train = LotteryParts().train

    def spy(model, *args, masks=None, **kwargs):
        seen.append(D.masks_checksum(masks) if masks else "dense")
        result = real_train(model, *args, masks=masks, **kwargs)
        seen.append(D.masks_checksum({"w": flat(result.model)}))
        return result

    records = find_ticket(lottery_spec(cache), os.path.join(out, "run"), log=lambda _m: None,
                          parts=LotteryParts(train=spy))
    results["lottery_seen"] = gathered(seen)
    results["lottery_sparsity"] = gathered([r["sparsity"] for r in records])

    # dropout and flips: each row of the global batch gets its mask and its flip whatever the processes
    results["dropout_records"] = find_ticket(dropout_spec(cache), os.path.join(out, "dropout-run"),
                                             log=lambda _m: None)
    results["dropout_flips_weights"] = train_with_dropout_and_flips()

    if rank == 0:
        results["work_done_at"] = time.time()  # the job should end soon after this, once rank 1 fails
        torch.save(dict(weights=weights, samples=fid["samples"], results=results), os.path.join(out, "results.pt"))
    D.barrier()
    # A dying rank must end the job; rank 0 waits in a collective that would otherwise never finish.
    if rank == 1:
        raise RuntimeError(FAILING_MESSAGE)
    D.barrier()


# -- the tests -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process here, then the torchrun job; returns (one-process results, job results, job output,
    seconds from the end of the job's work to its exit, the job's run directory)."""
    tmp = tmp_path_factory.mktemp("distributed")
    cache, out = str(tmp / "cache"), tmp / "job"
    out.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # FID features from a classifier trained for a few steps (the tests compare features, not accuracy),
    # cached before both parts: the torchrun job reads it from the same cache
    load_or_train_classifier("digits", load_dataset("digits"), cache, "cpu", steps=QUICK_CLASSIFIER_STEPS)
    try:
        weights, loss = train_tiny()
        single = dict(weights=weights, loss=loss, fid=fid_tiny(cache),
                      lottery=find_ticket(lottery_spec(cache), str(tmp / "single"), log=lambda _m: None),
                      lottery_dir=str(tmp / "single"),
                      dropout_records=find_ticket(dropout_spec(cache), str(tmp / "single-dropout"),
                                                  log=lambda _m: None),
                      dropout_dir=str(tmp / "single-dropout"), dropout_flips_weights=train_with_dropout_and_flips())
    finally:
        torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS="1", **{DIST_TIMEOUT_ENV: "300"})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.abspath(__file__), str(out), cache],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp))
    ended = time.time()
    job = torch_load(str(out / "results.pt")) if (out / "results.pt").exists() else None
    assert job is not None, proc.stderr[-4000:]
    return single, job, proc, ended - job["results"]["work_done_at"], str(out / "run")


def test_two_ranks_train_like_one_process_with_the_same_global_batch(runs):
    single, job, *_ = runs
    r = job["results"]
    assert r["world"] == 2 and r["backend"] == "gloo"
    assert r["same_weights_on_ranks"]
    # Same images, timesteps and noise per global row; only the order of float sums differs.
    torch.testing.assert_close(job["weights"], single["weights"], rtol=0, atol=1e-5)
    assert r["loss"] == pytest.approx(single["loss"], rel=1e-5)
    start = flat(tiny_model())
    assert not torch.equal(job["weights"][:len(start)], start), "training changed the weights"


def test_resume_under_torchrun_equals_the_uninterrupted_run(runs):
    _, job, *_ = runs
    r = job["results"]
    assert r["resume_exact"] and r["resumed_loss"] == r["loss"]
    assert r["ckpt_rng_states"] == 2  # one RNG state per process


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_the_resume_is_exact(runs):
    *_, run_dir = runs
    checkpoint = os.path.join(os.path.dirname(run_dir), "preempt.pt")
    preempt = runs[1]["results"]["preempt"]
    # rank 1 got SIGTERM at iteration 3; both learn of it when the losses are next read back, at 25
    assert [p["outcome"] for p in preempt] == [
        f"stopped by a stop signal to another process after iteration 25 of 30; {checkpoint} holds the state",
        f"stopped by SIGTERM after iteration 25 of 30; {checkpoint} holds the state"]
    assert all(p["exact"] and p["loss_exact"] for p in preempt)


def test_sharded_fid_samples_and_scores_equal_one_process(runs):
    single, job, *_ = runs
    assert torch.equal(job["samples"], single["fid"]["samples"])
    for rank_result in job["results"]["fid"]:  # every rank returns rank 0's scores
        assert rank_result == {k: single["fid"][k] for k in ("fid", "kid", "num_samples")}


def test_find_ticket_round_has_the_same_masks_on_every_rank_and_one_process_sparsity(runs):
    single, job, _, _, run_dir = runs
    seen = job["results"]["lottery_seen"]
    assert len(seen[0]) == 4 and seen[0] == seen[1]  # round 0 dense, round 1 masked; weights after each
    sparsity = job["results"]["lottery_sparsity"]
    assert sparsity[0] == sparsity[1] == [r["sparsity"] for r in single["lottery"]]
    assert sparsity[0][1] > 0.15
    names = sorted(os.listdir(run_dir))
    assert names == sorted(os.listdir(single["lottery_dir"])) and "round_01" in names
    masks, one = torch_load(os.path.join(run_dir, "round_01", "mask.pt")), \
        torch_load(os.path.join(single["lottery_dir"], "round_01", "mask.pt"))
    assert list(masks) == list(one)
    same = sum(int((masks[n] == one[n]).sum()) for n in masks) / sum(m.numel() for m in masks.values())
    assert same > 0.99  # trained weights agree to float rounding: at most a few ties near the cut differ


def test_round_0_with_dropout_matches_one_process(runs):
    single, job, _, _, run_dir = runs
    two_dir = os.path.join(os.path.dirname(run_dir), "dropout-run")
    # Before dropout masks were keyed by the global row, the rewind point (2 steps) differed by 1e-4.
    for name, atol in (("rewind.pt", 1e-6), ("round_00/model.pt", 1e-5)):
        one, two = (torch_load(os.path.join(d, name)) for d in (single["dropout_dir"], two_dir))
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=atol, msg=f"{name}: {key}")
    [one], [two] = single["dropout_records"], job["results"]["dropout_records"]
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-5)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)


def test_dropout_and_flips_are_the_same_per_global_row_in_two_processes(runs):
    single, job, *_ = runs
    torch.testing.assert_close(job["results"]["dropout_flips_weights"], single["dropout_flips_weights"], rtol=0,
                               atol=1e-5)


def test_helpers_broadcast_gather_and_raise_on_every_rank(runs):
    r = runs[1]["results"]
    assert r["object"] == [{"from": 0}, {"from": 0}]
    assert r["tensors"][0] == r["tensors"][1] == D.masks_checksum(
        {"m": torch.tensor([True, False, True]), "w": torch.arange(4.0).view(2, 2)})
    assert r["rows"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert r["shard"] == [[0, 1], [2, 3, 4]]
    assert "masks differ across ranks" in r["mismatch"]
    assert r["fail_together"] == ["RuntimeError: a local step failed on rank 1: ValueError: missing file on rank 1",
                                  "ValueError: missing file on rank 1"]


def test_a_failing_rank_ends_the_job_with_its_error(runs):
    _, _, proc, seconds, _ = runs
    assert proc.returncode != 0
    assert FAILING_MESSAGE in proc.stderr
    # Measured from the end of the work, so a slow machine does not count: well before the 300 s
    # collective timeout that rank 0's last barrier would otherwise wait out, torchrun stops it.
    assert seconds < 240


# -- single-process checks ---------------------------------------------------------------------------
def test_init_distributed_uses_gloo_on_cpu_and_the_configured_timeout(monkeypatch):
    calls = []
    environment = Environment(world_size=2, dist_timeout=datetime.timedelta(seconds=42))
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(D.dist, "get_rank", lambda: 1)
    assert D.init_distributed(torch.device("cpu"), environment) == (1, torch.device("cpu"))
    assert calls == [("gloo", dict(timeout=datetime.timedelta(seconds=42)))]


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_timeout_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=DIST_TIMEOUT_ENV):
        Environment.from_environ({DIST_TIMEOUT_ENV: value})


def test_one_process_needs_no_process_group():
    assert D.init_distributed(torch.device("cpu"), Environment()) == (0, torch.device("cpu"))
    assert not D.is_distributed() and D.is_main() and D.world_size() == 1
    assert list(D.shard(5)) == [0, 1, 2, 3, 4]
    assert D.broadcast_object("x") == "x" and D.all_gather_rows(torch.ones(2, 3)).shape == (2, 3)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_the_range_in_order(world):
    parts = [list(D.shard(11, rank=r, world=world)) for r in range(world)]
    assert sum(parts, []) == list(range(11))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
