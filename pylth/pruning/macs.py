"""Multiply-accumulates of Conv2d and Linear layers, dense and counting only kept weights."""
from __future__ import annotations

import inspect

import torch
from torch import nn

from pylth.ops.checks import check_tensor


def _example_inputs(model: nn.Module, input_size) -> tuple:
    """Zeros of ``input_size``; plus a zero time step per sample when forward takes a second input."""
    if not isinstance(input_size, (list, tuple)) or not input_size or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size):
        raise ValueError(f"input_size must be a tuple of positive ints, got {input_size!r}")
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    x = torch.zeros(tuple(input_size), device=device, dtype=dtype)
    required = [p for p in inspect.signature(model.forward).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) >= 2:
        return x, torch.zeros(input_size[0], device=device, dtype=torch.long)
    return (x,)


def count_macs(model: nn.Module, input_size=None, masks=None, *, example_inputs=None) -> tuple[int, int]:
    """``(macs_masked, macs_dense)`` of one forward pass over all Conv2d and Linear layers.

    Each output position (every output pixel of a conv, every output row of a linear, over the
    whole batch) costs one MAC per weight: dense counts all weights, masked only the kept ones
    (``masks[name]`` True where given, else the nonzero weights). Pass ``input_size`` (e.g.
    ``(1, 3, 32, 32)``; a model whose forward takes ``(x, t)`` gets ``t = 0``) or
    ``example_inputs``, the tuple of positional inputs to call the model with. Biases, norms,
    attention matmuls and activations are not counted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if (input_size is None) == (example_inputs is None):
        raise ValueError("give exactly one of input_size and example_inputs")
    if example_inputs is None:
        inputs = _example_inputs(model, input_size)
    elif isinstance(example_inputs, tuple):
        inputs = example_inputs
    else:
        raise TypeError(f"example_inputs must be a tuple of model inputs, got {type(example_inputs).__name__}")
    if masks is not None and not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict of name -> bool tensor, got {type(masks).__name__}")
    kept_weights = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            name = f"{module_name}.weight" if module_name else "weight"
            if masks is not None and name in masks:
                kept = check_tensor(masks[name], f"masks[{name!r}]", contiguous=False, shape=module.weight.shape)
            else:
                kept = module.weight
            kept_weights[module] = (int(kept.count_nonzero()), module.weight.numel())
    totals = [0, 0]

    def hook(module, _inputs, output):
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        positions = output.numel() // channels
        kept, dense = kept_weights[module]
        totals[0] += positions * kept
        totals[1] += positions * dense

    handles = [m.register_forward_hook(hook) for m in kept_weights]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return totals[0], totals[1]
