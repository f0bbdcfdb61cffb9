"""The registry of model kinds: name -> how to configure, build, prune and call a model of that kind."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pylth.foundations.hparams import parses_as, value_of


def call_model(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A model that returns its noise prediction when called as ``model(x_t, t)``."""
    return model(x, t)


def _answering_noise(build: Callable[[dict], nn.Module], predict: Callable) -> Callable[[dict], nn.Module]:
    """``build`` whose models answer ``model(x_t, t)`` with ``predict``'s noise: the one place a kind's
    calling convention is applied, so that nothing downstream needs to know it. A call with more
    arguments reaches the model's own forward (diffusers' ``predict`` passes ``return_dict=False``, so
    it still works on a built model). The forward is bound to the instance: ``copy.deepcopy`` binds it
    to the copy, and state_dict keys, parameter names and the model's class stay the kind's own."""
    def forward(self, x, t, *args, **kwargs):
        own = type(self).forward.__get__(self)
        return own(x, t, *args, **kwargs) if args or kwargs else predict(own, x, t)

    def built(config: dict) -> nn.Module:
        model = build(config)
        model.forward = types.MethodType(forward, model)
        return model

    return built


@dataclass(frozen=True)
class ModelKind:
    name: str
    summary: str  # one line for --help
    config_for: Callable[[str, tuple], dict]  # (data set name, image shape C x H x W) -> constructor config (JSON)
    build: Callable[[dict], nn.Module]  # config -> a fresh model, initialised from the global RNG
    pruning_groups: Callable[[nn.Module], list]  # model -> [(group name, submodule)], forward order
    # (raw model, x_t, t) -> the predicted noise, a tensor shaped like x_t. register() applies it once:
    # the models ``build`` returns answer ``model(x_t, t)`` with the noise.
    predict: Callable = call_model
    # Raises ValueError saying how to fix it when the kind cannot run here (an optional package is missing).
    check_usable: Callable[[], None] = lambda: None
    # --init-from: (folder, image shape) -> the SavedModel there, checked against the images; and
    # folder -> its state_dict, named as build()'s. None: the kind cannot start from a saved folder.
    read_folder: Callable[[str, tuple], SavedModel] | None = None
    folder_weights: Callable[[str], dict] | None = None
    # Export: (config, state_dict) -> (diffusers UNet2DModel config, its state_dict). None: cannot.
    as_diffusers: Callable[[dict, dict], tuple] | None = None
    # config -> the image shape (C, H, W) the model denoises (a ticket file without a run's facts).
    image_shape: Callable[[dict], tuple] | None = None
    # model -> its configuration when it is a model of this kind, else None (save_sparse without kind=).
    config_of: Callable[[nn.Module], dict | None] | None = None
    # --model-config: (config, image shape) -> the configuration completed and checked (a ValueError
    # naming what the network cannot be), and the keys the data set decides, which it may not change.
    configure: Callable[[dict, tuple], dict] = lambda config, image_shape: config
    fixed_by_data: tuple = ()

    def fresh(self, config: dict, seed: int) -> nn.Module:
        """A model of ``config`` initialised from ``seed``, without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build(config)

    def initial(self, config: dict, seed: int, init_from: dict | None = None) -> nn.Module:
        """theta_0 of a run: a fresh model from ``seed``, or the weights of the folder ``init_from``
        records (``resolve_model``'s record)."""
        model = self.fresh(config, seed)
        if init_from is not None:
            model.load_state_dict(self.folder_weights(init_from["folder"]))
        return model


@dataclass(frozen=True)
class SavedModel:
    """A model saved in a folder: the folder that holds its files (the one given, or one inside it),
    its configuration for ``build`` (JSON), and the names of its configuration and weights files."""
    folder: str
    config: dict
    files: tuple


MODELS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Register ``kind`` under its name; its ``build`` then makes models that answer ``model(x_t, t)``
    with the noise (``kind.predict`` applied once, here). Returns the registered kind."""
    if kind.name in MODELS:
        raise ValueError(f"model kind {kind.name!r} is registered twice")
    if kind.predict is not call_model:
        kind = dataclasses.replace(kind, build=_answering_noise(kind.build, kind.predict))
    MODELS[kind.name] = kind
    return kind


def model_kind(name: str) -> ModelKind:
    """The kind registered as ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]


def kind_of(model: nn.Module) -> tuple[str, dict] | None:
    """``(kind name, configuration)`` of a model that one of the registered kinds recognises, or None."""
    for kind in MODELS.values():
        config = kind.config_of(model) if kind.config_of is not None else None
        if config is not None:
            return kind.name, config
    return None


def files_digest(folder: str, names) -> str:
    """sha256 over the files ``names`` of ``folder`` (each name, then its bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _convert(key: str, text: str, like):
    """The override ``text`` of ``key`` as a value of the type of ``like`` (the configuration's value)."""
    if isinstance(like, (list, tuple)):
        items = [t.strip() for t in text.split(":")] if text else []
        return tuple(_convert(key, t, like[0]) if like else value_of(t) for t in items)
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--model-config: {key} must be true or false, got {text!r}")
        return text.lower() in ("true", "1")
    for kind, word in ((int, "an integer"), (float, "a number")):
        if isinstance(like, kind):
            if not parses_as(kind, text):
                raise ValueError(f"--model-config: {key} must be {word}, got {text!r}")
            return kind(text)
    if like is None:  # an optional setting: none, a number or a word
        return None if text.lower() in ("none", "null", "") else value_of(text)
    return text


def apply_overrides(kind: ModelKind, config: dict, overrides: dict[str, str], image_shape) -> dict:
    """``config`` with ``overrides`` (key -> value text, as ``--model-config`` gives them) converted to
    the types of the values they replace, completed and checked by the kind, and proven buildable. An
    unknown key, a bad value or a network that cannot be built is a ValueError naming --model-config."""
    allowed = sorted(k for k in config if k not in kind.fixed_by_data)
    changed = dict(config)
    for key, text in overrides.items():
        if key not in allowed:
            fixed = " (the data set decides it; see --image-size)" if key in kind.fixed_by_data else ""
            raise ValueError(f"--model-config: {kind.name} has no setting {key!r}{fixed}; its settings are "
                             f"{', '.join(allowed)}")
        changed[key] = _convert(key, text, config[key])
    try:
        changed = kind.configure(changed, tuple(image_shape))
        kind.fresh(changed, 0)  # a network that only fails when built (e.g. diffusers' own checks)
    except (ValueError, TypeError, RuntimeError, AssertionError, KeyError, IndexError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--model-config {','.join(f'{k}={v}' for k, v in overrides.items())}: the {kind.name} "
                         f"cannot be built ({message})") from None
    return changed


def resolve_model(kind: ModelKind, dataset: str, image_shape, init_from: str | None = None) -> tuple:
    """``(config, init_from record)`` of a run. Without ``init_from``: the kind's configuration for the
    data set, and None. With it: the configuration of the model saved in that folder, and
    ``{"folder", "sha256"}`` (the folder, absolute, and a digest of the model's configuration and
    weights files), which the run records so that resuming with other weights is refused."""
    if init_from is None:
        return kind.config_for(dataset, tuple(image_shape)), None
    if kind.read_folder is None:
        able = [k.name for k in MODELS.values() if k.read_folder is not None]
        raise ValueError(f"--init-from needs a model kind that starts from a saved model folder "
                         f"({', '.join(able) or 'none registered'}); --model {kind.name} cannot")
    folder = os.path.abspath(init_from)
    saved = kind.read_folder(folder, tuple(image_shape))
    return saved.config, dict(folder=folder, sha256=files_digest(saved.folder, saved.files))
