"""A finished run read back: a round's files checked against their digests (``load_verified``), the
masked starting weights of a round (``load_round_start``) and its trained model (``load_trained``)."""
from __future__ import annotations

import os

import torch
from torch import nn

from pylth.ddpm.models import DEFAULT_MODEL, model_kind
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.spec import RunSpec
from pylth.pruning import apply_masks


def fresh_model(model_config: dict, seed: int, kind: str = DEFAULT_MODEL) -> nn.Module:
    """A model of ``kind`` and ``model_config`` initialised from ``seed``, without touching the global RNG."""
    return model_kind(kind).fresh(model_config, seed)


def reinit_seed(seed: int, round_index: int) -> int:
    """The seed of round k's fresh random weights under --reset reinit (differs from theta_0's)."""
    return seed + 1_000_003 * round_index


def finished_run(run: RunDirectory, name: str = "RUN") -> tuple[RunSpec, list[dict]]:
    """The spec and finished rounds of the find_ticket run ``run``; a ValueError naming it (as the
    argument ``name``) when it holds no run or has not finished a round."""
    if not os.path.isfile(run.config_path):
        raise ValueError(f"{name} {run.path} holds no find_ticket run (no config.json of one)")
    records = run.read_rounds()
    spec = RunSpec.read(run, records)
    if not records:
        raise ValueError(f"{name} {run.path} has no finished round yet")
    return spec, records


def finished_round(run: RunDirectory, round) -> tuple[RunSpec, list[dict]]:
    """The run's spec and finished rounds, after checking that ``round`` is one of them."""
    if not os.path.exists(run.config_path):
        raise ValueError(f"run_dir {run.path} holds no pylth run (no config.json)")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    records = run.read_rounds()
    spec = RunSpec.read(run, records)
    if round >= len(records):
        raise ValueError(f"round {round} of {run.path} is not finished ({len(records)} rounds are)")
    return spec, records


def load_verified(run: RunDirectory, records: list[dict], path: str):
    """A finished round's file, after checking it against the digest rounds.jsonl holds for it."""
    run.verify(records, [path])
    return run.load(path)


def load_round_start(run_dir: str, round: int, device="cpu") -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Where ``round`` of ``run_dir`` started training: the model holding its masked starting weights
    (theta_tau ⊙ m under --reset rewind; theta_0 ⊙ m under init; round k's fresh random weights ⊙ m
    under reinit) and its masks (name -> bool tensor). Not its ticket, the model the round trained from
    there: that is ``load_trained``."""
    run = RunDirectory(run_dir)
    spec, records = finished_round(run, round)
    masks = load_verified(run, records, run.round_file(round, "mask.pt"))
    if spec.lottery.reset == "reinit" and round > 0:
        state = fresh_model(spec.model, reinit_seed(spec.train.seed, round), spec.model_kind).state_dict()
    else:
        state = load_verified(run, records, run.init_path if spec.lottery.reset == "init" else run.rewind_path)
    model = model_kind(spec.model_kind).build(spec.model)
    model.load_state_dict(state)
    apply_masks(model, masks)
    return model.to(device), masks


def load_trained(run_dir: str, round: int, device="cpu") -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The trained (EMA) model of ``round`` in ``run_dir`` (``round_XX/model.pt``, exactly zero where
    pruned), in eval mode, and its masks."""
    run = RunDirectory(run_dir)
    spec, records = finished_round(run, round)
    model = model_kind(spec.model_kind).build(spec.model)
    model.load_state_dict(load_verified(run, records, run.round_file(round, "model.pt")))
    return model.to(device).eval().requires_grad_(False), load_verified(run, records, run.round_file(round, "mask.pt"))
