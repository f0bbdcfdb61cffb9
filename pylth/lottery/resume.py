"""Opening a run directory: lock it, then start it, resume it (after checking the finished rounds'
files), or refuse a different configuration or a damaged run."""
from __future__ import annotations

import json
import os
import time

from pylth.foundations.run_dir import DamagedRunError, RunDirectory
from pylth.lottery.spec import RunSpec, config_differences, resume_hint


class ConfigMismatchError(ValueError):
    """--out holds a run made with another configuration."""


def _move_aside(run: RunDirectory) -> str:
    target = f"{run.path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    os.rename(run.path, target)
    os.makedirs(run.path)
    run.lock()  # the new, empty folder; the old one's lock went with it
    return target


def _refused(problem: str) -> ConfigMismatchError:
    return ConfigMismatchError(problem + ". Use another --out, or --force to move it aside and start over.")


def _foreign(run: RunDirectory) -> str | None:
    """Why ``run`` is not a folder pylth may use, or None."""
    if not os.path.exists(run.config_path) and run.has_contents():
        return f"--out {run.path} is not empty and holds no pylth run (no config.json)"
    return None


def _problem(run: RunDirectory, old: RunSpec | None, spec: RunSpec) -> str | None:
    """Why ``run`` cannot go on as a run of ``spec``, or None."""
    if old is None:
        return _foreign(run)
    diffs = config_differences(old.to_json(), spec.to_json())
    if diffs:
        return (f"--out {run.path} holds a run with a different configuration ("
                + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "") + ")"
                + resume_hint(old.to_json(), spec.to_json()))
    return None


def open_run(run: RunDirectory, spec: RunSpec, force: bool = False, log=print) -> list[dict]:
    """Lock ``run`` for this process, prepare it for ``spec`` and return its finished rounds (rank 0
    only), their files checked against the digests in rounds.jsonl, and the unfinished round's against
    the digests written with them.

    A mismatched configuration, or a non-empty folder that holds no run, is refused with a
    ConfigMismatchError, and a damaged run with a DamagedRunError, unless ``force``; then the old
    folder is renamed aside, never deleted. Nothing is written before these checks pass.
    """
    run.ensure_writable()
    if not force and _foreign(run):  # someone else's folder: refuse it before a lock file is left in it
        raise _refused(_foreign(run))
    run.lock()
    records, old = [], None
    try:
        if os.path.exists(run.config_path):
            records = run.read_rounds()
            old = RunSpec.read(run, records)  # older runs' files upgraded to what they ran with
        problem = _problem(run, old, spec)
        if problem is not None and not force:
            raise _refused(problem)
        if problem is None and old is not None:
            run.verify(records)
            run.verify_unfinished(len(records))
    except DamagedRunError as exc:
        if not force:
            raise
        problem = f"--out {run.path} cannot be resumed ({exc.problem})"
    if problem is not None:
        log(f"{problem}; --force: moved it to {_move_aside(run)}")
        old, records = None, []
    if old is None or _as_json(old.to_json()) != _as_json(spec.to_json()):
        run.write_config(spec.to_json())  # records the latest --max-rounds / --target-sparsity / device
    return records


def _as_json(config: dict):
    return json.loads(json.dumps(config))
