"""What pylth takes from environment variables, in one place.

The commands read the environment (``Environment.from_environ(os.environ)``, in
``pylth.cli.run_command``) and pass the ``Environment`` down; nothing below them reads a variable, so
the library is used, and tested, by passing settings in. An empty environment gives the defaults.

    PYLTH_CACHE_DIR        FID reference statistics and classifiers (default ~/.cache/pylth)
    PYLTH_DATA_ROOT        the data sets' folder when no --data-root is given (default ~/.cache/pylth/data;
                           Fashion-MNIST: Debian's /usr/share/datasets/fashion-mnist when it exists)
    PYLTH_INCEPTION_PATH   clean-fid's inception-2015-12-05.pt when no --inception-path is given
    PYLTH_DEBUG=1          a command's error comes with its traceback
    PYLTH_DIST_TIMEOUT     seconds a collective waits for a slow rank (default 1800)
    WORLD_SIZE, LOCAL_RANK set by torchrun: the processes of the job, and this one's GPU on its machine

One variable is process-wide instead, like OMP_NUM_THREADS: ``PYLTH_CPU_ISA`` (the vector instruction
set of the CPU kernels) is read once, when pylth.ops.native loads the native module, through
``requested_cpu_isa`` below; ``pylth.ops.set_cpu_isa`` changes it later.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pylth")
DEFAULT_DATA_ROOT = os.path.join(DEFAULT_CACHE_DIR, "data")
DIST_TIMEOUT_ENV = "PYLTH_DIST_TIMEOUT"
# Longest a collective may wait for a slow rank before the job fails. Rank 0 alone may spend minutes
# on first-time work (a data set download, FID reference statistics or classifier): the default
# covers that, and a dead rank on another machine still ends the job within it.
DEFAULT_DIST_TIMEOUT = datetime.timedelta(seconds=1800)
CPU_ISA_ENV = "PYLTH_CPU_ISA"


@dataclass(frozen=True)
class Environment:
    """The settings pylth takes from environment variables; the defaults are an empty environment's."""

    cache_dir: str = DEFAULT_CACHE_DIR  # $PYLTH_CACHE_DIR
    data_root: str | None = None  # $PYLTH_DATA_ROOT (None: pylth.ddpm.data.default_root)
    inception_path: str | None = None  # $PYLTH_INCEPTION_PATH
    debug: bool = False  # PYLTH_DEBUG=1
    world_size: int = 1  # torchrun's WORLD_SIZE
    local_rank: int = 0  # torchrun's LOCAL_RANK
    dist_timeout: datetime.timedelta = DEFAULT_DIST_TIMEOUT  # $PYLTH_DIST_TIMEOUT

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Environment:
        """The settings ``environ`` holds (``os.environ`` in a command); a bad value is a ValueError
        naming its variable."""
        return cls(cache_dir=environ.get("PYLTH_CACHE_DIR") or DEFAULT_CACHE_DIR,
                   data_root=environ.get("PYLTH_DATA_ROOT") or None,
                   inception_path=environ.get("PYLTH_INCEPTION_PATH") or None,
                   debug=environ.get("PYLTH_DEBUG") == "1",
                   world_size=_count(environ, "WORLD_SIZE", 1, low=1),
                   local_rank=_count(environ, "LOCAL_RANK", 0, low=0),
                   dist_timeout=_timeout(environ.get(DIST_TIMEOUT_ENV, "")))


def _count(environ: Mapping[str, str], name: str, default: int, low: int) -> int:
    raw = environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {raw!r}") from None
    if value < low:
        raise ValueError(f"${name} must be >= {low}, got {raw!r}")
    return value


def _timeout(raw: str) -> datetime.timedelta:
    try:
        seconds = float(raw) if raw else DEFAULT_DIST_TIMEOUT.total_seconds()
    except ValueError:
        raise ValueError(f"${DIST_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"${DIST_TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def requested_cpu_isa(environ: Mapping[str, str] = os.environ) -> str:
    """$PYLTH_CPU_ISA, stripped ('' when unset): the CPU path asked for for the whole process."""
    return environ.get(CPU_ISA_ENV, "").strip()
