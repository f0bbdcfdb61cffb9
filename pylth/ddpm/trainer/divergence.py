"""Divergence: a non-finite loss or gradient norm stops training before any checkpoint holds it.

The check rides on what training reads back anyway: the step losses, read in bulk every
REPORT_EVERY steps and before every checkpoint, together with the gradient norms clip_grad_norm_
already computed. So it adds no device sync per step, and it stops training within REPORT_EVERY
steps. Under torch.distributed the same reduction carries every rank's stop request (a signal), so
all ranks take both decisions at the same step.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from pylth.ddpm.trainer.state import TrainState


class Diverged(ValueError):
    """Training met a non-finite loss or gradient norm at ``iteration`` (1-based: the step count)."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


def read_window(state: TrainState, world: int, stop: bool) -> bool:
    """Move the losses still on the device into the loss history (one sync for all of them): the
    mean over processes of their batches' losses, so every process keeps the same history. Raises
    Diverged at the first step with a non-finite loss or gradient norm; returns whether any process
    asked to stop."""
    n = len(state.pending)
    if not n and world == 1:
        return stop
    if n:
        values = [torch.stack(state.pending).float()]
        if state.pending_norms:
            values.append(torch.stack(state.pending_norms).float())
        device = values[0].device
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        values = []
    packed = torch.cat(values + [torch.tensor([float(stop)], device=device)])
    if world > 1:
        dist.all_reduce(packed)
        packed[:-1] /= world  # under DDP the gradient norms are already equal on every rank
    host = packed.cpu().tolist()
    losses, norms = host[:n], host[n:-1] or [None] * n
    state.pending.clear()
    state.pending_norms.clear()
    for i, (loss, norm) in enumerate(zip(losses, norms)):
        if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm)):
            iteration = state.iteration - n + i + 1
            what = f"the loss is {loss:g}" + ("" if norm is None else f" and the gradient norm {norm:g}")
            raise Diverged(f"training diverged at iteration {iteration}: {what}", iteration)
    state.losses.extend(losses)
    return host[-1] > 0
