"""MaskedAdam: Adam/AdamW whose pruned weights stay exactly zero, fused into one native call per step."""
from __future__ import annotations

from typing import Optional

import torch
from torch.optim import Optimizer

from pylth.ops.adam import (AdamHyper, adam_step_constants, check_masked_adam_arguments, launch_masked_adam_,
                            masked_adam_reference_, runs_natively)
from pylth.ops.checks import check_tensor
from pylth.ops.native import warn_fallback
from pylth.optim.plan import DeviceBatch, StepPlan, StepWork, runs_fused

__all__ = ["MaskedAdam", "masked_adam_for"]


class MaskedAdam(Optimizer):
    """torch.optim.Adam (AdamW with ``decoupled_weight_decay=True``) with optional per-param bool masks.

    ``set_mask(param, mask)`` zeroes the param and its moments where ``mask`` is False; every
    ``step()`` then leaves them exactly 0 there, whatever the gradient holds (NaN included), and gives
    the active entries exactly the Adam update of ``grad * mask``. Masks are optimizer state: they
    travel through ``state_dict()`` / ``load_state_dict()``. float32 contiguous params take the fused
    kernel (all params of a device in one call); other dtypes or layouts take the pure-torch reference.
    The tables of that call are kept between steps (pylth.optim.plan) and rebuilt, with the full
    argument checks, whenever a param, grad, state tensor, mask or param group changes.
    """

    _plan: Optional[StepPlan] = None  # a class default also covers unpickled and deep-copied optimizers

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
        self._plan = None
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

    def add_param_group(self, param_group: dict) -> None:
        self._plan = None
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict) -> None:
        # torch casts every floating-point state tensor to the param's dtype: masks come back as 0./1.
        self._plan = None
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
        work = self._plan.gather(self.param_groups, self.state) if self._plan is not None else None
        if work is None:
            self._plan = self._build_plan()
            work = self._plan.gather(self.param_groups, self.state)
            if work is None:  # a plan must accept the state it was just built from
                raise RuntimeError("MaskedAdam: internal error, a fresh launch plan rejected its own state")
        self._run(work)
        return loss

    def _build_plan(self) -> StepPlan:
        """Check every param with a grad as masked_adam_ does and sort it to the kernel or the reference."""
        by_device: dict = {}  # device -> (params, group indices, states)
        reference, gradless = [], []
        seen = set()
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                # torch only warns about a param listed twice in a group; one launch would update it twice
                # with the same step's constants, concurrently (a data race).
                if id(p) in seen:
                    raise ValueError(f"param_groups[{gi}] lists a param that appears earlier in the param groups")
                seen.add(id(p))
                grad = p.grad
                if grad is None:
                    gradless.append(p)
                    continue
                if grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not support sparse gradients")
                if torch.is_complex(p):
                    raise TypeError("MaskedAdam does not support complex params")
                state = self._state_of(p)
                if runs_fused(p, grad) and runs_natively(p.device):
                    for seq, item in zip(by_device.setdefault(p.device, ([], [], [])), (p, gi, state)):
                        seq.append(item)
                else:
                    reference.append((p, gi))
        for params, groups, states in by_device.values():
            check_masked_adam_arguments(
                params, [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [s.get("mask") for s in states],
                [self._hyper(self.param_groups[gi], s["step"] + 1) for gi, s in zip(groups, states)])
        batches = [DeviceBatch(device, *lists) for device, lists in by_device.items()]
        return StepPlan(self.param_groups, self.state, batches, reference, gradless)

    @staticmethod
    def _hyper(group: dict, step: int) -> AdamHyper:
        beta1, beta2 = group["betas"]
        return AdamHyper(float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                         float(group["weight_decay"]), bool(group["decoupled_weight_decay"]), step)

    def _run(self, work: StepWork) -> None:
        for state in work.states:
            state["step"] += 1
        constants: dict = {}  # (group index, step) -> the kernel's 8 constants

        def constants_of(gi, step):
            key = (gi, step)
            if key not in constants:
                constants[key] = adam_step_constants(self._hyper(self.param_groups[gi], step))
            return constants[key]

        for batch, grad_addresses, steps in work.batches:
            batch.write_step(grad_addresses, steps, constants_of)
            launch_masked_adam_(batch.device, batch.table, batch.constants)
        if work.reference:
            warn_fallback("MaskedAdam", "params that are not contiguous float32")
            params, grads, exp_avgs, exp_avg_sqs, masks, states, groups = zip(*work.reference)
            masked_adam_reference_(params, grads, exp_avgs, exp_avg_sqs, masks,
                                   [self._hyper(self.param_groups[gi], s["step"]) for gi, s in zip(groups, states)])


def masked_adam_for(module: torch.nn.Module, masks: dict, **hyper) -> MaskedAdam:
    """MaskedAdam over ``module``'s parameters, the one named ``name`` in ``masks`` kept to its mask
    (True = kept); ``hyper``: MaskedAdam's arguments (lr, betas, ...)."""
    optimizer = MaskedAdam(module.parameters(), **hyper)
    named = dict(module.named_parameters())
    for name, mask in masks.items():
        if name not in named:
            raise KeyError(f"masked_adam_for: masks name {name!r}, which is not a parameter of the module")
        optimizer.set_mask(named[name], mask)
    return optimizer
