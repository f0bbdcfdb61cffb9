"""The training loop: set up, resume, then step, average, report and checkpoint until the end."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from pylth import distributed as D
from pylth.ddpm.models.registry import call_model
from pylth.ddpm.trainer.checkpoint import flush_losses, read_checkpoint, restore, write_checkpoint
from pylth.ddpm.trainer.config import TrainConfig, learning_rate, resolve_device
from pylth.ddpm.trainer.loader import make_loader
from pylth.ddpm.trainer.state import TrainState, setup_state
from pylth.ddpm.trainer.step import iteration_noise, train_step, update_ema
from pylth.pruning.model_masks import check_masked_zero

REPORT_EVERY = 25  # steps between reading the losses back (one sync) and updating the progress bar


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module
    loss: float
    iterations: int


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
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def train(model: nn.Module, diffusion, dataset, config: TrainConfig, *, masks: dict | None = None,
          start_iteration: int = 0, end_iteration: int | None = None, ema_state: dict | None = None,
          checkpoint_path: str | None = None, on_iteration=None, progress_desc: str = "train",
          predict=call_model) -> TrainResult:
    """Train ``model`` (masked by ``masks``, name -> bool) for iterations [start_iteration,
    end_iteration) with a fresh MaskedAdam, a linear LR warm-up, gradient clipping and a masked EMA.
    ``ema_state`` initialises the EMA (default: the model as it is at the start). ``checkpoint_path``:
    resume from it when it exists, write it every ``config.checkpoint_every`` iterations and at the
    end. ``on_iteration(steps_taken, model)`` runs after every step; ``predict`` is how the model kind
    is asked for its noise prediction."""
    end = _check_range(start_iteration, end_iteration, config)
    device = resolve_device(config.device)
    rank, world = D.rank(), D.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    state = setup_state(model, config, device, masks, ema_state, start_iteration)
    torch.manual_seed(config.seed * 100003 + start_iteration + rank)  # dropout: per process
    ckpt = read_checkpoint(checkpoint_path)
    if ckpt is not None:
        restore(state, ckpt, checkpoint_path, device, end)
    _run_steps(state, _wrap_for_processes(model, device), diffusion, dataset, config, device, end,
               checkpoint_path, on_iteration, progress_desc, predict)
    check_masked_zero(state.model, state.masks)
    check_masked_zero(state.ema_model, state.masks)
    if checkpoint_path is not None:
        write_checkpoint(state, checkpoint_path, config, device)
    if D.is_distributed():
        dist.barrier()
    loss = sum(state.losses) / len(state.losses) if state.losses else float("nan")
    return TrainResult(model=state.model, ema_model=state.ema_model, loss=loss, iterations=state.iteration)


def _run_steps(state: TrainState, net, diffusion, dataset, config: TrainConfig, device, end: int,
               checkpoint_path, on_iteration, progress_desc: str, predict) -> None:
    rank, world = D.rank(), D.world_size()
    loader = make_loader(dataset, config, state.iteration, end, rank, world, device)
    use_bf16 = config.bf16 and device.type == "cuda"
    params = list(state.model.parameters())
    ema_params = list(state.ema_model.parameters())
    pruned = state.pruned
    bar = tqdm(total=end, initial=state.iteration, desc=progress_desc, disable=rank != 0, dynamic_ncols=True)
    for x0, _ in loader:
        x0 = x0.to(device, non_blocking=True)
        for group in state.optimizer.param_groups:
            group["lr"] = learning_rate(config, state.iteration)
        t, noise = iteration_noise(diffusion, config, state.iteration, x0, rank, world)
        loss = train_step(net, diffusion, x0, state.optimizer, params, pruned, config.grad_clip, use_bf16, t, noise,
                          predict=predict)
        update_ema(ema_params, params, config, state.ema_updates)
        state.ema_updates += 1
        state.iteration += 1
        state.pending.append(loss)
        if on_iteration is not None:
            on_iteration(state.iteration, state.model)
        if state.iteration % REPORT_EVERY == 0 or state.iteration == end:
            flush_losses(state, world)
            bar.set_postfix(loss=f"{sum(state.losses) / len(state.losses):.4f}", refresh=False)
        bar.update(1)
        if checkpoint_path is not None and state.iteration % config.checkpoint_every == 0 and state.iteration != end:
            check_masked_zero(state.model, state.masks)
            write_checkpoint(state, checkpoint_path, config, device)
    bar.close()
