"""torch.distributed helpers for the round loop: rank 0 decides and writes, the others receive.

Every helper is a no-op in a single process, so the lottery code reads the same with or without
``torchrun``. Rank 0 owns the run directory (other nodes may not share its file system): it reads the
files and broadcasts what it read, so every rank holds identical masks and weights.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0, or in a single process: the only rank that writes files, logs and bars."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (small picklable objects: plans, records, error messages)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)  # uses the current CUDA device under NCCL
    return box[0]


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None,
                      like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's ``tensors`` on every rank; the others allocate from ``like`` (same names and shapes).

    Returns CPU tensors with the dtypes of ``like``. Bool goes over the wire as uint8 (NCCL has no bool).
    """
    if not is_distributed():
        return tensors
    device = _comm_device()
    out = {}
    for name, ref in like.items():
        wire_dtype = torch.uint8 if ref.dtype == torch.bool else ref.dtype
        if is_main():
            buf = tensors[name].detach().to(device=device, dtype=wire_dtype).contiguous()
        else:
            buf = torch.empty(ref.shape, dtype=wire_dtype, device=device)
        dist.broadcast(buf, src=0)
        out[name] = buf.to(device="cpu", dtype=ref.dtype)
    return out


def masks_checksum(masks: dict[str, torch.Tensor]) -> str:
    """A digest of names, shapes and bits, to prove that every rank prunes the same weights."""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(str(tuple(m.shape)).encode())
        h.update(m.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()


def verify_same_on_all_ranks(digest: str, what: str) -> None:
    """Raise on every rank when any rank's ``digest`` differs from rank 0's."""
    if not is_distributed():
        return
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"{what} differ across ranks (digests {digests}); refusing to train on inconsistent masks")

