"""Non-finite weights: looked for before a model is saved, sampled for FID, or rewound to."""
from __future__ import annotations

import torch


@torch.no_grad()
def first_nonfinite(named_tensors) -> str | None:
    """The name of the first tensor of ``named_tensors`` ((name, tensor) pairs, e.g. a module's
    ``named_parameters()``, or a state_dict's ``items()``) holding NaN or infinity, else None.
    One device sync for all of them."""
    named = [(n, t) for n, t in named_tensors if t.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]
