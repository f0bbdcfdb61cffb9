"""KeyedDropout: nn.Dropout whose mask is a function of the training step, the layer, the row's index
in the global batch and the element's index (pylth.ops.dropout.keyed_dropout), so that training gives
the same result in one process as in N, and a resumed run the same as an uninterrupted one.

The trainer tells the model's dropout layers each step's key (``set_dropout_step``: seed, iteration,
and where this process's rows sit in the global batch) and takes it back after training
(``clear_dropout_step``). A layer without a step (a model trained outside pylth's trainer) draws its
key from torch's global generator at every forward, as nn.Dropout draws its mask. It holds no
parameters or buffers: swapping it in for nn.Dropout (``swap_dropouts``) leaves a state_dict as it was.
"""
from __future__ import annotations

import torch
from torch import nn

from pylth.ops.dropout import keyed_dropout, stream_key


class KeyedDropout(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.key: int | None = None  # this step's key (set_dropout_step), or None: a fresh one per forward
        self.row_offset, self.row_stride = 0, 1  # this process's rows are global rows offset + i * stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        key = self.key
        if key is None:
            key = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        return keyed_dropout(x, self.p, key, row_offset=self.row_offset, row_stride=self.row_stride)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keyed_dropouts(model: nn.Module) -> list[KeyedDropout]:
    """The model's KeyedDropout layers in module order (a layer's index in it is part of its key)."""
    return [m for m in model.modules() if isinstance(m, KeyedDropout)]


def set_dropout_step(layers: list[KeyedDropout], seed: int, iteration: int, row_offset: int = 0,
                     row_stride: int = 1) -> None:
    """Key the masks of the step ``iteration`` of a run seeded ``seed``; this process holds the rows
    ``row_offset + i * row_stride`` of the global batch (rank and world size under torch.distributed)."""
    for index, layer in enumerate(layers):
        layer.key = stream_key(seed, iteration, index)
        layer.row_offset, layer.row_stride = row_offset, row_stride


def clear_dropout_step(layers: list[KeyedDropout]) -> None:
    """Back to a fresh key per forward, and one process's rows."""
    for layer in layers:
        layer.key, layer.row_offset, layer.row_stride = None, 0, 1


def swap_dropouts(model: nn.Module) -> nn.Module:
    """Replace every nn.Dropout of ``model`` (in place) by a KeyedDropout of the same rate; returns it."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p < 1.0:
                setattr(parent, name, KeyedDropout(child.p))
    return model
