"""A disk that fills up, for pylth.foundations.io.using_file_system: what a small tmpfs does, without mounting one."""
from __future__ import annotations

import errno
import os

from pylth.foundations.io import FileSystem


def used_bytes(root: str, but: str | None = None) -> int:
    """The bytes of every file under ``root`` (``but`` aside)."""
    return sum(os.path.getsize(os.path.join(folder, n)) for folder, _, names in os.walk(root) for n in names
               if os.path.join(folder, n) != but)


class FullDisk(FileSystem):
    """``capacity`` bytes for everything under ``root``: a write that would pass it fails with ENOSPC
    (raised by the file's write, as the kernel does), and the free space is what is left."""

    def __init__(self, root: str, capacity: int):
        self.root, self.capacity = os.path.abspath(root), capacity
        self.refused: list[str] = []  # the temp files whose write failed

    def open_temp(self, directory: str, prefix: str):
        file, path = super().open_temp(directory, prefix)
        return _FillingFile(file, path, self), path

    def free_bytes(self, directory: str) -> int:
        return max(self.capacity - used_bytes(self.root), 0)


class _FillingFile:
    def __init__(self, file, path: str, disk: FullDisk):
        self.file, self.path, self.disk, self.written = file, path, disk, 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if used_bytes(self.disk.root, but=self.path) + self.written + n > self.disk.capacity:
            self.disk.refused.append(self.path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += n
        return self.file.write(data)

    def __getattr__(self, name):  # flush, fileno, close, ...
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
