"""Hyper-parameters as dataclasses whose fields (with ``help`` metadata) generate argparse flags.

``add_arguments(parser, SomeConfig)`` adds ``--field-name`` for every field; ``from_args(SomeConfig,
args)`` builds the dataclass back. Command lines share flags by sharing dataclasses (open_lth style).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls, *, exclude=(), defaults: dict | None = None,
                  required=()) -> None:
    """Add one flag per field of dataclass ``cls`` (except ``exclude``); ``defaults`` overrides field
    defaults, ``required`` makes fields mandatory. Fields without a default are required."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        help_text = field.metadata.get("help", "")
        kind = hints[field.name]
        if field.name in defaults:
            default = defaults[field.name]
        elif field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        kwargs: dict = dict(dest=field.name, help=help_text)
        if default is dataclasses.MISSING or field.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None:
                kwargs["help"] = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            base = args[0] if args else kind
            if typing.get_origin(base) is tuple:
                kwargs["nargs"] = "+"
                base = typing.get_args(base)[0]
            kwargs["type"] = base
            if "choices" not in kwargs:
                kwargs["metavar"] = field.name.upper()
        parser.add_argument(_flag(field.name), **kwargs)


def from_args(cls, args: argparse.Namespace, **overrides):
    """The ``cls`` instance made of the parsed fields of ``args`` (fields absent from args keep
    their defaults); ``overrides`` win."""
    values = {}
    for field in dataclasses.fields(cls):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            if isinstance(value, list):
                value = tuple(value)
            values[field.name] = value
    values.update(overrides)
    return cls(**values)


def help_field(text: str, *, resumable: bool = False, older_runs=dataclasses.MISSING, **extra) -> dict:
    """``dataclasses.field`` keyword arguments carrying a flag's help text (and e.g. ``choices``).
    ``resumable``: the setting may change between the invocations of one run without changing what it
    has finished (where to run, how fast, how far to go). ``older_runs``: what a saved configuration
    written before the setting existed means: a value, or a function (the saved section, the run's
    finished rounds) -> value."""
    metadata = dict(help=text, **extra)
    if resumable:
        metadata["resumable"] = True
    if older_runs is not dataclasses.MISSING:
        metadata["older_runs"] = older_runs
    return dict(metadata=metadata)


def value_of(text: str):
    """A flag's value text as the int, the float or the word it spells ("3" -> 3, "0.5" -> 0.5)."""
    return next((kind(text) for kind in (int, float) if parses_as(kind, text)), text)


def parses_as(kind, text: str) -> bool:
    """Whether ``kind(text)`` (int, float) takes ``text``."""
    try:
        kind(text)
        return True
    except ValueError:
        return False
