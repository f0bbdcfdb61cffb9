"""Opening a run directory: lock it, then start it, resume it (after checking the finished rounds'
files), or refuse a different configuration or a damaged run."""
from __future__ import annotations

import json
import os
import time

from pylth.ddpm.models import DEFAULT_MODEL
from pylth.foundations.run_dir import DamagedRunError, RunDirectory

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


def flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _flatten_as_json(config: dict) -> dict:
    return flatten(json.loads(json.dumps(config)))  # compare as config.json holds it (tuples become lists)


def config_differences(old: dict, new: dict, ignore=frozenset()) -> list[str]:
    """``key: old -> new`` for every setting that would make the finished rounds a different run
    (``ignore``: dotted keys that may differ as well)."""
    old_flat, new_flat = flatten(old), _flatten_as_json(new)
    keys = sorted((set(old_flat) | set(new_flat)) - RESUMABLE_KEYS - ignore)
    return [f"{k}: {old_flat.get(k, '<unset>')!r} -> {new_flat.get(k, '<unset>')!r}"
            for k in keys if old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>")]


# Settings that with_implicit_settings fills in for older runs, and the flag that sets each.
IMPLICIT_FLAGS = {"train.sparse_training": "--sparse-training", "evaluation.fid_features": "--fid-features"}


def with_implicit_settings(old: dict, records: list[dict]) -> dict:
    """A config.json from before a setting existed, with the value its run used: runs made before
    --fid-features chose their FID features implicitly, and their rounds say which; runs made before
    --sparse-training trained dense (off), and before --image-size at the data set's own size."""
    train = old.get("train")
    if isinstance(train, dict) and "sparse_training" not in train:
        old = {**old, "train": {**train, "sparse_training": "off"}}
    data = old.get("data")
    if isinstance(data, dict) and "image_size" not in data:  # runs from before --image-size: native size
        old = {**old, "data": {**data, "image_size": None}}
    evaluation = old.get("evaluation", {})
    if "fid_features" in evaluation:
        return old
    used = records[0].get("fid_features") if records else None
    implicit = used or ("inception" if evaluation.get("inception_path") else "classifier")
    return {**old, "evaluation": {**evaluation, "fid_features": implicit}}


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


def _problem(run: RunDirectory, old: dict | None, config: dict) -> str | None:
    """Why ``run`` cannot go on as a run of ``config``, or None."""
    if old is None:
        return _foreign(run)
    diffs = config_differences(old, config)
    if diffs:
        return (f"--out {run.path} holds a run with a different configuration ("
                + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "") + ")" + _resume_hint(old, config))
    return None


def _resume_hint(old: dict, config: dict) -> str:
    """The flags that resume ``old`` as it ran, for the settings whose default an older run does not
    record (IMPLICIT_FLAGS): a rerun of the same command differs in them only by the new default."""
    old_flat, new_flat = flatten(old), _flatten_as_json(config)
    flags = [f"{flag} {old_flat[key]}" for key, flag in IMPLICIT_FLAGS.items()
             if key in old_flat and old_flat[key] != new_flat.get(key)]
    return f" (to resume it as it ran, add {' '.join(flags)})" if flags else ""


def open_run(run: RunDirectory, config: dict, force: bool = False, log=print) -> list[dict]:
    """Lock ``run`` for this process, prepare it for ``config`` and return its finished rounds (rank 0
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
    records = []
    try:
        old = run.read_config()
        if old is not None:
            records = run.read_rounds()
            # Runs made before model kinds were pylth's U-Net, before --init-from (theta_0 from the seed);
            # their rounds name their FID features.
            old = with_implicit_settings({"model_kind": DEFAULT_MODEL, "init_from": None, **old}, records)
        problem = _problem(run, old, config)
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
    if old != json.loads(json.dumps(config)):
        run.write_config(config)  # records the latest --max-rounds / --target-sparsity / device
    return records
