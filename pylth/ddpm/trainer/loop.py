"""The training loop: set up, resume, then step, average, report and checkpoint until the end, or
until training diverges (Diverged) or a stop signal arrives (Preempted, once the checkpoint is
written)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from pylth.ddpm.data import without_flips
from pylth.ddpm.finite import first_nonfinite
from pylth.ddpm.models.dropout import clear_dropout_step, keyed_dropouts, set_dropout_step
from pylth.ddpm.trainer.checkpoint import checkpoint_sparse_layers, read_checkpoint, restore, write_checkpoint
from pylth.ddpm.trainer.config import TrainConfig, learning_rate
from pylth.ddpm.trainer.divergence import Diverged, read_window
from pylth.ddpm.trainer.loader import make_loader
from pylth.ddpm.trainer.sparse import dense_copy, to_dense
from pylth.ddpm.trainer.state import TrainState, setup_state
from pylth.ddpm.trainer.step import iteration_flips, iteration_noise, train_step, update_ema
from pylth.foundations import distributed as D
from pylth.foundations.devices import resolve_device
from pylth.foundations.preemption import Preempted, deferred_stop, stop_requested
from pylth.pruning.model_masks import check_masked_zero

# Steps between reading the losses back (one sync): the progress bar, the divergence check and,
# under torch.distributed, the processes' agreement on a stop signal happen then.
REPORT_EVERY = 25


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module
    loss: float
    iterations: int
    seconds: float = 0.0  # wall seconds of training, summed over every invocation that led to the result
    cpu_seconds: float = 0.0  # the same in this process's CPU time


def _check_range(start_iteration, end_iteration, config: TrainConfig) -> int:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    end = config.iterations if end_iteration is None else end_iteration
    if not isinstance(end, int) or end < 0:
        raise ValueError(f"end_iteration must be a non-negative int, got {end!r}")
    if not isinstance(start_iteration, int) or not 0 <= start_iteration <= end:
        raise ValueError(f"start_iteration must be an int in [0, end_iteration={end}], got {start_iteration!r}")
    return end


def _wrap_for_processes(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP under torch.distributed, else the model itself."""
    if not D.is_distributed():
        return model
    # 1x1 convolutions get channels-last weight gradients whose strides differ from the bucket's
    # only along size-1 dimensions: the same memory order, so DDP's warning about it is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Buffers are not broadcast each forward: the models have none that training changes, and a sparse
    # model's (its fixed taps and row_ptr) would otherwise cost a broadcast of its structure per step.
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                               broadcast_buffers=False)


def train(model: nn.Module, diffusion, dataset, config: TrainConfig, *, masks: dict | None = None,
          start_iteration: int = 0, end_iteration: int | None = None, ema_state: dict | None = None,
          checkpoint_path: str | None = None, on_iteration=None, progress_desc: str = "train") -> TrainResult:
    """Train ``model`` (masked by ``masks``, name -> bool) for iterations [start_iteration,
    end_iteration) with a fresh MaskedAdam, a linear LR warm-up, gradient clipping and a masked EMA.
    ``ema_state`` initialises the EMA (default: the model as it is at the start). ``checkpoint_path``:
    resume from it when it exists, write it every ``config.checkpoint_every`` iterations and at the
    end. ``on_iteration(steps_taken, model)`` runs after every step, with the module being trained
    (under sparse training a sparsified copy: pylth.sparse.dense_state_dict reads it in model.pt's
    format). ``model(x_t, t)`` is its noise prediction (as every model kind's models answer).

    ``config.sparse_training`` picks what trains (see ``sparse``); whatever it picks, the returned model
    is ``model`` itself holding the trained weights, and the EMA model a dense copy: both in the dense
    masked format. The checkpoint holds what was trained (the compact state under sparse training)."""
    end = _check_range(start_iteration, end_iteration, config)
    device = resolve_device(config.device)
    rank, world = D.rank(), D.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    ckpt = read_checkpoint(checkpoint_path)
    # A checkpoint of the same setting fixes the layers trained sparse: under auto they could differ
    # on another device or pylth version, and the checkpoint's state is in its layers' format.
    state = setup_state(model, config, device, masks, ema_state, start_iteration,
                        sparse_layers=checkpoint_sparse_layers(ckpt, config.sparse_training))
    # Dropout and flips are keyed by (seed, iteration, global row); this seeds what a model kind may still
    # draw from the global generator, per process.
    torch.manual_seed(config.seed * 100003 + start_iteration + rank)
    if ckpt is not None:
        restore(state, ckpt, checkpoint_path, device, end)
    with deferred_stop():  # a signal during training is answered below, once the checkpoint is written
        try:
            stop = _run_steps(state, _wrap_for_processes(state.model, device), diffusion, dataset, config, device, end,
                              checkpoint_path, on_iteration, progress_desc)
            check_masked_zero(state.model, state.masks)
            check_masked_zero(state.ema_model, state.masks)
            for what, module in (("the model", state.model), ("the EMA model", state.ema_model)):
                bad = first_nonfinite(module.named_parameters())
                if bad is not None:
                    raise Diverged(f"training diverged by iteration {state.iteration}: {bad} of {what} holds NaN "
                                   "or infinity", state.iteration)
            if checkpoint_path is not None:
                write_checkpoint(state, checkpoint_path, config, device)
        except Diverged as exc:
            raise Diverged(f"{exc}; {_last_good(state, checkpoint_path)}", exc.iteration) from None
        if D.is_distributed():
            dist.barrier()
        if stop:
            saved = f"; {checkpoint_path} holds the state" if checkpoint_path is not None else ""
            raise Preempted(f"stopped by {stop_requested() or 'a stop signal to another process'} after "
                            f"iteration {state.iteration} of {end}{saved}")
    loss = sum(state.losses) / len(state.losses) if state.losses else float("nan")
    ema_model = state.ema_model if state.model is state.dense_model else dense_copy(state.ema_model, model)
    return TrainResult(model=to_dense(state.model, state.dense_model), ema_model=ema_model, loss=loss,
                       iterations=state.iteration, seconds=state.seconds[0], cpu_seconds=state.seconds[1])


def _last_good(state: TrainState, checkpoint_path) -> str:
    if checkpoint_path is None:
        return "nothing was saved"
    if state.checkpointed is None:
        return f"no checkpoint was written yet ({checkpoint_path})"
    return f"the last good checkpoint, {checkpoint_path}, is at iteration {state.checkpointed} and stays"


def _run_steps(state: TrainState, net, diffusion, dataset, config: TrainConfig, device, end: int,
               checkpoint_path, on_iteration, progress_desc: str) -> bool:
    """Step until ``end``; returns True when the processes agreed to stop on a signal first."""
    rank, world = D.rank(), D.world_size()
    dataset, flips = without_flips(dataset)  # the data set's random flips come from the step's key instead
    loader = make_loader(dataset, config, state.iteration, end, rank, world, device)
    use_bf16 = config.bf16 and device.type == "cuda"
    dropouts = keyed_dropouts(state.model)
    params = list(state.model.parameters())
    ema_params = list(state.ema_model.parameters())
    pruned = state.pruned
    stop = False
    report = getattr(state.model, "sparsify_report", None)
    if report is not None:  # what --sparse-training chose, on the progress bar
        progress_desc = f"{progress_desc} ({len(report.sparse)} of {len(report)} layers sparse)"
    bar = tqdm(total=end, initial=state.iteration, desc=progress_desc, disable=rank != 0, dynamic_ncols=True)
    try:
        for x0, _ in loader:
            x0 = x0.to(device, non_blocking=True)
            if flips:
                x0 = iteration_flips(config, state.iteration, x0, rank, world)
            for group in state.optimizer.param_groups:
                group["lr"] = learning_rate(config, state.iteration)
            t, noise = iteration_noise(diffusion, config, state.iteration, x0, rank, world)
            set_dropout_step(dropouts, config.seed, state.iteration, rank, world)  # this rank's rows: rank::world
            loss, grad_norm = train_step(net, diffusion, x0, state.optimizer, params, pruned, config.grad_clip,
                                         use_bf16, t, noise)
            update_ema(ema_params, params, config, state.ema_updates)
            state.ema_updates += 1
            state.iteration += 1
            state.pending.append(loss)
            if grad_norm is not None:
                state.pending_norms.append(grad_norm)
            if on_iteration is not None:
                on_iteration(state.iteration, state.model)
            checkpoint_due = (checkpoint_path is not None and state.iteration % config.checkpoint_every == 0
                              and state.iteration != end)
            # One process stops right after the step a signal came in; several agree at the next reading.
            if (state.iteration % REPORT_EVERY == 0 or state.iteration == end or checkpoint_due
                    or (world == 1 and stop_requested())):
                stop = read_window(state, world, stop_requested() is not None)
                bar.set_postfix(loss=f"{sum(state.losses) / len(state.losses):.4f}", refresh=False)
            bar.update(1)
            if stop:
                break
            if checkpoint_due:
                check_masked_zero(state.model, state.masks)
                write_checkpoint(state, checkpoint_path, config, device)
    finally:
        clear_dropout_step(dropouts)
        bar.close()
    return stop
