"""Stopping a long run cleanly when the scheduler asks: SIGTERM (sent before a kill, e.g. by SLURM on
preemption or at the time limit) and SIGUSR1 (what ``sbatch --signal`` sends ahead of time).

A command installs the handlers for its whole run (``stop_on_signals``). While a training loop runs
(``deferred_stop``), a signal only records the request: the loop finishes its step, the processes
agree, the checkpoint is written, and ``Preempted`` is raised. Anywhere else nothing is lost by
stopping at once, so the handler raises ``Preempted`` right away, as Ctrl-C raises KeyboardInterrupt.
The command then exits with EXIT_PREEMPTED, and the same command resumes.

Only the first signal counts: a second one (schedulers and torchrun send SIGTERM again, or to every
process) changes nothing while the first is answered, nor, for a command, after it (``until_exit``):
the default action would kill the exiting process with 143 instead of its 75.
"""
from __future__ import annotations

import contextlib
import signal
import threading

# EX_TEMPFAIL of sysexits.h, "temporary failure, retry later": not 143 (128 + SIGTERM), which the
# shell and SLURM report for a process the signal killed before it could save anything.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(BaseException):
    """The run stopped on a signal with its state saved; rerunning the same command resumes.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it."""


class _Requests:
    signal_name: str | None = None  # the first stop signal received, until the handlers are removed
    deferring: int = 0  # training loops in progress that check for a request at their safe points
    ending: bool = False  # the command is reporting how it ended: a signal changes nothing now


_requests = _Requests()


def stop_requested() -> str | None:
    """The name of the stop signal received (e.g. "SIGTERM"), or None."""
    return _requests.signal_name


def _handler(signum, _frame) -> None:
    if _requests.signal_name is not None or _requests.ending:
        return  # already stopping: raising again would cut short the saving or the report of the first
    _requests.signal_name = signal.Signals(signum).name
    if not _requests.deferring:
        raise Preempted(f"stopped by {_requests.signal_name}")


@contextlib.contextmanager
def stop_on_signals(*, until_exit: bool = False):
    """Handle SIGTERM and SIGUSR1 as stop requests inside the block; the previous handlers come back
    after it. ``until_exit`` (a command, whose process ends after the block): once a stop signal came
    or the command is ``ending``, the signals stay ignored instead. Outside the main thread (where
    Python cannot handle signals) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requests.ending = False
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        keep_away = until_exit and (_requests.signal_name is not None or _requests.ending)
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if keep_away else handler)
        _requests.signal_name, _requests.ending = None, False


def ending() -> None:
    """Inside ``stop_on_signals``: the command has ended and reports how; a stop signal now changes
    nothing (with ``until_exit``, until the process exits)."""
    _requests.ending = True


@contextlib.contextmanager
def deferred_stop():
    """Inside the block a stop signal only records the request (``stop_requested``): the block checks
    it at its safe points and raises Preempted itself once its state is saved. A request the block
    left unanswered (it came after the last safe point) raises Preempted as the block ends."""
    _requests.deferring += 1
    try:
        yield
    finally:
        _requests.deferring -= 1
    if _requests.signal_name is not None and not _requests.deferring:
        raise Preempted(f"stopped by {_requests.signal_name}")
