"""MaskedAdam: Adam/AdamW whose pruned weights stay exactly zero (``masked_adam``), and the launch
plan it keeps from one step to the next (``plan``); the kernel is ``pylth.ops.adam``."""
from pylth.optim.masked_adam import MaskedAdam, masked_adam_for

__all__ = ["MaskedAdam", "masked_adam_for"]
