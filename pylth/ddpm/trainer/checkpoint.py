"""Checkpoints of a training run: written atomically by rank 0 with every process's RNG state, read
by rank 0 and sent to the others, and restored so that the run continues bit-identically."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from pylth import distributed as D
from pylth.ddpm.trainer.state import TrainState
from pylth.io import atomic_torch_save, torch_load


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def global_losses(pending: list, world: int) -> list[float]:
    """The global batch's loss per step: the mean over processes of their (equal-sized) batches' losses,
    so every process keeps the same history and checkpoints and resumes agree with one process."""
    losses = torch.stack(pending).float()
    if world > 1:
        dist.all_reduce(losses)
        losses /= world
    return losses.cpu().tolist()


def flush_losses(state: TrainState, world: int) -> None:
    """Move the step losses still on the device into the loss history (one sync for all of them)."""
    if state.pending:
        state.losses.extend(global_losses(state.pending, world))
        state.pending.clear()


def read_checkpoint(path: str | None) -> dict | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None when there is none. Under
    torch.distributed rank 0 reads it and sends it: the other machines need not share its disk."""
    if path is None:
        return None
    ckpt = None
    with D.fail_together(f"reading checkpoint {path}"):
        if D.is_main() and os.path.exists(path):
            ckpt = torch_load(path, map_location="cpu")
    return D.broadcast_object(ckpt)


def restore(state: TrainState, ckpt: dict, path: str, device: torch.device, end: int) -> None:
    """Continue from ``ckpt``: weights, EMA, optimizer, counters, loss history and this process's RNG."""
    rank, world = D.rank(), D.world_size()
    state.model.load_state_dict(ckpt["model"])
    state.ema_model.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.iteration, state.ema_updates = int(ckpt["iteration"]), int(ckpt["ema_updates"])
    state.losses.extend(ckpt["losses"])
    rng = ckpt["rng"]  # one state per process
    if len(rng) != world:
        raise ValueError(f"checkpoint {path} was written by {len(rng)} processes, not {world}")
    _set_rng_state(rng[rank], device)
    if state.iteration > end:
        raise ValueError(f"checkpoint {path} is at iteration {state.iteration}, past the end {end}")


def write_checkpoint(state: TrainState, path: str, config, device: torch.device) -> None:
    """Called by every process (it gathers their RNG states); rank 0 writes. The checkpoint holds every
    step's loss so far, or a resumed run would report another loss."""
    world = D.world_size()
    flush_losses(state, world)
    rng = [_rng_state(device)]
    if D.is_distributed():
        rng = [None] * world
        dist.all_gather_object(rng, _rng_state(device))
    if D.is_main():
        atomic_torch_save(dict(model=state.model.state_dict(), ema=state.ema_model.state_dict(),
                               optimizer=state.optimizer.state_dict(), iteration=state.iteration,
                               ema_updates=state.ema_updates, losses=[float(x) for x in state.losses], rng=rng,
                               config=dataclasses.asdict(config)), path)
