"""torch.distributed in one place: joining a ``torchrun`` job, rank queries, rank 0 decides and
broadcasts, checksums, gathers, and errors raised on every rank together.

Every helper is a no-op (or the trivial answer) in a single process, so callers read the same with or
without ``torchrun``. Rank 0 owns the files (other machines may not share its file system): it reads
them and broadcasts what it read.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Any

import torch
import torch.distributed as dist

from pylth.foundations.environment import Environment

_local_rank = 0  # this process's index on its machine (torchrun's LOCAL_RANK), set by init_distributed


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


_this_rank = rank  # for shard, whose parameter ``rank`` shadows the function


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, or in a single process: the only rank that writes files, logs and bars."""
    return rank() == 0


def is_local_main() -> bool:
    """True on the first process of each machine (LOCAL_RANK 0), or in a single process: the one that
    fills a machine's local caches (a data set download) while the others wait."""
    return not is_distributed() or _local_rank == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(device: torch.device, environment: Environment) -> tuple[int, torch.device]:
    """Join the job when started by ``torchrun`` with more than one process (``environment.world_size``);
    returns (rank, device).

    CUDA devices become ``cuda:<local rank>`` (one GPU per process) with NCCL; anything else uses gloo;
    collectives wait ``environment.dist_timeout`` for a slow rank. A process group that already exists
    is kept (e.g. one made by a test harness). In a single process this returns (0, device) unchanged."""
    global _local_rank
    device = torch.device(device)
    if environment.world_size <= 1 and not is_distributed():
        return 0, device
    _local_rank = environment.local_rank
    if device.type == "cuda":
        device = torch.device("cuda", environment.local_rank)
        torch.cuda.set_device(device)
    if not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = dict(device_id=device) if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=environment.dist_timeout, **kwargs)
    return dist.get_rank(), device


def shutdown() -> None:
    """Leave the process group (after a successful run; a failing one just exits)."""
    if is_distributed():
        dist.destroy_process_group()


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
    dist.broadcast_object_list(box, src=0)
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
    """A digest of names, shapes, dtypes and bits (masks or any tensors), to compare ranks."""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(f"{tuple(m.shape)} {m.dtype}".encode())
        t = m.detach().to("cpu").contiguous()
        h.update((t.to(torch.uint8) if t.dtype == torch.bool else t).view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify_same_on_all_ranks(digest: str, what: str) -> None:
    """Raise on every rank when any rank's ``digest`` differs from rank 0's."""
    if not is_distributed():
        return
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"{what} differ across ranks (digests {digests}); refusing to go on with "
                           f"inconsistent {what}")


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, on every rank (CPU).

    Ranks may hold different numbers of rows; the other dimensions and the dtype must agree."""
    tensor = tensor.detach()
    if not is_distributed():
        return tensor.cpu()
    device = _comm_device()
    counts = torch.tensor([tensor.shape[0]], dtype=torch.long, device=device)
    all_counts = [torch.zeros_like(counts) for _ in range(world_size())]
    dist.all_gather(all_counts, counts)
    all_counts = [int(c) for c in all_counts]
    longest = max(all_counts)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[:tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in all_counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c].cpu() for p, c in zip(parts, all_counts)])


# What the collectives say when another process of the job is gone (gloo reports a dead peer in a
# plain RuntimeError; NCCL and timeouts raise torch.distributed.DistError).
_LOST_PEER = ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_process(exc: BaseException) -> str | None:
    """What ``exc`` says, in a few words, when it is a collective that failed because another process
    of the job is gone (killed, out of memory, its machine down) or did not answer in time; else None."""
    if not is_distributed():
        return None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(m in text for m in _LOST_PEER)):
            text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's "[.../pair.cc:561] " source position
            return text.split(". ")[0][:200]
        exc = exc.__cause__ or exc.__context__
    return None


def shard(num_items: int, *, rank: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous share of ``range(num_items)`` (``rank`` of ``world``: another's); shares
    differ in length by at most one and, concatenated in rank order, give back ``range(num_items)``."""
    r = _this_rank() if rank is None else rank
    w = world_size() if world is None else world
    return range(num_items * r // w, num_items * (r + 1) // w)


@contextlib.contextmanager
def fail_together(what: str):
    """Run the block on every rank, then agree: if it raised anywhere, raise on every rank.

    The failing rank re-raises its own exception; the others raise RuntimeError naming it. So a
    rank-local failure (a missing file on one machine) ends the job at once with its message, instead
    of leaving the other ranks waiting in their next collective until the timeout."""
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        error = exc
    if is_distributed():
        reports = [None] * world_size()
        dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
        if failed and error is None:
            r, msg = failed[0]
            raise RuntimeError(f"{what} failed on rank {r}: {msg}")
    if error is not None:
        raise error
