"""Checkpoints of a training run: written atomically by rank 0 with every process's RNG state, read
by rank 0 and sent to the others, and restored so that the run continues bit-identically. A
checkpoint never holds non-finite weights: the last good one stays on disk when training diverges."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from pylth.ddpm.finite import first_nonfinite
from pylth.ddpm.trainer.divergence import Diverged
from pylth.ddpm.trainer.sparse import sparse_layers
from pylth.ddpm.trainer.state import TrainState
from pylth.foundations import distributed as D
from pylth.foundations.io import atomic_torch_save, torch_load


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def read_checkpoint(path: str | None) -> dict | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None when there is none. Under
    torch.distributed rank 0 reads it and sends it: the other machines need not share its disk."""
    if path is None:
        return None
    ckpt = None
    with D.fail_together(f"reading checkpoint {path}"):
        if D.is_main() and os.path.exists(path):
            ckpt = torch_load(path, map_location="cpu",
                              remedy="It was left as it is: delete it to redo the training it holds from its start")
    return D.broadcast_object(ckpt)


def restore(state: TrainState, ckpt: dict, path: str, device: torch.device, end: int) -> None:
    """Continue from ``ckpt``: weights, EMA, optimizer, counters, loss history and this process's RNG."""
    rank, world = D.rank(), D.world_size()
    _check_sparse_training(ckpt, state, path)
    try:
        state.model.load_state_dict(ckpt["model"])
        state.ema_model.load_state_dict(ckpt["ema"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.iteration, state.ema_updates = int(ckpt["iteration"]), int(ckpt["ema_updates"])
        state.losses.extend(ckpt["losses"])
        state.earlier_seconds = tuple(ckpt.get("seconds", (0.0, 0.0)))  # older checkpoints: not counted
        rng = ckpt["rng"]  # one state per process
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} does not fit this training run ({reason}). Nothing was changed: "
                         "delete it to train from the start, or use another output folder") from None
    if len(rng) != world:
        raise ValueError(f"checkpoint {path} was written by {len(rng)} processes, not {world}")
    _set_rng_state(rng[rank], device)
    if state.iteration > end:
        raise ValueError(f"checkpoint {path} is at iteration {state.iteration}, past the end {end}")
    state.checkpointed = state.iteration


def _written_setting(ckpt: dict) -> str:
    config = ckpt.get("config")
    return config.get("sparse_training", "off") if isinstance(config, dict) else "off"


def _written_layers(ckpt: dict) -> list[str]:
    return list(ckpt.get("sparse_layers", []))  # checkpoints from before sparse training: none


def checkpoint_sparse_layers(ckpt, setting: str) -> list[str] | None:
    """The layers ``ckpt`` was trained sparse in, when it was written with ``setting`` (None: no
    checkpoint, or another setting, which _check_sparse_training refuses)."""
    if not isinstance(ckpt, dict) or _written_setting(ckpt) != setting:
        return None
    return _written_layers(ckpt)


def _check_sparse_training(ckpt: dict, state: TrainState, path: str) -> None:
    """A checkpoint holds the state of what was trained: resuming needs the same layers trained sparse
    (which is what decides the computation and the state's format; checkpoints from before sparse
    training trained dense)."""
    written = _written_setting(ckpt)
    written_layers, layers = _written_layers(ckpt), sparse_layers(state.model)
    if written_layers != layers:
        raise ValueError(f"checkpoint {path} was written with --sparse-training {written} ({len(written_layers)} "
                         f"layer(s) sparse), this run has {state.sparse_training} ({len(layers)}). Nothing was "
                         f"changed: rerun with --sparse-training {written}, or delete it to train from the start")


def write_checkpoint(state: TrainState, path: str, config, device: torch.device) -> None:
    """Called by every process (it gathers their RNG states) after the step losses were read back
    (``read_window``); rank 0 writes. The checkpoint holds every step's loss so far, or a resumed run
    would report another loss. Non-finite weights raise Diverged instead (the same on every rank:
    DDP keeps the weights equal)."""
    world = D.world_size()
    if state.pending:
        raise RuntimeError("write_checkpoint: the step losses must be read back (read_window) first")
    bad = first_nonfinite(state.model.named_parameters())
    if bad is not None:
        raise Diverged(f"training diverged by iteration {state.iteration}: {bad} holds NaN or infinity",
                       state.iteration)
    rng = [_rng_state(device)]
    if D.is_distributed():
        rng = [None] * world
        dist.all_gather_object(rng, _rng_state(device))
    if D.is_main():
        atomic_torch_save(dict(model=state.model.state_dict(), ema=state.ema_model.state_dict(),
                               optimizer=state.optimizer.state_dict(), iteration=state.iteration,
                               ema_updates=state.ema_updates, losses=[float(x) for x in state.losses], rng=rng,
                               seconds=list(state.seconds),
                               config=dataclasses.asdict(config), sparse_layers=sparse_layers(state.model)), path,
                          digest=True)  # resume checks it (torch_load): a flipped byte would load unnoticed
    state.checkpointed = state.iteration
