"""Sparse training (``--sparse-training auto|on|off``): which module a run trains for a masked model,
and the way back to the dense masked model.

- ``off``: the dense model with its weights masked, MaskedAdam keeping the pruned entries at zero.
- ``auto`` (the default): pylth.sparse.sparsify's training crossover per layer, measured on this CPU for
  forward + backward + optimizer (pylth.sparse.convert.TRAINING_CONV_MAX_DENSITY): a conv is sparse at
  density <= 4.5-20 % (3x3) or 9-28 % (1x1), the more the more outputs per channel a step has (batch x
  its output plane, which one forward pass of the model on one zero image measures); Linear layers stay
  dense; nothing on CUDA, where the kernels are not measured against cuDNN. A round with no layer that sparse trains exactly as ``off``;
  round 0 (no masks) always does.
- ``on``: every masked Conv2d/Linear the kernels take is sparse, whatever its density; without masks
  (round 0, ``python -m pylth.train``) every prunable layer is, fully kept (slower than dense: for tests
  and measurements).

A sparse layer trains its kept values (one Parameter entry per kept weight: gradient, Adam moments and
EMA are sized by the kept weights); the layers left dense keep their masks in MaskedAdam. The trained
model and its EMA go back to the dense masked format (model.pt's) at the end of training; the
checkpoint holds the compact state.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from pylth.ddpm.models.registry import kind_of, model_kind
from pylth.ddpm.trainer.config import SPARSE_TRAINING
from pylth.pruning import prunable_parameters
from pylth.sparse import dense_layer_masks, dense_state_dict, sparsify


def _check_setting(setting) -> str:
    if setting not in SPARSE_TRAINING:
        raise ValueError(f"sparse_training must be one of {', '.join(SPARSE_TRAINING)}, got {setting!r}")
    return setting


def _sparsified(model: nn.Module, masks: dict, setting: str, layers=None, batch_size: int | None = None
                ) -> nn.Module | None:
    """``model`` sparsified for training under ``setting`` (in exactly ``layers`` when given), or None
    for dense training."""
    if _check_setting(setting) == "off" or (setting == "auto" and not masks) or layers == []:
        return None
    if not masks:  # "on" without masks: every prunable layer, fully kept
        masks = {name: torch.ones(p.shape, dtype=torch.bool, device=p.device) for name, p in prunable_parameters(model)}
    positions = None
    if setting == "auto" and layers is None and batch_size is not None:
        planes = conv_output_planes(model)
        positions = None if planes is None else {name: batch_size * plane for name, plane in planes.items()}
    sparse = sparsify(model, masks, max_density=1.0 if setting == "on" else None, trainable=True, layers=layers,
                      output_positions=positions)
    return sparse if sparse.sparsify_report.sparse else None


@torch.no_grad()
def conv_output_planes(model: nn.Module) -> dict | None:
    """Conv name -> the size of its output planes (Ho x Wo) in one forward pass of ``model`` (a
    registered kind that knows its image shape) on one zero image, in eval mode (no dropout: the global
    random stream is not touched); None for a model it cannot run."""
    found = kind_of(model)
    kind = model_kind(found[0]) if found is not None else None
    if kind is None or kind.image_shape is None:
        return None
    device = next(model.parameters(), torch.zeros(())).device
    planes = {}
    hooks = [m.register_forward_hook(lambda _m, _inp, out, name=name: planes.__setitem__(name, out[0, 0].numel()))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    training = model.training
    try:
        model.eval()
        kind.predict(model, torch.zeros(1, *kind.image_shape(found[1]), device=device),
                     torch.zeros(1, dtype=torch.long, device=device))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return planes


def training_module(model: nn.Module, masks: dict, setting: str, layers=None, batch_size: int | None = None
                    ) -> tuple[nn.Module, dict]:
    """(the module to train, the masks its optimizer must keep) for ``model`` masked by ``masks`` (name ->
    bool, already applied). Dense training returns ``model`` itself and ``masks``; sparse training a
    sparsified copy (its ``sparsify_report`` says which layers are sparse) and the masks of the layers
    left dense. ``auto`` without a layer sparse enough is dense training. ``layers``: the layers to
    train sparse instead of choosing them (a resumed run: its checkpoint's, so that ``auto`` choosing
    otherwise on another device or pylth version cannot refuse or change it). ``batch_size``: the images
    per step on this process, which ``auto``'s crossover depends on (without it, ``auto`` takes the
    crossover of the fewest outputs: it never trains a layer slower, but may leave some dense that
    would be faster sparse)."""
    sparse = _sparsified(model, masks, setting, layers, batch_size)
    return (model, masks) if sparse is None else (sparse, dense_layer_masks(sparse, masks))


def sparse_ema(ema_model: nn.Module, trained: nn.Module, masks: dict, setting: str) -> nn.Module:
    """The EMA for ``trained``: ``ema_model`` (dense, masked) itself when ``trained`` is dense, else
    sparsified in the same layers, in eval mode without gradients."""
    if not sparse_layers(trained):
        return ema_model
    ema = _sparsified(ema_model, masks, setting, sparse_layers(trained)).eval().requires_grad_(False)
    if sparse_layers(ema) != sparse_layers(trained):
        raise RuntimeError("the EMA was made sparse in other layers than the model")
    return ema


def sparse_layers(module: nn.Module) -> list[str]:
    """The layers trained sparse ([] for dense training): what a checkpoint records."""
    report = getattr(module, "sparsify_report", None)
    return [] if report is None else list(report.sparse)


@torch.no_grad()
def to_dense(trained: nn.Module, dense: nn.Module) -> nn.Module:
    """``dense`` holding the weights of ``trained`` (a sparsified copy of it, or ``dense`` itself)."""
    if trained is not dense:
        dense.load_state_dict(dense_state_dict(trained))
    return dense


def dense_copy(trained: nn.Module, like: nn.Module) -> nn.Module:
    """A copy of the dense model ``like`` holding the weights of ``trained`` (an EMA), in eval mode
    without gradients."""
    return to_dense(trained, copy.deepcopy(like)).eval().requires_grad_(False)
