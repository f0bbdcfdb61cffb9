"""Opening a run directory: start it, resume it, or refuse a different configuration."""
from __future__ import annotations

import json
import os
import time

from pylth.ddpm.models import DEFAULT_MODEL
from pylth.run_dir import RunDirectory

# Keys that may change between invocations without changing any finished round: where to run,
# how fast, and how far to go (a larger --max-rounds or --target-sparsity extends a finished run).
RESUMABLE_KEYS = frozenset({
    "data.data_root", "data.download", "evaluation.inception_path", "evaluation.cache_dir",
    "lottery.max_rounds", "lottery.target_sparsity",
    "train.device", "train.num_workers", "train.checkpoint_every",
    "init_from.folder",  # the --init-from folder may move; its files' digest must not change
})


class ConfigMismatchError(ValueError):
    """--out holds a run made with another configuration."""


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting that would make the finished rounds a different run."""
    old_flat = _flatten(old)
    new_flat = _flatten(json.loads(json.dumps(new)))  # compare as JSON sees it (tuples become lists)
    keys = sorted((set(old_flat) | set(new_flat)) - RESUMABLE_KEYS)
    return [f"{k}: {old_flat.get(k, '<unset>')!r} -> {new_flat.get(k, '<unset>')!r}"
            for k in keys if old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>")]


def _move_aside(run: RunDirectory) -> str:
    target = f"{run.path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    os.rename(run.path, target)
    os.makedirs(run.path)
    return target


def open_run(run: RunDirectory, config: dict, force: bool = False, log=print) -> list[dict]:
    """Prepare ``run`` for ``config`` and return its finished rounds (rank 0 only).

    A mismatched configuration, or a non-empty folder that holds no run, is refused with a
    ConfigMismatchError unless ``force``; then the old folder is renamed aside, never deleted.
    """
    run.ensure_writable()
    old = run.read_config()
    if old is not None:
        old.setdefault("model_kind", DEFAULT_MODEL)  # runs made before model kinds were pylth's U-Net
        old.setdefault("init_from", None)  # and before --init-from
    diffs = [] if old is None else config_differences(old, config)
    if old is None and run.has_contents():
        problem = f"--out {run.path} is not empty and holds no pylth run (no config.json)"
    elif diffs:
        problem = (f"--out {run.path} holds a run with a different configuration ("
                   + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "") + ")")
    else:
        problem = None
    if problem is not None:
        if not force:
            raise ConfigMismatchError(problem + ". Use another --out, or --force to move it aside and start over.")
        log(f"{problem}; --force: moved it to {_move_aside(run)}")
        old = None
    records = run.read_rounds() if old is not None else []
    if old != json.loads(json.dumps(config)):
        run.write_config(config)  # records the latest --max-rounds / --target-sparsity / device
    return records
