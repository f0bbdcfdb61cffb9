"""Tickets: the masked starting weights of a round, and loading one back from a run directory."""
from __future__ import annotations

import os

import torch
from torch import nn

from pylth.ddpm.models import DEFAULT_MODEL, model_kind
from pylth.pruning import apply_masks
from pylth.run_dir import RunDirectory


def fresh_model(model_config: dict, seed: int, kind: str = DEFAULT_MODEL) -> nn.Module:
    """A model of ``kind`` and ``model_config`` initialised from ``seed``, without touching the global RNG."""
    return model_kind(kind).fresh(model_config, seed)


def reinit_seed(seed: int, round_index: int) -> int:
    """The seed of round k's fresh random weights under --reset reinit (differs from theta_0's)."""
    return seed + 1_000_003 * round_index


def finished_round(run: RunDirectory, round) -> dict:
    """The run's configuration, after checking that ``round`` is one of its finished rounds."""
    config = run.read_config()
    if config is None:
        raise ValueError(f"run_dir {run.path} holds no pylth run (no config.json)")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    finished = len(run.read_rounds())
    if round >= finished:
        raise ValueError(f"round {round} of {run.path} is not finished ({finished} rounds are)")
    return config


def load_ticket(run_dir: str, round: int, device="cpu") -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The ticket of ``round`` in ``run_dir``: the model holding its starting weights (theta_tau ⊙ m
    under --reset rewind; theta_0 ⊙ m under init; round k's fresh random weights ⊙ m under reinit)
    and its masks (name -> bool tensor)."""
    run = RunDirectory(run_dir)
    config = finished_round(run, round)
    masks = run.load(run.round_file(round, "mask.pt"))
    kind = config.get("model_kind", DEFAULT_MODEL)
    reset = config["lottery"]["reset"]
    if reset == "reinit" and round > 0:
        state = fresh_model(config["model"], reinit_seed(config["train"]["seed"], round), kind).state_dict()
    else:
        path = run.init_path if reset == "init" else run.rewind_path
        if not os.path.exists(path):
            raise ValueError(f"{path} is missing")
        state = run.load(path)
    model = model_kind(kind).build(config["model"])
    model.load_state_dict(state)
    apply_masks(model, masks)
    return model.to(device), masks


def load_trained(run_dir: str, round: int, device="cpu") -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The trained (EMA) model of ``round`` in ``run_dir`` (``round_XX/model.pt``, exactly zero where
    pruned), in eval mode, and its masks."""
    run = RunDirectory(run_dir)
    config = finished_round(run, round)
    model = model_kind(config.get("model_kind", DEFAULT_MODEL)).build(config["model"])
    model.load_state_dict(run.load(run.round_file(round, "model.pt")))
    return model.to(device).eval().requires_grad_(False), run.load(run.round_file(round, "mask.pt"))
