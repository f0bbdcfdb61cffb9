"""What every ``python -m pylth.<command>`` shares: the check of the native module and one error rule.

Bad input (a flag, a missing file, a run directory that cannot be used) and a native module that
cannot be loaded end the command with one line on stderr, ``<prog>: error: <message>``, and exit
status 2, before any work; ``PYLTH_DEBUG=1`` adds the traceback. Under torchrun only rank 0 prints.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from pylth.ops.native import NativeUnavailable, require_native

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# What a user can fix from the message alone; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, NativeUnavailable)


def _is_main_process() -> bool:
    from pylth.distributed import is_main

    return is_main()


def report_error(prog: str, exc: BaseException) -> None:
    """``prog: error: message`` on one line (rank 0 only); the traceback too under PYLTH_DEBUG=1."""
    if not _is_main_process():
        return
    if os.environ.get("PYLTH_DEBUG") == "1":
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_command(prog: str, body: Callable[[], int | None], *, needs_native: bool = True,
                on_interrupt: str = "") -> int:
    """Run a command's body under the rules above; returns its exit status (0 when it returns None).

    ``needs_native``: check the native module first, so that a missing or stale build is reported
    before any data is read or any file is written. ``on_interrupt`` is printed after Ctrl-C."""
    try:
        if needs_native:
            require_native()
        status = body()
    except USER_ERRORS as exc:
        report_error(prog, exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if _is_main_process():
            print(f"\n{prog}: interrupted{'; ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)
