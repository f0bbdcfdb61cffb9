"""One writer per run directory: an exclusive ``flock`` on a file inside it, held while a command writes.

The kernel releases the lock when its process ends, however it ends (kill -9 included), so a lock
left by a dead process never blocks: the file stays, but nobody holds it. The file's text names the
holder (pid, host, command, start time) for the message that refuses a second writer. Commands that
only read a run directory take no lock.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
import warnings

LOCK_FILE = ".lock"  # hidden: a folder holding only its lock still counts as empty


class RunLocked(ValueError):
    """Another live process holds the lock."""


class DirectoryLock:
    """``with DirectoryLock(path, flag="--out"):`` holds ``path/.lock`` (or ``name``) exclusively."""

    def __init__(self, directory: str, *, name: str = LOCK_FILE, flag: str = "--out", purpose: str = "writes to it"):
        self.directory, self.path = os.path.abspath(directory), os.path.join(os.path.abspath(directory), name)
        self.flag, self.purpose = flag, purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "DirectoryLock":
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # close-on-exec: child commands do not inherit it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{self.flag} {self.directory} is in use: another process {self.purpose} "
                                f"({self._holder()}). Wait for it to end or stop it, or use another {self.flag}; "
                                f"the lock ends with that process") from None
            # Some network file systems have no flock (Lustre without -o flock): run, but say so.
            warnings.warn(f"cannot lock {self.path} ({exc.strerror}); make sure no other process writes to "
                          f"{self.directory}", RuntimeWarning, stacklevel=2)
            return self
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()}, {_command()}, "
                      f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock (the file stays: deleting it would race with a process that has just opened it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the flock

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
        except OSError:
            text = ""
        return text or "its pid is not written yet"

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _command() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name else argv0
