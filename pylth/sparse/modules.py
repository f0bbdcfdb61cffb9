"""Conv2d and Linear layers that hold only their kept weights and run the sparse kernels, and GroupNorm
fused with the SiLU after it (one native pass, forward and backward).

A module keeps its compressed weight (``values``, ``taps``, ``row_ptr``: see pylth.ops.sparse_conv) in
its state, so ``.to(device)`` and ``state_dict()`` carry them, and the dense shape. By default the
module is for sampling: everything is a buffer, and called with gradients required it raises. Built
with ``trainable=True``, ``values`` (one per kept weight) and ``bias`` are nn.Parameters that autograd
differentiates through the sparse kernels' backward (pylth.ops.sparse_train), so any torch optimizer
trains the kept weights with state sized by them; ``taps`` and ``row_ptr`` (the mask) stay buffers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pylth.ops.group_norm_silu import group_norm_silu
from pylth.ops.native import cpu_isa
from pylth.ops.sparse_conv import SparseWeight, compress_weight, sparse_conv2d, sparse_linear
from pylth.ops.sparse_train import sparse_conv2d_trainable, sparse_linear_trainable


class _SparseWeighted(nn.Module):
    """The shared part: the compressed weight as buffers (a trainable module's values and bias as
    Parameters), rebuilt into a SparseWeight (whose cached input offsets depend only on the kept
    positions) when the buffers move."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None,
                 trainable: bool = False):
        super().__init__()
        compressed = compress_weight(weight.detach().float(), None if mask is None else mask.to(weight.device))
        self.weight_shape = compressed.shape
        self.trainable = bool(trainable)
        bias_requires_grad = bias is not None and bias.requires_grad
        bias = None if bias is None else bias.detach().float().clone()
        if self.trainable:  # parameters first: state_dict() lists values, bias, taps, row_ptr
            self.values = nn.Parameter(compressed.values, requires_grad=weight.requires_grad)
            self.bias = None if bias is None else nn.Parameter(bias, requires_grad=bias_requires_grad)
        else:
            self.register_buffer("values", compressed.values)
        self.register_buffer("taps", compressed.taps)
        self.register_buffer("row_ptr", compressed.row_ptr)
        if not self.trainable:
            self.register_buffer("bias", bias)
        self._weight: SparseWeight | None = compressed.with_values(None) if self.trainable else compressed
        self._weight_key = self._key()

    def _key(self) -> tuple:
        # A trainable module's structure is read without its values, which the optimizer updates in place.
        tensors = (self.taps, self.row_ptr) if self.trainable else (self.values, self.taps, self.row_ptr)
        return tuple(t.data_ptr() for t in tensors) + (self.taps.device,)

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict copies into taps and row_ptr in place (same addresses): another mask with the
        # same kept count would otherwise keep this one's cached offsets.
        super()._load_from_state_dict(*args, **kwargs)
        self._weight = None

    def sparse_weight(self) -> SparseWeight:
        """The compressed weight (a trainable module's: the structure only, without values)."""
        key = self._key()
        if self._weight is None or key != self._weight_key:
            values = None if self.trainable else self.values
            self._weight = SparseWeight(self.weight_shape, self.row_ptr, self.taps, values)
            self._weight_key = key
        return self._weight

    @property
    def density(self) -> float:
        return self.sparse_weight().density

    def dense_weight(self) -> torch.Tensor:
        """The masked dense weight, zeros where nothing is kept (detached)."""
        return self.sparse_weight().with_values(self.values.detach()).to_dense()

    @torch.no_grad()
    def load_dense_weight_(self, weight: torch.Tensor) -> None:
        """Set the kept values from a dense weight of this layer's shape, read at the kept positions."""
        if tuple(weight.shape) != tuple(self.weight_shape):
            raise ValueError(f"weight has shape {tuple(weight.shape)} but this layer's is {tuple(self.weight_shape)}")
        structure = self.sparse_weight()
        flat = weight.detach().to(self.values.device, torch.float32).reshape(self.weight_shape[0], -1)
        self.values.copy_(flat[structure.channels(), structure.taps.long()])

    def _check_no_grad(self, x: torch.Tensor) -> None:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(f"{type(self).__name__} is for inference only: its input requires grad. Sample "
                               "under torch.no_grad(), or train the dense masked model (pylth.ddpm.trainer)")


class SparseConv2d(_SparseWeighted):
    """``nn.Conv2d`` (zero padding, no dilation or groups, square stride and padding) of a masked weight."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor | None = None, trainable: bool = False):
        reason = unsupported_conv(conv)
        if reason:
            raise ValueError(f"SparseConv2d cannot take this conv: {reason}")
        super().__init__(conv.weight, mask, conv.bias, trainable)
        self.stride, self.padding = conv.stride[0], conv.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainable:  # fp32 kernels: under autocast the input may come in another dtype
            return sparse_conv2d_trainable(x.float(), self.values, self.sparse_weight(), self.bias, self.stride,
                                           self.padding)
        self._check_no_grad(x)
        return sparse_conv2d(x, self.sparse_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        co, ci, kh, kw = self.weight_shape
        return (f"{ci}, {co}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}, "
                f"density={self.density:.4f}" + (", trainable" if self.trainable else ""))


class SparseLinear(_SparseWeighted):
    """``nn.Linear`` of a masked weight."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor | None = None, trainable: bool = False):
        super().__init__(linear.weight, mask, linear.bias, trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainable:
            return sparse_linear_trainable(x.float(), self.values, self.sparse_weight(), self.bias)
        self._check_no_grad(x)
        return sparse_linear(x, self.sparse_weight(), self.bias)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight_shape
        return (f"in_features={in_features}, out_features={out_features}, density={self.density:.4f}"
                + (", trainable" if self.trainable else ""))


def unsupported_conv(conv: nn.Conv2d) -> str:
    """Why the sparse kernel cannot replace ``conv`` ("" when it can)."""
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation={tuple(conv.dilation)}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}"
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        return f"stride={tuple(conv.stride)} and padding={tuple(conv.padding)} must be square"
    if conv.weight.dtype != torch.float32:
        return f"dtype {conv.weight.dtype} (the kernels are fp32)"
    return ""


# Training (gradients wanted) takes the fused pass from this many positions per plane on, torch's
# GroupNorm and SiLU below, by the CPU path the kernels run: bench/group_norm_silu_train.py, batch 64,
# one thread, on this CPU (AMD EPYC Zen 5, whose torch runs AVX-512 kernels), 2026-12-06, forward +
# backward against torch's pair at 28x28 / 14x14 / 7x7: avx512 1.47x / 1.39x / 0.84x, avx2 1.19x /
# 1.01x / 0.74-0.78x. The baseline path was not measured: it keeps the AVX2 rule.
FUSED_TRAINING_MIN_PLANE = {"avx512": 196, "avx2": 256, "baseline": 256}


def fused_training_min_plane() -> int:
    """The smallest plane (positions) GroupNormSiLU trains on its fused pass, for the CPU path active now."""
    return FUSED_TRAINING_MIN_PLANE[cpu_isa()]


class GroupNormSiLU(nn.GroupNorm):
    """``nn.GroupNorm`` followed by SiLU, run as one native pass on the CPU (pylth.ops.group_norm_silu):
    with the convs sparse, these elementwise passes are a large share of the step. A GroupNorm
    subclass, so its parameters and state-dict keys stay the GroupNorm's; differentiable (its backward
    is one native pass too; planes smaller than fused_training_min_plane() train on torch's two ops)."""

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm) -> GroupNormSiLU:
        fused = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine,
                    device=norm.weight.device if norm.affine else None)
        if norm.affine:
            fused.weight, fused.bias = norm.weight, norm.bias
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight))
        if tracked and x.ndim > 2 and x[0, 0].numel() < fused_training_min_plane():
            return F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", then SiLU"


def fuse_group_norm_silu(model: nn.Module) -> int:
    """Replace each GroupNorm directly followed by SiLU inside an ``nn.Sequential`` with a GroupNormSiLU
    and the SiLU with ``nn.Identity`` (so indices and state-dict keys stay); returns how many."""
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            norm, act = module[i], module[i + 1]
            if type(norm) is nn.GroupNorm and type(act) is nn.SiLU and _fp32(norm):
                module[i], module[i + 1] = GroupNormSiLU.from_group_norm(norm), nn.Identity()
                fused += 1
    return fused


def _fp32(norm: nn.GroupNorm) -> bool:
    """The fused kernel is fp32, like the sparse ones."""
    return not norm.affine or norm.weight.dtype == torch.float32
