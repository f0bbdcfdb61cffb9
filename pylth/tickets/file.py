"""Ticket files: a model and its masks in a safetensors file whose size follows the kept weights.

Per masked weight the file holds its kept values (float32, in flat-index order) and where they are:
a bit mask (one bit per weight) or the int32 flat indices of the kept entries, whichever is smaller
(indices win below 1/32 density). Every other tensor of the state_dict (biases, norms, unpruned
weights) is stored as it is, and the metadata holds the model kind and its configuration, so the
file alone rebuilds the model. Reading it back gives bitwise the same kept values and masks.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import pylth
from pylth.ddpm.models import kind_of, model_kind
from pylth.foundations.io import UnreadableFileError, atomic_write_bytes
from pylth.pruning.model_masks import checked_masks
from pylth.sparse import sparsify

FORMAT = "pylth-sparse-ticket"
FORMAT_VERSION = "1"
_KEPT, _DENSE = "kept/", "dense/"


@dataclass
class SparseTicket:
    """What a ticket file holds."""

    kind: str  # a name in pylth.ddpm.models.MODELS
    config: dict  # its constructor configuration
    state: dict  # the full state_dict, exactly zero where masked
    masks: dict  # name -> bool tensor (True = kept)
    extra: dict  # what the writer added (find_ticket: the run's diffusion, image shape, sampling settings, seed)

    def dense_model(self) -> nn.Module:
        """The dense model of its kind holding the ticket's weights (exactly zero where masked), in eval
        mode without gradients."""
        model = model_kind(self.kind).fresh(self.config, 0)  # its initial weights are all overwritten
        model.load_state_dict(self.state)
        return model.eval().requires_grad_(False)


def _kind_and_config(model: nn.Module, kind: str | None, config: dict | None) -> tuple[str, dict]:
    if kind is not None and config is not None:
        model_kind(kind)  # an unknown kind is a ValueError
        return kind, config
    found = kind_of(model) if config is None else None  # pylth's U-Net, diffusers' UNet2DModel
    if found is not None and kind in (None, found[0]):
        return found
    raise ValueError("save_sparse needs kind= and config= (the model kind's name and its configuration) for a "
                     f"{type(model).__name__}")


def _positions(mask: torch.Tensor) -> tuple[str, torch.Tensor]:
    """("bitmask", packed bits) or ("indices", int32 flat indices), whichever is smaller."""
    flat = mask.reshape(-1)
    kept = int(flat.sum())
    if 4 * kept < math.ceil(flat.numel() / 8) and flat.numel() <= 2**31 - 1:
        return "indices", flat.nonzero().reshape(-1).to(torch.int32)
    return "bitmask", torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))


def save_sparse(path: str, model: nn.Module, masks: dict, *, kind: str | None = None,
                config: dict | None = None, extra: dict | None = None) -> int:
    """Write ``model`` (its state_dict) and ``masks`` (name -> bool tensor, True = kept) to the ticket
    file ``path`` (atomically); returns its size in bytes. ``kind`` and ``config`` name the model kind
    and its configuration; pylth's U-Net and diffusers' UNet2DModel give them themselves. ``extra``: JSON-able facts kept beside
    them (read back as ``SparseTicket.extra``)."""
    kind, config = _kind_and_config(model, kind, config)
    masks = {n: m.cpu() for n, m in checked_masks(model, masks).items()}
    state = {n: t.detach().cpu() for n, t in model.state_dict().items()}
    tensors, layout = {}, {}
    for name, value in state.items():
        mask = masks.get(name)
        if mask is None:
            tensors[_DENSE + name] = value.contiguous()
            continue
        encoding, positions = _positions(mask)
        tensors[f"{_KEPT}{name}/values"] = value.reshape(-1)[mask.reshape(-1)].contiguous()
        tensors[f"{_KEPT}{name}/{encoding}"] = positions.contiguous()
        layout[name] = {"shape": list(mask.shape), "dtype": str(value.dtype).replace("torch.", ""),
                        "encoding": encoding}
    from safetensors.torch import save

    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "pylth_version": pylth.__version__,
                "model_kind": kind, "model_config": json.dumps(config), "masked": json.dumps(layout),
                "extra": json.dumps(extra or {})}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(data, path)
    return len(data)


def read_sparse(path: str) -> SparseTicket:
    """The ticket in ``path``; a missing, damaged or foreign file is an UnreadableFileError naming it."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise UnreadableFileError(f"{path} is missing")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"its metadata says format {metadata.get('format')!r}, not {FORMAT!r}")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {metadata.get('format_version')!r}; this pylth reads {FORMAT_VERSION}")
        layout = json.loads(metadata["masked"])
        state, masks = {}, {}
        for key, value in tensors.items():
            if key.startswith(_DENSE):
                state[key[len(_DENSE):]] = value
        for name, entry in layout.items():
            shape, numel = tuple(entry["shape"]), math.prod(entry["shape"])
            positions = tensors[f"{_KEPT}{name}/{entry['encoding']}"]
            if entry["encoding"] == "bitmask":
                flat = torch.from_numpy(np.unpackbits(positions.numpy(), count=numel, bitorder="little").astype(bool))
            else:
                flat = torch.zeros(numel, dtype=torch.bool)
                flat[positions.long()] = True
            values = tensors[f"{_KEPT}{name}/values"]
            if values.numel() != int(flat.sum()):
                raise ValueError(f"{name} has {values.numel()} kept values for {int(flat.sum())} kept positions")
            weight = torch.zeros(numel, dtype=values.dtype)
            weight[flat] = values
            state[name], masks[name] = weight.reshape(shape), flat.reshape(shape)
        return SparseTicket(metadata["model_kind"], json.loads(metadata["model_config"]), state, masks,
                            json.loads(metadata.get("extra", "{}")))
    except UnreadableFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways inside safetensors
        raise UnreadableFileError(f"cannot read the ticket file {path} ({exc}): it is damaged or is not a file "
                                  "save_sparse wrote") from exc


def load_sparse(path: str, *, dense: bool = False, device=None, max_density: float | None = None) -> nn.Module:
    """The model in the ticket file ``path``: sparsified for sampling (pylth.sparse.sparsify, with its
    crossover rule or ``max_density``), or with ``dense=True`` the dense model with its masked weights
    exactly zero. The masks are in the model's ``ticket_masks``."""
    ticket = read_sparse(path)
    model = ticket.dense_model()
    if not dense:
        model = sparsify(model, ticket.masks, max_density=max_density, device=device)
    elif device is not None:
        model = model.to(device)
    model.ticket_masks = ticket.masks
    return model
