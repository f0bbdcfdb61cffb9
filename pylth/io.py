"""Atomic file writes (a crash mid-write leaves the old file, or none, never a torn one), loads
that name the file they could not read, and file digests."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
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


class UnreadableFileError(ValueError):
    """A file that is missing, damaged, or not one pylth wrote; the message names it."""


def torch_load(path: str, map_location="cpu", remedy: str = "") -> Any:
    """Load a file pylth wrote; weights_only so a run directory never executes pickled code.

    Any failure is an UnreadableFileError naming ``path``, followed by ``remedy`` (what to do). A
    damaged file fails in many ways (torch's zip reader, EOFError, KeyError, UnpicklingError), and a
    flipped byte inside tensor data loads without any error at all: digests (``sha256_file``) catch that."""
    if not os.path.isfile(path):
        raise UnreadableFileError(" ".join(filter(None, [f"{path} is missing.", remedy])))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a damaged file fails; chained below
        raise UnreadableFileError(" ".join(filter(None, [f"cannot read {path} ({_load_failure(exc)}): it is "
                                                         "damaged or is not a file pylth wrote.", remedy]))) from exc


def _load_failure(exc: Exception) -> str:
    """torch.load's error in a few words (its messages run to paragraphs)."""
    if isinstance(exc, pickle.UnpicklingError):
        return "not a torch.save file of tensors, or one holding objects weights_only loading refuses"
    if isinstance(exc, EOFError):
        return "it ends too early"
    first = " ".join(str(exc).split()).split(". ")[0]
    if not isinstance(exc, RuntimeError) or not first:
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
