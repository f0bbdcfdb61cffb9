"""Atomic file writes (a crash mid-write leaves the old file, or none, never a torn one), digests
written with a file and checked when it is read, loads that name the file they could not read, and
one clear error for a full disk.

A file written with ``digest=True`` gets a sidecar, ``.<name>.sha256``, holding its SHA-256: a flipped
byte inside tensor data loads without any error in torch.load, and the sidecar is what notices it.
While the file is replaced, the sidecar lists the old and the new digest (written before the rename,
cut to the new one after it), so a crash at any point leaves a file whose digest is listed.

Writes reach the disk through a ``FileSystem`` (``using_file_system`` swaps in a fake one: a disk
that fills up, for the tests).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable, Iterable

import torch

TEMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp" beside the file they become
DIGEST_SUFFIX = ".sha256"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class FileSystem:
    """Where atomic writes put their bytes: the real file system."""

    def open_temp(self, directory: str, prefix: str):
        """A new temp file in ``directory``, open for binary writing, and its path."""
        fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=TEMP_SUFFIX)
        return os.fdopen(fd, "wb"), path

    def free_bytes(self, directory: str) -> int:
        return shutil.disk_usage(directory).free


_file_system = FileSystem()


@contextlib.contextmanager
def using_file_system(file_system: FileSystem):
    """Every atomic write inside the block goes through ``file_system`` (a fake, in tests)."""
    global _file_system
    previous, _file_system = _file_system, file_system
    try:
        yield file_system
    finally:
        _file_system = previous


class DiskFullError(OSError):
    """A write found no space left (ENOSPC, or EDQUOT: over quota); the message names the file, the
    space it needs and the space free. The temp file is gone and the old file, if any, is intact."""

    def __init__(self, path: str, needed: int, free: int):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self.path, self.needed, self.free = path, needed, free

    def __str__(self) -> str:
        return (f"no space left on the device to write {self.path}: it needs about {_size(self.needed)} and "
                f"{_size(self.free)} is free. Free at least {_size(max(self.needed - self.free, 1))} there (or "
                "move the folder to a larger disk) and rerun the same command: what was written before is intact")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class _Sink:
    """What a writer writes into: the temp file, counting and hashing the bytes on the way (torch.save
    writes through any object with ``write`` and ``flush``)."""

    def __init__(self, file):
        self.file, self.written, self.hash = file, 0, hashlib.sha256()

    def write(self, data) -> int:
        n = self.file.write(data)
        self.hash.update(data)
        self.written += memoryview(data).nbytes
        return n

    def flush(self) -> None:
        self.file.flush()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is ENOSPC/EDQUOT (torch.save wraps the
    OSError of its writes in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _atomic(path: str, write: Callable, size: Callable[[], int], digest: bool = False) -> None:
    """Write ``path`` through a temp file and a rename; ``size()`` estimates the bytes (for the
    message of a full disk); ``digest``: keep its sidecar up to date."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    file, tmp = _file_system.open_temp(directory, "." + os.path.basename(path) + ".")
    sink = _Sink(file)
    try:
        with file:
            write(sink)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the user's usual mode
        if digest:  # the old file's digest and the new one, until the rename is done
            _write_digests(path, _accepted_digests(path) + [sink.hash.hexdigest()])
        os.replace(tmp, path)
        if digest:
            _write_digests(path, [sink.hash.hexdigest()])
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _out_of_space(exc):
            raise DiskFullError(path, max(size(), sink.written), _file_system.free_bytes(directory)) from exc
        raise


def _saved_size(obj: Any) -> int:
    """About the bytes torch.save writes for ``obj``: its tensors' storages, and a little per tensor
    for the zip records and the pickle."""
    storages, count = {}, 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            count += 1
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(storages.values()) + 512 * count + 4096


def atomic_torch_save(obj: Any, path: str, *, digest: bool = False) -> None:
    """torch.save to ``path`` through a temp file and rename; ``digest``: with its sidecar."""
    _atomic(path, lambda f: torch.save(obj, f), lambda: _saved_size(obj), digest)


def atomic_write_bytes(data: bytes, path: str, *, digest: bool = False) -> None:
    _atomic(path, lambda f: f.write(data), lambda: len(data), digest)


def atomic_write_text(text: str, path: str) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


# -- digests written with a file ---------------------------------------------------------------
def digest_path(path: str) -> str:
    """The sidecar of ``path``: ``.<name>.sha256`` beside it (hidden, like the temp files)."""
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + DIGEST_SUFFIX)


def _written_digests(path: str) -> list[str] | None:
    """The digests the sidecar of ``path`` accepts ([] when it is unreadable), or None without one."""
    try:
        with open(digest_path(path), encoding="ascii", errors="replace") as f:
            lines = f.read().split()
    except FileNotFoundError:
        return None
    return [line for line in lines if len(line) == 64 and all(c in "0123456789abcdef" for c in line)]


def _accepted_digests(path: str) -> list[str]:
    """The digests of what is at ``path`` now: its sidecar's, or for a file written without one, its own."""
    written = _written_digests(path)
    if written is not None:
        return written
    return [sha256_file(path)] if os.path.isfile(path) else []


def _write_digests(path: str, digests: list[str]) -> None:
    _atomic(digest_path(path), lambda f: f.write("".join(d + "\n" for d in dict.fromkeys(digests)).encode()),
            lambda: 65 * len(digests))


def digest_problem(path: str) -> str | None:
    """Why ``path`` differs from the digest written with it, or None (it matches, or it has no sidecar:
    a file from before digests, or one written without)."""
    written = _written_digests(path)
    if written is None or not os.path.isfile(path) or sha256_file(path) in written:
        return None
    return f"its SHA-256 differs from the one written with it ({os.path.basename(digest_path(path))})"


def remove_file(path: str) -> None:
    """Delete ``path`` and its sidecar, when they exist."""
    for p in (path, digest_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def remove_digest(path: str) -> None:
    """Delete the sidecar of ``path`` (its digest is kept elsewhere now)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(digest_path(path))


def remove_stale_temp_files(directory: str, names: Iterable[str] | None = None) -> list[str]:
    """Delete the temp files that writes of ``names`` (or of any file) left in ``directory`` when their
    process died (kill -9 mid-write); returns their paths. Call it holding the directory's lock: a live
    writer's temp file looks the same."""
    if not os.path.isdir(directory):
        return []
    owners = None if names is None else [n for name in names for n in (name, "." + name + DIGEST_SUFFIX)]
    removed = []
    for entry in os.listdir(directory):
        if not (entry.startswith(".") and entry.endswith(TEMP_SUFFIX)):
            continue
        if owners is not None and not any(entry.startswith("." + owner + ".") for owner in owners):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
    return removed


def ensure_file_writable(path: str, flag: str) -> None:
    """Check before any work that ``path`` can be written as a file, or raise ValueError naming ``flag``:
    not a folder, in a folder that exists (it is not created) and takes files."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder: give the file to write, e.g. "
                         f"{os.path.join(path, 'samples' + _extension(flag))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable: {exc.strerror or exc}") from None


def _extension(flag: str) -> str:
    return ".npz" if "npz" in flag else ".png"


# -- reads ----------------------------------------------------------------------------------------
class UnreadableFileError(ValueError):
    """A file that is missing, damaged, or not one pylth wrote; the message names it."""


def torch_load(path: str, map_location="cpu", remedy: str = "") -> Any:
    """Load a file pylth wrote; weights_only so a run directory never executes pickled code.

    Any failure is an UnreadableFileError naming ``path``, followed by ``remedy`` (what to do): a file
    that differs from the digest written with it, or one torch cannot read. A damaged file fails in
    many ways (torch's zip reader, EOFError, KeyError, UnpicklingError), and a flipped byte inside
    tensor data loads without any error at all: digests (the sidecar, or ``sha256_file`` against a
    recorded one) catch that."""
    if not os.path.isfile(path):
        raise UnreadableFileError(" ".join(filter(None, [f"{path} is missing.", remedy])))
    problem = digest_problem(path)
    if problem is not None:
        raise UnreadableFileError(" ".join(filter(None, [f"{path} is damaged: {problem}.", remedy])))
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
