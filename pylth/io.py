"""Atomic file writes: a crash mid-write leaves the old file (or none), never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save to ``path`` through a temp file and rename."""
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def torch_load(path: str, map_location="cpu") -> Any:
    """Load a file pylth wrote; weights_only so a run directory never executes pickled code."""
    return torch.load(path, map_location=map_location, weights_only=True)
