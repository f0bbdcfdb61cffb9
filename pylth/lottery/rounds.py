"""Algorithm 1: train dense, then prune -> reset -> retrain -> evaluate, one round at a time.

Every decision that depends on files is made by rank 0 and broadcast, so a ``torchrun`` job resumes
exactly like one process and every rank trains on the same masks and starting weights.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from pylth.ddpm.config import DataConfig, DiffusionConfig, EvalConfig
from pylth.ddpm.data import load_dataset
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.fid import evaluate_fid
from pylth.ddpm.trainer import TrainConfig, apply_masks, check_masked_zero, resolve_device, train
from pylth import distributed as D
from pylth.lottery.config import LotteryConfig
from pylth.lottery.evaluate import heldout_loss, make_heldout
from pylth.lottery.report import fid_label, format_table, render_report, render_samples
from pylth.lottery.resume import open_run
from pylth.lottery.run_dir import RunDirectory
from pylth.lottery.ticket import fresh_model, reinit_seed
from pylth.pruning import compute_masks, count_macs, module_groups, prunable_parameters, sparsity_report

SAMPLE_GRID = 64  # images in round_XX/samples.png


@dataclass
class RunSpec:
    """Everything that defines a run; its JSON form is config.json."""

    data: DataConfig
    model: dict  # UNet constructor arguments
    image_shape: tuple
    train: TrainConfig
    diffusion: DiffusionConfig
    evaluation: EvalConfig
    lottery: LotteryConfig

    @property
    def rewind_iteration(self) -> int:
        return math.floor(self.lottery.rewind_fraction * self.train.iterations + 0.5)

    def to_json(self) -> dict:
        out = asdict(self)
        out["rewind_iteration"] = self.rewind_iteration
        return out


class Lottery:
    def __init__(self, spec: RunSpec, out: str, *, force: bool = False, log: Callable[[str], None] = print):
        self.spec, self.run = spec, RunDirectory(out)
        self.log = log if D.is_main() else (lambda _msg: None)
        self.device = resolve_device(spec.train.device)
        d = spec.diffusion
        self.diffusion = GaussianDiffusion(d.num_timesteps, d.beta_start, d.beta_end)
        self.model = fresh_model(spec.model, spec.train.seed)
        self.prunable = [name for name, _ in prunable_parameters(self.model)]
        self.groups = module_groups(self.model)
        # The data first: a missing file must not leave a half-made run directory behind.
        data = spec.data
        if data.download and D.is_local_main():  # one process per machine downloads, the others wait and read
            load_dataset(data.dataset, data.data_root, download=True, train=True)
        D.barrier()
        self.dataset = load_dataset(data.dataset, data.data_root, train=True)
        self.heldout = make_heldout(load_dataset(data.dataset, data.data_root, train=False),
                                    spec.lottery.heldout_samples, self.diffusion.num_timesteps, spec.train.seed)
        # Rank 0 opens (or refuses) the run directory; every rank learns the outcome.
        outcome, error = None, None
        if D.is_main():
            try:
                outcome = ("ok", open_run(self.run, spec.to_json(), force=force, log=self.log))
            except ValueError as exc:
                outcome, error = ("error", str(exc)), exc
        status, payload = D.broadcast_object(outcome)
        if error is not None:
            raise error
        if status == "error":
            raise ValueError(payload)
        self.records: list[dict] = payload

    # -- files, read on rank 0 and broadcast ---------------------------------------------------
    def _shared_state(self, path: str) -> dict[str, torch.Tensor]:
        like = self.model.state_dict()
        return D.broadcast_tensors(self.run.load(path) if D.is_main() else None, like)

    def _shared_masks(self, masks: dict | None) -> dict[str, torch.Tensor]:
        like = {n: torch.empty(p.shape, dtype=torch.bool) for n, p in prunable_parameters(self.model)}
        masks = D.broadcast_tensors(masks, like)
        D.verify_same_on_all_ranks(D.masks_checksum(masks), "masks")
        return masks

    def _exists(self, path: str) -> bool:
        return bool(D.broadcast_object(os.path.exists(path) if D.is_main() else None))

    def _save(self, obj, path: str) -> None:
        if D.is_main():
            self.run.save(obj, path)

    # -- the algorithm -------------------------------------------------------------------------
    def run_all(self) -> list[dict]:
        if self.records:
            self.log(f"resuming {self.run.path}: {len(self.records)} finished round(s), last sparsity "
                     f"{100 * self.records[-1]['sparsity']:.2f}%")
        else:
            self._dense_round()
        while self._should_continue():
            if not self._pruning_round(len(self.records)):
                break
        if D.is_main():
            self.log(format_table(self.records))
            self.log(f"run directory: {self.run.path}")
        return self.records

    def _should_continue(self) -> bool:
        cfg, last = self.spec.lottery, self.records[-1]
        if last["sparsity"] >= cfg.target_sparsity:
            self.log(f"target sparsity {100 * cfg.target_sparsity:.2f}% reached")
            return False
        if len(self.records) - 1 >= cfg.max_rounds:
            self.log(f"--max-rounds {cfg.max_rounds} done (sparsity {100 * last['sparsity']:.2f}%)")
            return False
        return True

    def _dense_round(self) -> None:
        """Round 0: train the dense model from theta_0, saving theta_tau on the way."""
        spec, run, tau = self.spec, self.run, self.spec.rewind_iteration
        started = time.time()
        self.model = fresh_model(spec.model, spec.train.seed)
        theta0 = {k: v.clone() for k, v in self.model.state_dict().items()}
        if spec.lottery.reset == "init" and not self._exists(run.init_path):
            self._save(theta0, run.init_path)
        masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable_parameters(self.model)}
        if not self._exists(run.round_file(0, "mask.pt")):
            self._save(masks, run.round_file(0, "mask.pt"))
        if tau == 0 and not self._exists(run.rewind_path):
            self._save(theta0, run.rewind_path)

        def keep_rewind_point(iteration: int, model) -> None:
            # ``iteration`` counts the steps taken so far.
            if iteration == tau:
                state = getattr(model, "module", model).state_dict()
                self._save({k: v.detach().cpu().clone() for k, v in state.items()}, run.rewind_path)

        checkpoint = run.round_file(0, "checkpoint.pt")
        if D.is_main() and not os.path.exists(run.rewind_path) and os.path.exists(checkpoint) \
                and run.load(checkpoint)["iteration"] >= tau:
            # Killed between the checkpoint and theta_tau's file: only a restart recovers theta_tau.
            self.log("round 0's checkpoint is past the rewind point, which was not saved: restarting round 0")
            os.remove(checkpoint)
        D.barrier()
        self.log(f"round 0: dense training, {spec.train.iterations} iterations, rewind point at iteration {tau}")
        result = train(self.model, self.diffusion, self.dataset, spec.train, masks=None, start_iteration=0,
                       end_iteration=spec.train.iterations, checkpoint_path=checkpoint,
                       on_iteration=keep_rewind_point, progress_desc="round 0 (dense)")
        if not self._exists(run.rewind_path):
            raise RuntimeError(f"theta_tau was not captured at iteration {tau}; delete {checkpoint} and rerun")
        self._finish_round(0, masks, result, started)

    def _pruning_round(self, k: int) -> bool:
        """Round k >= 1; returns False when no weight is left to prune."""
        spec, run, cfg = self.spec, self.run, self.spec.lottery
        started = time.time()
        previous = self._shared_masks(run.load(run.round_file(k - 1, "mask.pt")) if D.is_main() else None)
        mask_file = run.round_file(k, "mask.pt")
        if self._exists(mask_file):  # resuming this round: its masks were fixed before training began
            masks = self._shared_masks(run.load(mask_file) if D.is_main() else None)
        else:
            trained = self._shared_state(run.round_file(k - 1, "model.pt"))
            self.model.load_state_dict(trained)
            masks = None
            if D.is_main():  # pruning scores: magnitudes of the previous round's trained (EMA) weights
                device = next(self.model.parameters()).device
                masks = compute_masks(self.model, cfg.strategy, cfg.prune_ratio, increment=cfg.increment, cap=cfg.cap,
                                      masks={n: m.to(device) for n, m in previous.items()}, seed=spec.train.seed + k)
                masks = {n: masks[n].cpu() for n in self.prunable}
            masks = self._shared_masks(masks)
            if any(bool((masks[n] & ~previous[n]).any()) for n in masks):
                raise RuntimeError(f"round {k}: the new masks revive pruned weights (masks must nest)")
            if sum(int(m.sum()) for m in masks.values()) >= sum(int(m.sum()) for m in previous.values()):
                self.log(f"round {k}: the strategy prunes nothing more; stopping")
                return False
            self._save(masks, mask_file)
        self.model.load_state_dict(self._starting_state(k))
        apply_masks(self.model, masks)
        start = spec.rewind_iteration if cfg.reset == "rewind" else 0
        sparsity = sparsity_report(masks, self.groups)["overall"]
        self.log(f"round {k}: {cfg.strategy} pruning to {100 * sparsity:.2f}% sparsity, reset {cfg.reset}, "
                 f"training iterations {start}..{spec.train.iterations}")
        result = train(self.model, self.diffusion, self.dataset, spec.train,
                       masks={n: m.to(self.device) for n, m in masks.items()}, start_iteration=start,
                       end_iteration=spec.train.iterations, checkpoint_path=run.round_file(k, "checkpoint.pt"),
                       progress_desc=f"round {k}")
        self._finish_round(k, masks, result, started)
        return True

    def _starting_state(self, k: int) -> dict[str, torch.Tensor]:
        reset = self.spec.lottery.reset
        if reset == "reinit":
            return fresh_model(self.spec.model, reinit_seed(self.spec.train.seed, k)).state_dict()
        return self._shared_state(self.run.init_path if reset == "init" else self.run.rewind_path)

    def _finish_round(self, k: int, masks: dict, result, started: float) -> None:
        """Evaluate round k, write its files, then append it to rounds.jsonl (the commit point)."""
        spec, run, ev = self.spec, self.run, self.spec.evaluation
        ema = result.ema_model.eval()
        check_masked_zero(ema, masks)
        # The FID samples come from the same seed every round, so samples.png compares rounds too.
        fid = evaluate_fid(ema, self.diffusion, spec.data.dataset, self.dataset, ev.fid_samples, sampler=ev.sampler,
                           steps=ev.sample_steps, eta=ev.eta, seed=spec.train.seed, device=self.device,
                           fid_features=ev.fid_features, inception_path=ev.inception_path, cache_dir=ev.cache_dir,
                           batch_size=ev.sample_batch_size, progress=D.is_main(), return_samples=SAMPLE_GRID)
        loss = heldout_loss(ema, self.diffusion, self.heldout, self.device, ev.sample_batch_size)
        sparsity = sparsity_report(masks, self.groups)
        device_masks = {n: m.to(self.device) for n, m in masks.items()}
        macs, dense_macs = count_macs(ema, (1, *spec.image_shape), masks=device_masks)
        if D.is_main():
            run.save_bytes(render_samples(fid["samples"][:SAMPLE_GRID]), run.round_file(k, "samples.png"))
            state = {n: v.detach().cpu().clone() for n, v in ema.state_dict().items()}  # rank 0 writes it
            run.save(state, run.round_file(k, "model.pt"))
            record = {
                "round": k, "sparsity": sparsity["overall"], "module_sparsity": dict(sparsity["per_module"]),
                "fid": fid["fid"], "fid_features": fid["fid_features"], "fid_weights": fid["fid_weights"],
                "fid_samples": fid["num_samples"],
                "kid": fid.get("kid"), "loss": loss, "train_loss": result.loss,
                "macs": int(macs), "dense_macs": int(dense_macs),
                "active_weights": sum(int(m.sum()) for m in masks.values()),
                "seconds": time.time() - started,
            }
            self.records = run.append_round(self.records, record)
            checkpoint = run.round_file(k, "checkpoint.pt")
            if os.path.exists(checkpoint):
                os.remove(checkpoint)
            run.save_bytes(render_report(self.records, title=os.path.basename(run.path)), run.report_path)
            self.log(f"round {k}: sparsity {100 * record['sparsity']:.2f}%, {fid_label([record])} {record['fid']:.3f}, "
                     f"held-out loss {loss:.5f}, MACs {100 * macs / dense_macs:.1f}% of dense, "
                     f"{record['seconds']:.0f} s")
        self.records = D.broadcast_object(self.records)


def find_ticket(spec: RunSpec, out: str, *, force: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) Algorithm 1 into run directory ``out``; returns the finished rounds' records."""
    spec.lottery.validate()
    spec = replace(spec, evaluation=spec.evaluation.resolved(spec.data.dataset))  # config.json: no "auto"
    return Lottery(spec, out, force=force, log=log).run_all()
