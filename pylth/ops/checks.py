"""Argument checks shared by the kernel wrappers; every error names the offending argument."""
from __future__ import annotations

from typing import Sequence

import torch

INT32_MAX = 2**31 - 1


def check_tensor(
    t,
    name: str,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    contiguous: bool = True,
    shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``t`` is a tensor with the given properties."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}, got {t.dtype}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} is on {t.device} but must be on {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)} but must have shape {tuple(shape)}")
    return t


def check_tensor_list(ts, name: str, *, allow_empty: bool = False) -> list:
    """A list/tuple of tensors (not a single tensor); returns it as a list."""
    if isinstance(ts, torch.Tensor) or not isinstance(ts, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(ts).__name__}")
    if not ts and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    for i, t in enumerate(ts):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return list(ts)


def check_same_length(a, a_name: str, b, b_name: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{a_name} has {len(a)} entries but {b_name} has {len(b)}")


def cuda_stream(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an integer handle for the native launchers."""
    return torch.cuda.current_stream(device).cuda_stream
