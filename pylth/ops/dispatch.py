"""The one way the kernel wrappers reach the native module: choose the backend, pack the table, launch.

Every entry point of ``_pylth`` follows one convention (csrc/common.h):
``name_cpu(table, rows, width, *scalars, num_threads)`` and ``name_cuda(table, rows, width,
*scalars, stream)``, where the table is a contiguous int64 tensor holding one row per tensor
(``t.data_ptr()`` addresses, sizes, flags; the kernel's header names the columns). The table lives
on the host, or on the device for a CUDA launcher whose kernels read it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pylth.ops.checks import cuda_stream
from pylth.ops.native import has_native_cuda, require_native, warn_fallback

NATIVE, REFERENCE = "native", "reference"


def backend(kernel: str, device: torch.device) -> str:
    """NATIVE where ``_pylth`` has ``kernel`` for ``device``'s type; REFERENCE (the pure-torch version,
    warning once) for CUDA tensors when pylth was built without CUDA. A missing or stale native module
    raises NativeUnavailable (never a silent slow path); devices other than CPU and CUDA, ValueError."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{kernel}: tensors on {device} are not supported: use CPU or CUDA tensors")
    require_native()
    if device.type == "cuda" and not has_native_cuda():
        warn_fallback(kernel, "pylth was built without CUDA")
        return REFERENCE
    return NATIVE


def pack_table(rows: Sequence[Sequence[int]], width: int, device: torch.device | None = None, *,
               trailer: Sequence[int] = ()) -> torch.Tensor:
    """The int64 table of ``rows`` (each ``width`` integers), on the host or moved to ``device``.

    ``trailer``: integers that follow the table in the same allocation, for a CUDA launcher whose
    kernels read offsets right after the rows (its header says so); the result is the rows x width
    view at the start of that allocation."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"every table row must hold {width} integers, row {i} holds {len(row)}")
    flat = [value for row in rows for value in row]
    flat.extend(trailer)
    values = torch.tensor(flat, dtype=torch.int64)
    if device is not None and torch.device(device).type != "cpu":
        values = values.to(device)
    return values[: len(rows) * width].view(len(rows), width)


def launch(kernel: str, device: torch.device, table: torch.Tensor, *scalars):
    """Call ``kernel``'s native entry point for ``device`` with ``table`` and ``scalars``; returns its result.

    CUDA launches go to ``device`` (made current for the call) on its current stream. The caller keeps
    every tensor whose address is in the table alive until the kernels that read it have run."""
    native = require_native()
    device = torch.device(device)
    args = (table.data_ptr(), table.shape[0], table.shape[1], *scalars)
    if device.type == "cpu":
        return getattr(native, f"{kernel}_cpu")(*args, torch.get_num_threads())
    with torch.cuda.device(device):
        return getattr(native, f"{kernel}_cuda")(*args, cuda_stream(device))
