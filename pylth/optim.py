"""MaskedAdam: Adam/AdamW whose pruned weights stay exactly zero, fused into one native call per step."""
from __future__ import annotations

from typing import Optional

import torch
from torch.optim import Optimizer

from pylth.ops.adam import AdamHyper, masked_adam_, masked_adam_reference_
from pylth.ops.checks import check_tensor
from pylth.ops.native import warn_fallback

__all__ = ["MaskedAdam"]


class MaskedAdam(Optimizer):
    """torch.optim.Adam (AdamW with ``decoupled_weight_decay=True``) with optional per-param bool masks.

    ``set_mask(param, mask)`` zeroes the param and its moments where ``mask`` is False; every
    ``step()`` then leaves them exactly 0 there, whatever the gradient holds (NaN included), and gives
    the active entries exactly the Adam update of ``grad * mask``. Masks are optimizer state: they
    travel through ``state_dict()`` / ``load_state_dict()``. float32 contiguous params take the fused
    kernel (all params of a device in one call); other dtypes or layouts take the pure-torch reference.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=bool(decoupled_weight_decay))
        super().__init__(params, defaults)

    def _owns(self, param) -> bool:
        return any(param is p for group in self.param_groups for p in group["params"])

    def _state_of(self, param: torch.Tensor) -> dict:
        """The param's state, created (step 0, zero moments) on first use."""
        state = self.state[param]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def set_mask(self, param: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        """Attach a bool mask of ``param``'s shape and device (None removes it); zero param and moments where False."""
        if not isinstance(param, torch.Tensor) or not self._owns(param):
            raise ValueError("param is not one of this optimizer's parameters")
        state = self._state_of(param)
        if mask is None:
            state.pop("mask", None)
            return
        check_tensor(mask, "mask", dtypes=(torch.bool,), device=param.device, shape=param.shape, contiguous=False)
        mask = mask.detach().contiguous().clone()
        state["mask"] = mask
        for t in (param, state["exp_avg"], state["exp_avg_sq"]):
            t.masked_fill_(~mask, 0)

    def get_mask(self, param: torch.Tensor) -> Optional[torch.Tensor]:
        """The bool mask attached to ``param``, or None."""
        if not isinstance(param, torch.Tensor) or not self._owns(param):
            raise ValueError("param is not one of this optimizer's parameters")
        return self.state[param].get("mask") if param in self.state else None

    def load_state_dict(self, state_dict) -> None:
        # torch casts every floating-point state tensor to the param's dtype: masks come back as 0./1.
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            if "mask" in state:
                mask = state["mask"]
                if tuple(mask.shape) != tuple(param.shape):
                    raise ValueError(f"state_dict holds a mask of shape {tuple(mask.shape)} for a param of "
                                     f"shape {tuple(param.shape)}")
                state["mask"] = (mask != 0).to(param.device).contiguous()
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = int(state["step"].item())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused = ([], [], [], [], [], [])
        reference = ([], [], [], [], [], [])
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hypers = {}  # one AdamHyper per step count in the group (usually a single one)
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not support sparse gradients")
                if torch.is_complex(p):
                    raise TypeError("MaskedAdam does not support complex params")
                state = self._state_of(p)
                step = state["step"] = state["step"] + 1
                hyper = hypers.get(step)
                if hyper is None:
                    hyper = hypers[step] = AdamHyper(
                        float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                        float(group["weight_decay"]), bool(group["decoupled_weight_decay"]), step)
                # Moments share p's layout (zeros_like preserves it), so p and grad decide.
                native_ok = p.dtype == torch.float32 and p.is_contiguous() and grad.is_contiguous()
                ps, gs, ms, vs, masks, hs = fused if native_ok else reference
                ps.append(p)
                gs.append(grad)
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
                masks.append(state.get("mask"))
                hs.append(hyper)
        if fused[0]:
            masked_adam_(*fused)
        if reference[0]:
            warn_fallback("MaskedAdam", "params that are not contiguous float32")
            masked_adam_reference_(*reference)
        return loss
