"""What every ``python -m pylth.<command>`` shares: the check of the native module, the environment
variables read once (pylth.foundations.environment), argument parsers whose errors are one line, and
one rule for how a command ends.

Exit status (README, "Exit status"):
    0    done
    2    bad input (a bad flag included), a damaged or locked run directory, training that diverged, a
         full disk, or a native module that cannot be loaded: one line on stderr, ``<prog>: error:
         <message>``, with nothing written past the problem; ``PYLTH_DEBUG=1`` adds the traceback
    75   stopped by SIGTERM or SIGUSR1 with a checkpoint written (commands that train), or, under
         torchrun, another process of the job was lost: rerun the same command to resume; 75 is
         sysexits.h's EX_TEMPFAIL, "try again later"
    130  Ctrl-C; the last checkpoint is kept
    1    anything else: a bug, reported with its traceback
Under torchrun only rank 0 prints, but for a lost process, which every surviving rank reports (rank
0 may be the one lost).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Callable, Mapping

from pylth.foundations.environment import Environment
from pylth.foundations.preemption import EXIT_PREEMPTED, Preempted, ending, stop_on_signals
from pylth.ops.native import NativeUnavailable, require_native

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# What a user can fix from the message alone; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, NativeUnavailable)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, ``prog: error: message`` and exit 2, like every
    other bad input of a command (the usage is for --help)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


def _is_main_process() -> bool:
    from pylth.foundations.distributed import is_main

    return is_main()


def report_error(prog: str, exc: BaseException, debug: bool = False) -> None:
    """``prog: error: message`` on one line (rank 0 only); the traceback too with ``debug``
    (PYLTH_DEBUG=1)."""
    if not _is_main_process():
        return
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)


def _report_lost_process(prog: str, exc: BaseException, reason: str, debug: bool) -> None:
    """The one line of every surviving rank when another process of the job is gone."""
    from pylth.foundations.distributed import rank

    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{prog}: error: rank {rank()} lost another process of this torchrun job ({reason}): it was killed, ran "
          "out of memory or its machine failed. The files written so far are intact: rerun the same command to "
          "resume from the last checkpoint", file=sys.stderr)


def run_command(prog: str, body: Callable[[Environment], int | None], *, needs_native: bool = True,
                on_interrupt: str = "", stops_on_signals: bool = False,
                environ: Mapping[str, str] = os.environ) -> int:
    """Run a command's body under the rules above; returns its exit status (0 when it returns None).

    The body gets the ``Environment`` read from ``environ`` (a bad variable is bad input, one line).
    ``needs_native``: check the native module first, so that a missing or stale build is reported
    before any data is read or any file is written. ``on_interrupt`` is printed after Ctrl-C.
    ``stops_on_signals``: SIGTERM and SIGUSR1 stop the body cleanly (pylth.foundations.preemption), exit 75; once
    the body has failed or stopped, further stop signals are ignored until the process exits (torchrun
    and schedulers send SIGTERM again: it must not cut the report short or turn 75 into 143)."""
    environment = None
    with stop_on_signals(until_exit=True) if stops_on_signals else contextlib.nullcontext():
        try:
            environment = Environment.from_environ(environ)
            if needs_native:
                require_native()
            status = body(environment)
        except BaseException as exc:  # noqa: BLE001 - each kind is reported below; bugs are re-raised
            if stops_on_signals:
                ending()
            return _ended(prog, exc, on_interrupt, debug=environment is not None and environment.debug)
    return 0 if status is None else int(status)


def _ended(prog: str, exc: BaseException, on_interrupt: str, debug: bool) -> int:
    """The exit status for the body's exception, after reporting it; a bug is raised again."""
    from pylth.foundations.distributed import lost_process

    lost = lost_process(exc) if isinstance(exc, Exception) else None
    if lost is not None:
        _report_lost_process(prog, exc, lost, debug)
        return EXIT_PREEMPTED
    if isinstance(exc, USER_ERRORS):
        report_error(prog, exc, debug)
        return EXIT_BAD_INPUT
    if isinstance(exc, Preempted):
        if _is_main_process():
            print(f"{prog}: {exc}; run the same command again to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    if isinstance(exc, KeyboardInterrupt):
        if _is_main_process():
            print(f"\n{prog}: interrupted{'; ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    raise exc
