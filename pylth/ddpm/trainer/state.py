"""What training changes step by step and a checkpoint holds, and how it is set up for a run."""
from __future__ import annotations

import collections
import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pylth.ddpm.trainer.sparse import sparse_ema, training_module
from pylth.foundations.distributed import world_size
from pylth.optim import MaskedAdam, masked_adam_for
from pylth.pruning.model_masks import apply_masks, checked_masks

LOSS_WINDOW = 100  # the reported training loss is the mean of the last this many steps


@dataclass
class TrainState:
    model: nn.Module  # what is trained: the dense masked model, or its sparsified copy (sparse training)
    ema_model: nn.Module  # its EMA, in the same format
    optimizer: MaskedAdam
    masks: dict  # name -> bool tensor on the model's device (True = kept), of the parameters ``model`` has
    dense_model: nn.Module  # the model train() was given, which gets the trained weights at the end
    sparse_training: str  # the setting (TrainConfig.sparse_training) that chose ``model``
    iteration: int  # steps taken so far
    ema_updates: int = 0
    losses: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOSS_WINDOW))
    pending: list = field(default_factory=list)  # step losses still on the device, read back in bulk
    pending_norms: list = field(default_factory=list)  # their gradient norms (none without clipping)
    checkpointed: int | None = None  # the iteration of the checkpoint on disk, once one is written or read
    # Training time of earlier invocations up to the checkpoint resumed from (wall, this process's CPU),
    # and the clocks when this invocation began.
    earlier_seconds: tuple = (0.0, 0.0)
    started: tuple = field(default_factory=lambda: (time.perf_counter(), time.process_time()))

    @property
    def seconds(self) -> tuple[float, float]:
        """(wall, CPU) seconds of training so far, summed over the invocations that led to this state.
        CPU seconds are this process's, all its threads: a shared machine slows the wall clock, not them."""
        now = (time.perf_counter(), time.process_time())
        return tuple(e + n - s for e, n, s in zip(self.earlier_seconds, now, self.started))

    @property
    def pruned(self) -> list:
        """(param, bool tensor True where pruned) of every masked parameter."""
        named = dict(self.model.named_parameters())
        return [(named[name], ~mask) for name, mask in self.masks.items()]


def setup_state(model: nn.Module, config, device: torch.device, masks: dict | None, ema_state: dict | None,
                start_iteration: int, sparse_layers=None) -> TrainState:
    """The state at ``start_iteration``: the model on ``device`` with its masks applied, an EMA copy
    (``ema_state`` when given, masked too) and a fresh MaskedAdam holding the masks. Under sparse
    training (``config.sparse_training``, see ``sparse``) model and EMA are sparsified copies, which
    gather their kept values from the masked dense weights; MaskedAdam then holds the masks of the
    layers left dense only; ``sparse_layers`` fixes which layers train sparse (a resumed checkpoint's)."""
    model.to(device).train()
    masks = checked_masks(model, masks)
    apply_masks(model, masks)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    if ema_state is not None:
        ema_model.load_state_dict(ema_state)
        apply_masks(ema_model, masks)
    trained, trained_masks = training_module(model, masks, config.sparse_training, sparse_layers,
                                             batch_size=max(1, config.batch_size // world_size()))
    ema_model = sparse_ema(ema_model, trained, masks, config.sparse_training)
    optimizer = masked_adam_for(trained, trained_masks, lr=config.lr)
    return TrainState(model=trained, ema_model=ema_model, optimizer=optimizer, masks=trained_masks, dense_model=model,
                      sparse_training=config.sparse_training, iteration=start_iteration)
