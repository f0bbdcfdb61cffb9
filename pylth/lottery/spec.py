"""RunSpec: everything that defines a find_ticket run. Its JSON form is the run's config.json, and
``RunSpec.from_json`` is the one reader of that file: it upgrades the files of older runs in one place
(a setting added since gets the value those runs used: its field's ``older_runs`` metadata) and
refuses a damaged one. Which settings may change between the invocations of one run is the fields'
``resumable`` metadata (``resumable_keys``), not a list kept beside them."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from pylth.ddpm.config import DataConfig, DiffusionConfig
from pylth.ddpm.models import DEFAULT_MODEL
from pylth.ddpm.trainer import TrainConfig
from pylth.evaluation.config import EvalConfig
from pylth.foundations.run_dir import CONFIG_REMEDY, DamagedRunError, RunDirectory
from pylth.lottery.config import LotteryConfig

# The sections of config.json that are settings dataclasses, in the file's order.
SECTIONS = {"data": DataConfig, "train": TrainConfig, "diffusion": DiffusionConfig, "evaluation": EvalConfig,
            "lottery": LotteryConfig}


@dataclass
class RunSpec:
    data: DataConfig
    model: dict  # the model kind's constructor configuration
    image_shape: tuple
    train: TrainConfig
    diffusion: DiffusionConfig
    evaluation: EvalConfig
    lottery: LotteryConfig
    # a name in pylth.ddpm.models.MODELS; runs made before model kinds were pylth's U-Net
    model_kind: str = field(default=DEFAULT_MODEL, metadata=dict(older_runs=DEFAULT_MODEL))
    # theta_0's saved model folder: {"folder", "sha256"} (resolve_model); runs made before --init-from
    # started from the seed. The folder may move between invocations; its files' digest may not.
    init_from: Optional[dict] = field(default=None, metadata=dict(older_runs=None, resumable_keys=("folder",)))

    @property
    def rewind_iteration(self) -> int:
        return math.floor(self.lottery.rewind_fraction * self.train.iterations + 0.5)

    def to_json(self) -> dict:
        out = asdict(self)
        out["rewind_iteration"] = self.rewind_iteration
        return out

    @classmethod
    def from_json(cls, config, records: Sequence[dict] = (), *, path: str = "config.json") -> RunSpec:
        """The spec config.json holds, upgraded: a setting added after the file was written gets the
        value its run used (``with_implicit_settings``; ``records``, the run's finished rounds, say
        which FID features an older run used). A file that is not a JSON object, lacks a setting,
        holds one this version does not know, or holds a bad value is a DamagedRunError naming
        ``path`` (missing sections first, then ``section.key``: six named, then "...")."""
        if not isinstance(config, dict):  # RunDirectory.read_config refuses it first; from_json may get anything
            raise _damaged(path, "not a JSON object")
        config = with_implicit_settings(config, records)
        missing, unknown = _missing_and_unknown(config)
        if missing:
            raise _damaged(path, f"it lacks {', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}")
        if unknown:
            raise _damaged(path, f"it holds settings this pylth does not know: {', '.join(unknown)}")
        top = {f.name: config.get(f.name, f.metadata.get("older_runs")) for f in dataclasses.fields(cls)
               if f.name not in SECTIONS}
        try:
            sections = {name: kind(**config[name]) for name, kind in SECTIONS.items()}
            spec = cls(**sections, **dict(top, image_shape=tuple(top["image_shape"])))
        except (TypeError, ValueError) as exc:
            raise _damaged(path, str(exc)) from None
        recorded = config.get("rewind_iteration", spec.rewind_iteration)  # written by to_json, for readers
        if recorded != spec.rewind_iteration:
            raise _damaged(path, f"its rewind_iteration {recorded!r} is not the {spec.rewind_iteration} its "
                                 "settings give")
        return spec

    @classmethod
    def read(cls, run: RunDirectory, records: Sequence[dict]) -> RunSpec | None:
        """The spec of ``run`` (None when it has no config.json); ``records``: its finished rounds."""
        config = run.read_config()
        return None if config is None else cls.from_json(config, records, path=run.config_path)


def _damaged(path: str, reason: str) -> DamagedRunError:
    return DamagedRunError(f"{path} is damaged ({reason})", CONFIG_REMEDY)


def _required(kind) -> list[str]:
    """The fields every config.json holds: all but those added later (``older_runs``)."""
    return [f.name for f in dataclasses.fields(kind) if "older_runs" not in f.metadata]


def _missing_and_unknown(config: dict) -> tuple[list[str], list[str]]:
    missing, unknown = [], []
    for name in _required(RunSpec):
        section = config.get(name)
        if section is None or (name in SECTIONS and not isinstance(section, dict)):
            missing.append(name)
        elif name in SECTIONS:
            missing += [f"{name}.{key}" for key in _required(SECTIONS[name]) if key not in section]
            known = {f.name for f in dataclasses.fields(SECTIONS[name])}
            unknown += [f"{name}.{key}" for key in section if key not in known]
    return missing, unknown


def with_implicit_settings(old: dict, records: Sequence[dict] = ()) -> dict:
    """A config.json from before a setting existed, with the value its run used, in the sections it
    holds (the fields' ``older_runs``: a value, or a function of the section and the finished rounds).
    Runs made before --fid-features chose their FID features implicitly, and their rounds say which;
    runs made before --sparse-training trained dense (off), and before --image-size at the data set's
    own size."""
    out = dict(old)
    for name, kind in SECTIONS.items():
        section = old.get(name)
        if not isinstance(section, dict):
            continue
        added = {f.name: f.metadata["older_runs"] for f in dataclasses.fields(kind)
                 if "older_runs" in f.metadata and f.name not in section}
        if added:
            out[name] = {**section, **{key: value(section, records) if callable(value) else value
                                       for key, value in added.items()}}
    return out


def resumable_keys() -> frozenset[str]:
    """The dotted keys of config.json that may change between the invocations of one run without
    changing a finished round: where to run, how fast, how far to go."""
    keys = {f"{name}.{f.name}" for name, kind in SECTIONS.items() for f in dataclasses.fields(kind)
            if f.metadata.get("resumable")}
    keys |= {f"{f.name}.{key}" for f in dataclasses.fields(RunSpec) for key in f.metadata.get("resumable_keys", ())}
    return frozenset(keys)


def flatten(obj, prefix: str = "") -> dict:
    """A nested dict as {dotted key: value}."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def flatten_as_json(config: dict) -> dict:
    """``flatten`` of ``config`` as config.json holds it (tuples become lists)."""
    return flatten(json.loads(json.dumps(config)))


def config_differences(old: dict, new: dict, ignore=frozenset()) -> list[str]:
    """``key: old -> new`` for every setting that would make the finished rounds a different run
    (``ignore``: dotted keys that may differ as well)."""
    old_flat, new_flat = flatten_as_json(old), flatten_as_json(new)
    keys = sorted((set(old_flat) | set(new_flat)) - resumable_keys() - ignore)
    return [f"{k}: {old_flat.get(k, '<unset>')!r} -> {new_flat.get(k, '<unset>')!r}"
            for k in keys if old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>")]


def resume_hint(old: dict, new: dict) -> str:
    """The flags that resume ``old`` as it ran, for the settings whose value in older runs is not
    today's default: a rerun of the same command differs in them only by the new default."""
    old_flat, new_flat = flatten_as_json(old), flatten_as_json(new)
    implicit = [(f"{name}.{f.name}", "--" + f.name.replace("_", "-")) for name, kind in SECTIONS.items()
                for f in dataclasses.fields(kind) if f.metadata.get("older_runs", f.default) != f.default]
    flags = [f"{flag} {old_flat[key]}" for key, flag in implicit
             if key in old_flat and old_flat[key] != new_flat.get(key)]
    return f" (to resume it as it ran, add {' '.join(flags)})" if flags else ""
