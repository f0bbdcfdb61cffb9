"""Algorithm 1: train dense, then prune -> reset -> retrain -> evaluate, one round at a time.

A Lottery is given everything it works with: the spec, the opened run directory and its finished
rounds, the data, and its collaborators (LotteryParts: train, fid_evaluator, render_report). Every
decision that depends on files is made by rank 0 and broadcast, so a ``torchrun`` job resumes
exactly like one process and every rank trains on the same masks and starting weights.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.finite import first_nonfinite
from pylth.ddpm.images import grid_png
from pylth.ddpm.models import model_kind
from pylth.ddpm.trainer import Diverged
from pylth.evaluation.heldout import HeldOut, heldout_loss
from pylth.foundations import distributed as D
from pylth.foundations.devices import resolve_device
from pylth.foundations.environment import Environment
from pylth.foundations.io import remove_file
from pylth.foundations.run_dir import TICKET_FILE, RunDirectory
from pylth.lottery.dense_from import adopt_round_zero, check_adopted
from pylth.lottery.parts import LotteryParts
from pylth.lottery.report import fid_label, format_table
from pylth.lottery.run_reader import reinit_seed
from pylth.lottery.spec import RunSpec
from pylth.pruning import (apply_masks, check_masked_zero, compute_masks, count_macs, module_groups,
                           prunable_parameters, sparsity_report)
from pylth.sparse import dense_state_dict
from pylth.tickets import save_sparse

SAMPLE_GRID = 64  # images in round_XX/samples.png
SAMPLING_SETTINGS = ("sampler", "sample_steps", "eta", "sample_batch_size")  # kept in each ticket file
DIVERGED_REMEDY = ("Lower --lr (or raise --warmup) and rerun with --force: this run is moved aside, nothing is "
                   "deleted, and the search starts over with the new values")


@dataclass
class LotteryData:
    dataset: object  # the training set
    heldout: HeldOut  # fixed images, timesteps and noise for the held-out loss


class Lottery:
    def __init__(self, spec: RunSpec, run: RunDirectory, records: list[dict], data: LotteryData,
                 parts: LotteryParts = LotteryParts(), log: Callable[[str], None] = print,
                 dense_from: str | None = None, environment: Environment = Environment()):
        self.spec, self.run, self.records, self.data, self.parts = spec, run, records, data, parts
        self.dense_from = dense_from  # a run whose finished round 0 this one takes instead of training it
        self.log = log if D.is_main() else (lambda _msg: None)
        self.device = resolve_device(spec.train.device)
        d = spec.diffusion
        self.diffusion = GaussianDiffusion(d.num_timesteps, d.beta_start, d.beta_end)
        self.kind = model_kind(spec.model_kind)
        self.model = self.kind.fresh(spec.model, spec.train.seed)
        self.prunable = [name for name, _ in prunable_parameters(self.model)]
        self.groups = module_groups(self.model, blocks=self.kind.pruning_groups(self.model))
        self.evaluator = parts.fid_evaluator(spec.evaluation, spec.data.dataset, data.dataset, self.device,
                                             self.diffusion, environment=environment, progress=D.is_main())

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
            check_adopted(self.records[0], self.dense_from)
            self.log(f"resuming {self.run.path}: {len(self.records)} finished round(s), last sparsity "
                     f"{100 * self.records[-1]['sparsity']:.2f}%")
        elif self.dense_from is not None:
            self._adopted_round()
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

    def _train(self, k: int, masks, start: int, desc: str, on_iteration=None):
        """The round's training result, and the wall seconds this invocation spent on it (the result's
        own ``seconds`` sum every invocation's, through the checkpoints)."""
        spec = self.spec
        began = time.monotonic()
        try:
            result = self.parts.train(self.model, self.diffusion, self.data.dataset, spec.train, masks=masks,
                                      start_iteration=start, end_iteration=spec.train.iterations,
                                      checkpoint_path=self._checkpoint(k), on_iteration=on_iteration,
                                      progress_desc=desc)
        except Diverged as exc:
            raise Diverged(f"round {k}: {exc}. {DIVERGED_REMEDY}", exc.iteration) from None
        return result, time.monotonic() - began

    def _checkpoint(self, k: int) -> str:
        return self.run.round_file(k, "checkpoint.pt")

    def _dense_round(self) -> None:
        """Round 0: train the dense model from theta_0, saving theta_tau on the way."""
        spec, run, tau = self.spec, self.run, self.spec.rewind_iteration
        started = time.monotonic()
        self.model = self.kind.initial(spec.model, spec.train.seed, spec.init_from)
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
                state = dense_state_dict(getattr(model, "module", model))  # model.pt's format, also if trained sparse
                bad = first_nonfinite(state.items())  # every later round starts from these weights
                if bad is not None:
                    raise Diverged(f"training diverged by iteration {tau}, the rewind point: {bad} holds NaN or "
                                   "infinity", tau)
                self._save({k: v.detach().cpu().clone() for k, v in state.items()}, run.rewind_path)

        checkpoint = self._checkpoint(0)
        with D.fail_together("reading round 0's checkpoint"):
            if D.is_main() and not os.path.exists(run.rewind_path) and os.path.exists(checkpoint) \
                    and run.load(checkpoint, remedy="It was left as it is: delete it to redo round 0's training from "
                                                    "its start")["iteration"] >= tau:
                # Killed between the checkpoint and theta_tau's file: only a restart recovers theta_tau.
                self.log("round 0's checkpoint is past the rewind point, which was not saved: restarting round 0")
                remove_file(checkpoint)
        self.log(f"round 0: dense training, {spec.train.iterations} iterations, rewind point at iteration {tau}")
        result, trained_here = self._train(0, None, 0, "round 0 (dense)", on_iteration=keep_rewind_point)
        if not self._exists(run.rewind_path):
            raise RuntimeError(f"theta_tau was not captured at iteration {tau}; delete {checkpoint} and rerun")
        self._finish_round(0, masks, result, started + trained_here)

    def _adopted_round(self) -> None:
        """Round 0 taken from --dense-from's run: its files copied and checked, its record extended."""
        record = None
        with D.fail_together(f"taking round 0 from --dense-from {self.dense_from}"):
            if D.is_main():
                record = adopt_round_zero(self.run, self.dense_from, self.spec)
                if self.spec.lottery.reset == "init" and not os.path.exists(self.run.init_path):
                    # RUN reset otherwise and kept no theta_0: it is the seed's, made again.
                    theta0 = self.kind.initial(self.spec.model, self.spec.train.seed, self.spec.init_from)
                    self._save(theta0.state_dict(), self.run.init_path)
                self._commit(0, record)
                self._draw_report()
                self.log(f"round 0: taken from {record['dense_from']['path']} ({fid_label([record])} "
                         f"{record['fid']:.3f}, held-out loss {record['loss']:.5f})")
        self.records = D.broadcast_object(self.records)

    def _next_masks(self, k: int, previous: dict) -> dict | None:
        """Round k's masks, pruned from the previous round's trained (EMA) weights by magnitude; None
        when the strategy prunes nothing more."""
        cfg = self.spec.lottery
        self.model.load_state_dict(self._shared_state(self.run.round_file(k - 1, "model.pt")))
        masks = None
        if D.is_main():
            device = next(self.model.parameters()).device
            masks = compute_masks(self.model, cfg.strategy, cfg.prune_ratio, increment=cfg.increment, cap=cfg.cap,
                                  masks={n: m.to(device) for n, m in previous.items()},
                                  seed=self.spec.train.seed + k, blocks=self.kind.pruning_groups(self.model))
            masks = {n: masks[n].cpu() for n in self.prunable}
        masks = self._shared_masks(masks)
        if any(bool((masks[n] & ~previous[n]).any()) for n in masks):
            raise RuntimeError(f"round {k}: the new masks revive pruned weights (masks must nest)")
        if sum(int(m.sum()) for m in masks.values()) >= sum(int(m.sum()) for m in previous.values()):
            return None
        return masks

    def _pruning_round(self, k: int) -> bool:
        """Round k >= 1; returns False when no weight is left to prune."""
        spec, run, cfg = self.spec, self.run, self.spec.lottery
        started = time.monotonic()
        previous = self._shared_masks(run.load(run.round_file(k - 1, "mask.pt")) if D.is_main() else None)
        mask_file = run.round_file(k, "mask.pt")
        if self._exists(mask_file):  # resuming this round: its masks were fixed before training began
            remedy = f"It was left as it is: round {k} has not finished; delete it to prune round {k} again"
            masks = self._shared_masks(run.load(mask_file, remedy=remedy) if D.is_main() else None)
        else:
            masks = self._next_masks(k, previous)
            if masks is None:
                self.log(f"round {k}: the strategy prunes nothing more; stopping")
                return False
            self._save(masks, mask_file)
        self.model.load_state_dict(self._starting_state(k))
        apply_masks(self.model, masks)
        start = spec.rewind_iteration if cfg.reset == "rewind" else 0
        sparsity = sparsity_report(masks, self.groups)["overall"]
        self.log(f"round {k}: {cfg.strategy} pruning to {100 * sparsity:.2f}% sparsity, reset {cfg.reset}, "
                 f"training iterations {start}..{spec.train.iterations}")
        result, trained_here = self._train(k, {n: m.to(self.device) for n, m in masks.items()}, start, f"round {k}")
        self._finish_round(k, masks, result, started + trained_here)
        return True

    def _starting_state(self, k: int) -> dict[str, torch.Tensor]:
        reset = self.spec.lottery.reset
        if reset == "reinit":
            return self.kind.fresh(self.spec.model, reinit_seed(self.spec.train.seed, k)).state_dict()
        return self._shared_state(self.run.init_path if reset == "init" else self.run.rewind_path)

    # -- finishing a round: evaluate, measure, write, commit, report ---------------------------
    def _finish_round(self, k: int, masks: dict, result, started: float) -> None:
        """Evaluate round k, write its files, then append it to rounds.jsonl (the commit point).
        ``started``: when this invocation began the round (time.monotonic), moved on by the time it
        trained: the result's seconds count the training of every invocation instead."""
        ema = result.ema_model.eval()
        check_masked_zero(ema, masks)
        clocks = time.monotonic(), time.process_time()
        fid = self._evaluate(ema)
        loss = heldout_loss(ema, self.diffusion, self.data.heldout, self.device, self.spec.evaluation.sample_batch_size)
        record = self._measure(k, masks, ema, fid, loss, result)
        record.update(train_seconds=result.seconds, train_cpu_seconds=result.cpu_seconds,
                      eval_seconds=time.monotonic() - clocks[0], eval_cpu_seconds=time.process_time() - clocks[1],
                      seconds=time.monotonic() - started + result.seconds)
        if D.is_main():
            record.update(self._write_round_files(k, ema, masks, fid["samples"]))
            self._commit(k, record)
            self._draw_report()
            self.log(f"round {k}: sparsity {100 * record['sparsity']:.2f}%, {fid_label([record])} {record['fid']:.3f}, "
                     f"held-out loss {record['loss']:.5f}, MACs {100 * record['macs'] / record['dense_macs']:.1f}% "
                     f"of dense, {record['seconds']:.0f} s")
        self.records = D.broadcast_object(self.records)

    def _evaluate(self, ema) -> dict:
        """FID of the round's EMA model (every rank samples its share), with the first SAMPLE_GRID
        samples. The samples come from the same seed every round, so samples.png compares rounds too."""
        return self.evaluator.score(ema, seed=self.spec.train.seed, return_samples=SAMPLE_GRID)

    def _measure(self, k: int, masks: dict, ema, fid: dict, loss: float, result) -> dict:
        """Round k's record for rounds.jsonl: sparsity per module, FID, losses, MACs (times: _finish_round)."""
        sparsity = sparsity_report(masks, self.groups)
        macs, dense_macs = count_macs(ema, (1, *self.spec.image_shape), masks={n: m.to(self.device)
                                                                               for n, m in masks.items()})
        return {
            "round": k, "sparsity": sparsity["overall"], "module_sparsity": dict(sparsity["per_module"]),
            "fid": fid["fid"], "fid_features": fid["fid_features"], "fid_weights": fid["fid_weights"],
            "fid_samples": fid["num_samples"],
            "kid": fid.get("kid"), "loss": loss, "train_loss": result.loss,
            "macs": int(macs), "dense_macs": int(dense_macs),
            "active_weights": sum(int(m.sum()) for m in masks.values()),
        }

    def _write_round_files(self, k: int, ema, masks: dict, samples) -> dict:
        """samples.png, model.pt (the dense state_dict) and the ticket file (only the kept weights);
        returns the two models' sizes for the record."""
        run = self.run
        run.save_bytes(grid_png(samples[:SAMPLE_GRID]), run.round_file(k, "samples.png"))
        run.save({n: v.detach().cpu().clone() for n, v in ema.state_dict().items()}, run.round_file(k, "model.pt"))
        spec = self.spec
        facts = dict(round=k, diffusion=asdict(spec.diffusion), image_shape=list(spec.image_shape), seed=spec.train.seed,
                     evaluation={key: getattr(spec.evaluation, key) for key in SAMPLING_SETTINGS})
        ticket_bytes = save_sparse(run.round_file(k, TICKET_FILE), ema, masks, kind=spec.model_kind,
                                   config=spec.model, extra=facts)
        return {"ticket_bytes": ticket_bytes, "dense_bytes": os.path.getsize(run.round_file(k, "model.pt"))}

    def _commit(self, k: int, record: dict) -> None:
        """The round is finished once it is in rounds.jsonl, with the digests of the files it wrote
        (checked on resume and by load_round_start), after checking them against the digests written with
        them; its checkpoint is then of no use."""
        self.run.verify_unfinished(k)
        self.records = self.run.append_round(self.records, dict(record, files=self.run.round_digests(k)))
        self.run.finish_round(k)

    def _draw_report(self) -> None:
        self.run.save_bytes(self.parts.render_report(self.records, title=os.path.basename(self.run.path)),
                            self.run.report_path, digest=False)
