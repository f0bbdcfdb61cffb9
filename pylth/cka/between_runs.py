"""Layer-by-layer CKA between the tickets of two find_ticket runs (the paper's Figure 1).

A run directory holds round_XX/model.pt (the trained, masked state_dict) and round_XX/mask.pt
(name -> bool mask of every prunable weight, in forward order). Each layer's masked weight becomes its
row matrix (out_channels x fan_in) and the two tickets' matrices are compared pair by pair.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from pylth.cka import linear_cka, rbf_cka, weight_rows
from pylth.foundations.run_dir import RunDirectory

TICKET_FILES = ("model.pt", "mask.pt")


class RunError(ValueError):
    """A run directory that cannot be compared; the message says what is wrong and where."""


@dataclass
class LayerCka:
    index: int
    layer: str
    rows: int
    fan_in: int
    sparsity_a: float
    sparsity_b: float
    rbf_cka: float
    linear_cka: float


def finished_rounds(run_dir: str) -> list[int]:
    """The rounds of a run directory that hold both model.pt and mask.pt."""
    if not os.path.isdir(run_dir):
        raise RunError(f"{run_dir} is not a directory")
    rounds = RunDirectory(run_dir).rounds_holding(TICKET_FILES)
    if not rounds:
        raise RunError(f"{run_dir} has no round_XX folder with both model.pt and mask.pt: not a find_ticket run")
    return rounds


def pick_round(run_a: str, run_b: str, round_k: int | None) -> int:
    """The requested round (default: the last one both runs finished), checked to be in both."""
    rounds_a, rounds_b = finished_rounds(run_a), finished_rounds(run_b)
    common = sorted(set(rounds_a) & set(rounds_b))
    if round_k is None:
        if not common:
            raise RunError(f"{run_a} (rounds {rounds_a}) and {run_b} (rounds {rounds_b}) "
                           "have no finished round in common")
        round_k = common[-1]
    for run, rounds in ((run_a, rounds_a), (run_b, rounds_b)):
        if round_k not in rounds:
            raise RunError(f"--round {round_k}: {run} has no finished round {round_k} (it has {rounds})")
    return round_k


def _load(run: RunDirectory, path: str) -> dict:
    """A finished round's file, checked against its digest in rounds.jsonl when the run records one."""
    run.verify(run.read_rounds(), [path])
    obj = run.load(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RunError(f"{path} must hold a dict of name -> tensor")
    return obj


def trained_weight_rows(run_dir: str, round_k: int) -> dict[str, torch.Tensor]:
    """Layer name -> the round's masked trained weight as a row matrix (float32), in mask.pt order."""
    run = RunDirectory(run_dir)
    model_path, mask_path = (run.round_file(round_k, f) for f in TICKET_FILES)
    state, masks = _load(run, model_path), _load(run, mask_path)
    layers = {}
    for name, mask in masks.items():
        if name not in state:
            raise RunError(f"{mask_path} masks {name!r}, which {model_path} does not have")
        weight = state[name]
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise RunError(f"{mask_path}: the mask of {name!r} must be a bool tensor of shape "
                           f"{tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        if weight.dim() < 2 or not weight.is_floating_point():
            raise RunError(f"{model_path}: {name!r} is not a conv or linear weight (shape {tuple(weight.shape)})")
        masked = torch.where(mask, weight.float(), torch.zeros((), dtype=torch.float32))
        layers[name] = weight_rows(masked).contiguous()
    return layers


def _sparsity(rows: torch.Tensor) -> float:
    return 1.0 - torch.count_nonzero(rows).item() / rows.numel()


def compare_tickets(layers_a: dict, layers_b: dict, threshold: float = 1.0, unbiased: bool = False) -> list[LayerCka]:
    """RBF and linear CKA of every layer pair (both runs must have the same layers in the same order)."""
    names_a, names_b = list(layers_a), list(layers_b)
    if names_a != names_b:
        position = next((i for i, (a, b) in enumerate(zip(names_a, names_b)) if a != b), None)
        where = (f"first difference at position {position}: {names_a[position]!r} vs {names_b[position]!r}"
                 if position is not None else f"{len(names_a)} vs {len(names_b)} layers")
        raise RunError(f"the two runs' masks list different layers ({where}); compare runs of the same model")
    for name in names_a:
        if layers_a[name].shape != layers_b[name].shape:
            raise RunError(f"layer {name!r} has shape {tuple(layers_a[name].shape)} in one run and "
                           f"{tuple(layers_b[name].shape)} in the other")
    xs = [layers_a[n] for n in names_a]
    ys = [layers_b[n] for n in names_a]
    # A layer with too few output channels (e.g. a 1-channel output conv) has no CKA: NaN.
    rows_needed = 4 if unbiased else 2
    defined = [i for i, x in enumerate(xs) if x.shape[0] >= rows_needed]
    rbf, linear = [math.nan] * len(xs), [math.nan] * len(xs)
    if defined:
        picked_x, picked_y = [xs[i] for i in defined], [ys[i] for i in defined]
        for i, r, l in zip(defined, rbf_cka(picked_x, picked_y, threshold=threshold, unbiased=unbiased).tolist(),
                           linear_cka(picked_x, picked_y, unbiased=unbiased).tolist()):
            rbf[i], linear[i] = r, l
    return [LayerCka(i, name, x.shape[0], x.shape[1], _sparsity(x), _sparsity(y), rbf[i], linear[i])
            for i, (name, x, y) in enumerate(zip(names_a, xs, ys))]


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


PERMUTATION_SPLITS = 10_000  # random splits behind halves_permutation_p


def _halves(results: list[LayerCka]) -> tuple[list[float], list[float]]:
    """The defined RBF CKAs of the first and of the second half of the layers (forward order; the
    first half takes the middle layer of an odd count; NaN layers dropped)."""
    half = (len(results) + 1) // 2
    up, down = ([r.rbf_cka for r in part if not math.isnan(r.rbf_cka)] for part in (results[:half], results[half:]))
    return up, down


def upstream_downstream(results: list[LayerCka]) -> tuple[float, float]:
    """Mean RBF CKA of the first and of the second half of the layers (forward order; NaN layers skipped)."""
    up, down = _halves(results)
    return _nanmean(up), _nanmean(down)


def halves_permutation_p(results: list[LayerCka], splits: int = PERMUTATION_SPLITS, seed: int = 0) -> float:
    """How often a random split of the layers' RBF CKAs into halves of the same sizes gives a gap
    between the halves' means at least as large as the forward-order split's (two-sided; NaN layers
    skipped; seeded). A small value says the upstream/downstream gap is more than layer-to-layer
    scatter; with (count + 1) / (splits + 1) it is never 0."""
    up, down = (np.array(part, np.float64) for part in _halves(results))
    if len(up) == 0 or len(down) == 0:
        return math.nan
    values = np.concatenate([up, down])
    observed = abs(up.mean() - down.mean())
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(values) for _ in range(splits)])
    gaps = np.abs(shuffled[:, :len(up)].mean(axis=1) - shuffled[:, len(up):].mean(axis=1))
    count = int((gaps >= observed - 1e-12).sum())  # ties (equal values) count as at least as large
    return (count + 1) / (splits + 1)
