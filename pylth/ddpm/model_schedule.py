"""One reverse chain on several models: a schedule that gives each step of the chain to a model.

``ModelSchedule`` is a module whose forward picks, from the timestep, the model that owns that step,
so every sampler and the sampling loop use it like any model: the chain draws the same noise
whichever model denoises a step, and a schedule that gives every step to one model samples exactly
what that model samples alone. ``switch_owners`` splits a chain into consecutive parts by fractions
(the dense model for the first fraction F of the chain, then a ticket, is ``[F, 1 - F]``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def switch_owners(timesteps: Sequence[int], fractions: Sequence[float]) -> dict[int, int]:
    """timestep -> model index: model i denoises the next ``fractions[i]`` of the chain's steps, in
    the chain's order (descending timesteps). Part boundaries are cumulative fractions of the step
    count rounded half up, so the parts add up to the chain whatever the rounding."""
    if not fractions:
        raise ValueError("fractions must name at least one model")
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ValueError(f"every fraction must be a number in [0, 1], got {f!r}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"the fractions must add up to 1, got {list(fractions)} (sum {sum(fractions):g})")
    n, owners, start, total = len(timesteps), {}, 0, 0.0
    for i, f in enumerate(fractions):
        total += f
        end = n if i == len(fractions) - 1 else math.floor(total * n + 0.5)
        for t in timesteps[start:end]:
            owners[int(t)] = i
        start = max(start, end)
    return owners


class ModelSchedule(nn.Module):
    """Calls ``models[owners[t]]`` for the steps at timestep t (one timestep per call, as the
    sampling loop makes them); each model answers ``model(x_t, t)`` with its noise prediction."""

    def __init__(self, models: Sequence[nn.Module], owners: dict[int, int]):
        super().__init__()
        self.models = nn.ModuleList(models)
        bad = sorted({i for i in owners.values() if not 0 <= i < len(self.models)})
        if bad:
            raise ValueError(f"owners names models {bad}, but there are {len(self.models)}")
        self.owners = dict(owners)

    def owner(self, t: int) -> int:
        if t not in self.owners:
            raise ValueError(f"timestep {t} belongs to no model of the schedule")
        return self.owners[t]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        first = int(t[0])
        if bool((t != first).any()):
            raise ValueError("a ModelSchedule call must hold one timestep for the whole batch")
        i = self.owner(first)
        return self.models[i](x, t)
