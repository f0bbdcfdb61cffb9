"""Which parameters are prunable and how they group into modules (U-Net blocks) in forward order."""
from __future__ import annotations

from typing import Sequence

from torch import nn

DEFAULT_TYPES = (nn.Conv2d, nn.Linear)


def prunable_parameters(model: nn.Module, types=DEFAULT_TYPES) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every module of ``types``, in registration (forward) order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    types = tuple(types) if isinstance(types, (list, tuple)) else (types,)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError("types must be nn.Module subclasses")
    found = []
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, types) and isinstance(weight, nn.Parameter):
            found.append((f"{module_name}.weight" if module_name else "weight", weight))
    return found


def _blocks(model: nn.Module, blocks=None) -> list[tuple[str, str]]:
    """(group name, qualified module prefix) of the model's blocks: ``blocks`` (name, submodule) when
    given (a model kind's pruning groups), else ``model.pruning_groups()``, else its children."""
    if blocks is None and hasattr(model, "pruning_groups"):
        blocks = model.pruning_groups()
    if blocks is not None:
        qualified = {id(m): n for n, m in model.named_modules()}
        found = []
        for group_name, module in blocks:
            if id(module) not in qualified:
                raise ValueError(f"the pruning group {group_name!r} is not a submodule of the model")
            found.append((group_name, qualified[id(module)]))
        return found
    return [(name, name) for name, _ in model.named_children()]


def module_groups(model: nn.Module, names: Sequence[str] | None = None,
                  per_tensor: bool = False, blocks=None) -> list[tuple[str, list[str]]]:
    """Ordered ``(group name, [parameter names])``: a group is a U-Net block.

    Blocks are ``blocks`` (``[(group name, submodule)]`` in forward order, e.g. a model kind's
    pruning groups) when given, else ``model.pruning_groups()`` when the model has it, else its
    top-level children.
    ``names`` (default: the prunable parameters) are assigned to the first block whose prefix
    contains them; blocks without any are dropped; a name outside every block forms a group of its
    own, after the blocks. ``per_tensor=True`` makes each parameter its own group.
    """
    if names is None:
        names = [n for n, _ in prunable_parameters(model)]
    names = list(names)
    known = dict(model.named_parameters())
    for n in names:
        if n not in known:
            raise ValueError(f"names contains {n!r}, which is not a parameter of the model")
    if per_tensor:
        return [(n, [n]) for n in names]
    found = _blocks(model, blocks)
    groups = [(group_name, []) for group_name, _ in found]
    prefixes = [prefix + "." if prefix else "" for _, prefix in found]
    loose = []
    for n in names:
        index = next((i for i, p in enumerate(prefixes) if n.startswith(p)), None)
        if index is None:
            loose.append((n, [n]))
        else:
            groups[index][1].append(n)
    return [g for g in groups if g[1]] + loose
