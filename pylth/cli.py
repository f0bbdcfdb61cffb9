"""What every ``python -m pylth.<command>`` shares: the check of the native module and one rule for
how a command ends.

Exit status (README, "Exit status"):
    0    done
    2    bad input, a damaged or locked run directory, training that diverged, or a native module
         that cannot be loaded: one line on stderr, ``<prog>: error: <message>``, with nothing
         written past the problem; ``PYLTH_DEBUG=1`` adds the traceback
    75   stopped by SIGTERM or SIGUSR1 with a checkpoint written (commands that train): rerun the
         same command to resume; 75 is sysexits.h's EX_TEMPFAIL, "try again later"
    130  Ctrl-C; the last checkpoint is kept
    1    anything else: a bug, reported with its traceback
Under torchrun only rank 0 prints.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Callable

from pylth.ops.native import NativeUnavailable, require_native
from pylth.preemption import EXIT_PREEMPTED, Preempted, stop_on_signals

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
                on_interrupt: str = "", stops_on_signals: bool = False) -> int:
    """Run a command's body under the rules above; returns its exit status (0 when it returns None).

    ``needs_native``: check the native module first, so that a missing or stale build is reported
    before any data is read or any file is written. ``on_interrupt`` is printed after Ctrl-C.
    ``stops_on_signals``: SIGTERM and SIGUSR1 stop the body cleanly (pylth.preemption), exit 75."""
    try:
        with stop_on_signals() if stops_on_signals else contextlib.nullcontext():
            if needs_native:
                require_native()
            status = body()
    except USER_ERRORS as exc:
        report_error(prog, exc)
        return EXIT_BAD_INPUT
    except Preempted as exc:
        if _is_main_process():
            print(f"{prog}: {exc}; run the same command again to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        if _is_main_process():
            print(f"\n{prog}: interrupted{'; ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)
