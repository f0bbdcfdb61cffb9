"""Sparsity of a set of masks: per tensor, per module (forward order) and overall."""
from __future__ import annotations

from collections import OrderedDict

from pylth.ops.checks import check_tensor


def _sparsity(zeros: int, total: int) -> float:
    return zeros / total if total else 0.0


def sparsity_report(masks: dict, groups) -> dict:
    """Fraction of pruned (False) entries: ``{"overall", "per_module", "per_tensor"}``.

    ``groups`` is ``module_groups(...)``'s list of ``(module name, [parameter names])``; tensors of a
    group missing from ``masks`` are skipped.
    """
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict of name -> bool tensor, got {type(masks).__name__}")
    counts = OrderedDict()
    for name, m in masks.items():
        kept = int(check_tensor(m, f"masks[{name!r}]", contiguous=False).count_nonzero())
        counts[name] = (m.numel() - kept, m.numel())
    per_module = OrderedDict()
    for group_name, members in groups:
        present = [counts[n] for n in members if n in counts]
        per_module[group_name] = _sparsity(sum(z for z, _ in present), sum(t for _, t in present))
    return {
        "overall": _sparsity(sum(z for z, _ in counts.values()), sum(t for _, t in counts.values())),
        "per_module": per_module,
        "per_tensor": OrderedDict((n, _sparsity(z, t)) for n, (z, t) in counts.items()),
    }
