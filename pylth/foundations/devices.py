"""Devices by name: "auto" and the check that a CUDA device exists."""
from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """torch.device(device), with "auto" meaning CUDA when available; unknown devices raise."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available")
    return dev
