"""sparsify: a copy of a model in which each masked Conv2d/Linear that is sparse enough runs the sparse
kernels, and a report of what was made sparse and what stayed dense, and why.

A sparse kernel must never make a layer slower, so a layer stays dense (its weight masked) when its
density is above the crossover measured on this CPU by bench/test_bench_sparse.py: for every conv
shape of the CIFAR-10 U-Net the sparse kernel wins from 84 % sparsity on (from 69-79 % for most),
so convs up to CONV_MAX_DENSITY are made sparse. A Linear call costs a fixed ~18 us of argument
handling, which only large layers win back: a Linear is made sparse when it has at least
LINEAR_MIN_WEIGHTS weights and at most LINEAR_MAX_DENSITY of them are kept. On CUDA devices nothing is
made sparse by default: the CUDA kernel has not been measured against cuDNN yet.

``sparsify(..., trainable=True)`` chooses by the crossover of training instead (forward, backward and
the optimizer step; bench/sparse_train_crossover.py), which depends on a conv's kernel and its outputs
per channel in one step (``output_positions``: batch x Ho x Wo; a conv without one takes the fewest
outputs' crossover): see TRAINING_CONV_MAX_DENSITY. Linear layers train dense. The sparse layers' kept values
become Parameters that autograd trains with the sparse kernels' backward. ``dense_state_dict`` turns such a model back into
the dense masked model's state_dict (model.pt's keys and shapes); ``load_dense_state_`` loads one into
it, each sparse layer gathering its kept values; ``dense_layer_masks`` are the masks of the layers that
stayed dense, which the optimizer must still keep at zero (MaskedAdam).
"""
from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import torch
from torch import nn

from pylth.pruning.model_masks import checked_masks
from pylth.sparse.modules import SparseConv2d, SparseLinear, _SparseWeighted, fuse_group_norm_silu, unsupported_conv

CONV_MAX_DENSITY = 0.15
LINEAR_MAX_DENSITY = 0.10
LINEAR_MIN_WEIGHTS = 1 << 18

# Training: the density up to which a conv trains faster sparse (one step of the layer: forward,
# backward with dL/dx, dL/d weight and dL/d bias, MaskedAdam), by the outputs per channel of one step
# (batch x Ho x Wo): pairs (most outputs, density), the first that fits. Measured by
# bench/sparse_train_crossover.py on this CPU (AMD EPYC, the AVX2 build, one thread), 2026-12-06, over
# the U-Net of issue 26 (batch 64, 28x28 and 14x14 inputs) and the CIFAR-10 U-Net (batch 8); each value
# is the lowest crossover of its bucket less a margin. KxK convs (any stride): 128 outputs 4.8 % (CIFAR
# 4x4 layers, and stride 2 to 4x4); 512-1024: 9.5 % (the small U-Net's 4x4 layers; CIFAR's 8x8 ones
# 9.9-11.2 %); 2048: 16.4 % (CIFAR 16x16); 3136 and more: 20.4 % (the small U-Net's 7x7 layers; its
# 8x8-28x28 ones 26-38 %, CIFAR's 32x32 ones 25-26 %). 1x1 convs: 128: 9.6 %; 512: 25.5 %; 1024 and
# more: 30.1 % (the small U-Net's 128->64 at 7x7; others 33-60 %).
TRAINING_CONV_MAX_DENSITY = ((256, 0.045), (1536, 0.09), (3072, 0.15), (None, 0.2))
TRAINING_POINTWISE_CONV_MAX_DENSITY = ((256, 0.09), (768, 0.25), (None, 0.28))
# No Linear of these U-Nets trains faster sparse, down to 2 % density (512x512 at batch 8: 0.85x): under
# the crossover rule every Linear trains dense.


@dataclass(frozen=True)
class LayerChoice:
    name: str  # the module's qualified name
    kind: str  # "conv" or "linear"
    density: float  # kept weights / all weights
    sparse: bool
    reason: str  # why it stayed dense ("" when sparse)


class SparsifyReport(list):
    """One LayerChoice per masked Conv2d/Linear, in module order; ``fused_norms``: how many GroupNorm +
    SiLU pairs became one GroupNormSiLU pass."""

    fused_norms = 0

    @property
    def sparse(self) -> list[str]:
        return [c.name for c in self if c.sparse]

    @property
    def dense(self) -> list[str]:
        return [c.name for c in self if not c.sparse]

    def __str__(self) -> str:
        head = (f"sparsify: {len(self.sparse)} of {len(self)} masked layers made sparse, "
                f"{self.fused_norms} GroupNorm + SiLU pairs fused")
        lines = [head]
        lines += [f"  {c.name}: {c.kind}, density {c.density:.4f}, " + ("sparse" if c.sparse else f"dense ({c.reason})")
                  for c in self]
        return "\n".join(lines)


def _training_limit(module: nn.Conv2d, positions: int | None) -> float:
    """The training crossover of ``module`` for ``positions`` outputs per channel and step (None: the
    fewest)."""
    table = TRAINING_POINTWISE_CONV_MAX_DENSITY if tuple(module.kernel_size) == (1, 1) else TRAINING_CONV_MAX_DENSITY
    for most, density in table:
        if most is None or positions is None or positions <= most:
            return density
    return table[-1][1]


def _choose(module: nn.Module, density: float, max_density: float | None, cuda: bool, trainable: bool = False,
            positions: int | None = None) -> str:
    """Why ``module`` should stay dense ("" to make it sparse); ``positions``: a conv's outputs per channel
    and training step."""
    base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    if type(module).forward is not base.forward:  # a subclass computing something else: keep it
        return f"{type(module).__name__} overrides {base.__name__}.forward"
    if isinstance(module, nn.Conv2d):
        unsupported = unsupported_conv(module)
        if unsupported:
            return f"the sparse kernel does not take {unsupported}"
        if max_density is not None:
            limit = max_density
        else:
            limit = _training_limit(module, positions) if trainable else CONV_MAX_DENSITY
    else:
        if module.weight.dtype != torch.float32:
            return f"dtype {module.weight.dtype} (the kernels are fp32)"
        if max_density is None and trainable:
            return "a Linear trains faster dense at every measured density"
        if max_density is None and module.weight.numel() < LINEAR_MIN_WEIGHTS:
            return f"fewer than {LINEAR_MIN_WEIGHTS} weights: the dense op is faster"
        limit = LINEAR_MAX_DENSITY if max_density is None else max_density
    if cuda and max_density is None:
        return "on CUDA the dense op stays the default until the sparse kernel is measured against cuDNN"
    if density > limit:
        return f"density above the crossover {limit:g}: the dense op is faster"
    return ""


def sparsify(model: nn.Module, masks: dict, *, max_density: float | None = None, device=None,
             trainable: bool = False, layers=None, output_positions: dict | None = None) -> nn.Module:
    """A copy of ``model`` for sampling: every Conv2d/Linear whose weight has a mask in ``masks``
    (name -> bool tensor, True = kept) becomes a SparseConv2d/SparseLinear holding only its kept
    weights, or, where the dense op is faster (see the module docstring; ``max_density`` overrides
    the measured crossover for every layer), stays dense with its weight masked. On the CPU, when any
    layer was made sparse, each GroupNorm followed by SiLU in an ``nn.Sequential`` becomes one
    GroupNormSiLU pass; other modules are unchanged. The copy is in eval mode without gradients, on
    ``device`` (default: the model's); its ``sparsify_report`` says which layers were made sparse and
    why the others were not.

    ``trainable=True``: a copy for training instead, in the model's mode and with its parameters'
    ``requires_grad``; each sparse layer's ``values`` (its kept weights) and ``bias`` are Parameters.
    ``layers``: the names of exactly the layers to make sparse, instead of the crossover rule (a
    resumed training run takes the layers its checkpoint was trained with, wherever it resumes).
    ``output_positions``: conv name -> its outputs per channel in one training step (batch x Ho x Wo),
    which the training crossover depends on (pylth.ddpm.trainer.sparse measures them). GroupNorm + SiLU pairs are fused
    for training too (the fused pass has its own backward)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if max_density is not None and (isinstance(max_density, bool) or not isinstance(max_density, (int, float))
                                    or not 0.0 <= max_density <= 1.0):
        raise ValueError(f"max_density must be a number in [0, 1], got {max_density!r}")
    if not isinstance(trainable, bool):
        raise TypeError(f"trainable must be a bool, got {trainable!r}")
    if output_positions is not None and (not isinstance(output_positions, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in output_positions.items())):
        raise TypeError(f"output_positions must be a dict of module name -> positive int, got {output_positions!r}")
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise TypeError(f"layers must be a list of module names, got {layers!r}")
        layers = set(layers)
        masked = {n.rpartition(".")[0] for n in masks}
        if not layers <= masked:
            raise ValueError(f"layers names modules without a masked weight: {', '.join(sorted(layers - masked))}")
    masks = {n: m.cpu() for n, m in checked_masks(model, masks).items()}
    target = torch.device(device) if device is not None else next(model.parameters(), torch.zeros(())).device
    model = copy.deepcopy(model).cpu()
    if not trainable:
        model.eval().requires_grad_(False)
    with torch.no_grad():
        report = _convert(model, masks, max_density, target, trainable, layers, output_positions or {})
    if target.type == "cpu" and report.sparse:
        # Where the convs run sparse, GroupNorm + SiLU is a large share of the step: one pass for both.
        report.fused_norms = fuse_group_norm_silu(model)
    model.sparsify_report = report
    return model.to(target)


def _convert(model: nn.Module, masks: dict, max_density, target: torch.device, trainable: bool,
             layers: set | None, output_positions: dict) -> SparsifyReport:
    report = SparsifyReport()
    for name, module in list(model.named_modules()):
        mask = masks.get(f"{name}.weight" if name else "weight")
        if mask is None or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        density = float(mask.float().mean())
        if layers is None:
            reason = _choose(module, density, max_density, target.type == "cuda", trainable,
                             output_positions.get(name))
        elif name in layers:
            reason = _choose(module, density, 1.0, False)  # only what the kernels cannot take
            if reason:
                raise ValueError(f"layers asks for {name!r} to be sparse, but {reason}")
        else:
            reason = "not among the layers asked for"
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        if reason:
            module.weight.masked_fill_(~mask, 0)
        else:
            _replace(model, name, (SparseConv2d if kind == "conv" else SparseLinear)(module, mask, trainable))
        report.append(LayerChoice(name, kind, density, not reason, reason))
    handled = {f"{c.name}.weight" if c.name else "weight" for c in report}
    params = dict(model.named_parameters())
    for name, mask in masks.items():  # masked parameters of other modules: kept dense and masked
        if name not in handled:
            params[name].masked_fill_(~mask, 0)
    return report


def dense_layer_masks(model: nn.Module, masks: dict) -> dict:
    """The masks of ``masks`` whose parameter a sparsified ``model`` still has (the layers that stayed
    dense, and masked parameters of other modules): the sparse layers hold no pruned weight."""
    params = dict(model.named_parameters())
    return {name: mask for name, mask in masks.items() if name in params}


def _sparse_modules(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, _SparseWeighted)}


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def dense_state_dict(model: nn.Module) -> dict:
    """The state_dict of the dense masked model a sparsified ``model`` computes, with the dense model's
    keys in its order: each sparse layer's values, taps and row_ptr become its ``weight`` (zeros where
    pruned; the mask itself is what mask.pt holds), everything else as ``state_dict()`` has it."""
    sparse = _sparse_modules(model)
    out = collections.OrderedDict()
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        module = sparse.get(prefix)
        if module is None or leaf == "bias":
            out[key] = value
        elif leaf == "values":
            out[_key(prefix, "weight")] = module.dense_weight()
    return out


@torch.no_grad()
def load_dense_state_(model: nn.Module, state: dict) -> None:
    """Load a dense model's state_dict (model.pt's format, e.g. theta_tau) into a sparsified ``model``:
    each sparse layer gathers its kept values from its ``weight`` at the kept positions (the pruned
    entries of ``state`` are not read), everything else loads as ``load_state_dict`` loads it (strict:
    a missing or unexpected key raises). The layers that stayed dense take the weights as they are:
    mask them afterwards (pylth.pruning.apply_masks with ``dense_layer_masks``)."""
    sparse = _sparse_modules(model)
    state = dict(state)
    weights = {}
    for prefix in sparse:
        key = _key(prefix, "weight")
        if key not in state:
            raise ValueError(f"state has no {key!r}, the dense weight of sparse layer {prefix or '(the model)'!r}")
        weights[prefix] = state.pop(key)
        for leaf in ("values", "taps", "row_ptr"):  # the layer's own: its structure is its mask
            state[_key(prefix, leaf)] = getattr(sparse[prefix], leaf)
    model.load_state_dict(state)
    for prefix, weight in weights.items():
        sparse[prefix].load_dense_weight_(weight)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
