"""The registry of model kinds: name -> how to configure, build, prune and call a model of that kind."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def call_model(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A model that returns its noise prediction when called as ``model(x_t, t)``."""
    return model(x, t)


@dataclass(frozen=True)
class ModelKind:
    name: str
    summary: str  # one line for --help
    config_for: Callable[[str, tuple], dict]  # (data set name, image shape C x H x W) -> constructor config (JSON)
    build: Callable[[dict], nn.Module]  # config -> a fresh model, initialised from the global RNG
    pruning_groups: Callable[[nn.Module], list]  # model -> [(group name, submodule)], forward order
    predict: Callable = call_model  # (model, x_t, t) -> the predicted noise, a tensor shaped like x_t

    def fresh(self, config: dict, seed: int) -> nn.Module:
        """A model of ``config`` initialised from ``seed``, without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build(config)


MODELS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    if kind.name in MODELS:
        raise ValueError(f"model kind {kind.name!r} is registered twice")
    MODELS[kind.name] = kind
    return kind


def model_kind(name: str) -> ModelKind:
    """The kind registered as ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]
