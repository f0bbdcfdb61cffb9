"""Training's hyper-parameters (their fields generate the command-line flags), the device they
name, and the two schedules that follow from them: the learning rate's warm-up and the EMA's."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pylth.foundations.hparams import help_field

SPARSE_TRAINING = ("auto", "on", "off")  # see pylth.ddpm.trainer.sparse


@dataclass
class TrainConfig:
    iterations: int = field(**help_field("training iterations (optimizer steps) in all"))
    batch_size: int = field(default=128, **help_field("images per step, summed over all processes (the global batch; "
                                                 "each of N processes takes batch_size / N)"))
    lr: float = field(default=2e-4, **help_field("Adam learning rate after warm-up"))
    warmup: int = field(default=5000, **help_field("iterations of linear learning-rate warm-up"))
    grad_clip: float = field(default=1.0, **help_field("clip the gradient norm to this (0: no clipping)"))
    ema_decay: float = field(default=0.9999, **help_field("EMA decay, reached after a (1+n)/(10+n) warm-up"))
    num_workers: int = field(default=0, **help_field("DataLoader worker processes", resumable=True))
    bf16: bool = field(default=False, **help_field("bf16 autocast for forward/backward (CUDA only)"))
    seed: int = field(default=0, **help_field("random seed"))
    device: str = field(default="cpu", **help_field("torch device, e.g. cpu, cuda, cuda:1, or auto; under torchrun "
                                                 "cuda means each process's own GPU, cuda:$LOCAL_RANK",
                                                 resumable=True))
    checkpoint_every: int = field(default=1000, **help_field("write a resumable checkpoint every this many iterations",
                                                             resumable=True))
    sparse_training: str = field(default="auto", **help_field(
        "train the masked layers on the sparse kernels with state sized by the kept weights: auto (each layer "
        "whose density is below the measured crossover; dense when none is, as in round 0), on (every masked "
        "layer the kernels take, whatever its density), off (dense masked, MaskedAdam)",
        choices=SPARSE_TRAINING, older_runs="off"))  # runs made before --sparse-training trained dense

    def __post_init__(self):
        for name in ("iterations", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("warmup", "num_workers", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        for name in ("lr", "grad_clip", "ema_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.sparse_training not in SPARSE_TRAINING:
            raise ValueError(f"sparse_training must be one of {', '.join(SPARSE_TRAINING)}, got "
                             f"{self.sparse_training!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str such as cpu, cuda or auto, got {self.device!r}")
        # A device name, not a device this machine has: a run trained on a GPU is read back anywhere
        # (sampled, exported, compared); the commands that train check it with resolve_device.
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as exc:
                raise ValueError(f"device {self.device!r}: {exc}") from None


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The learning rate of step ``iteration`` (0-based): a linear warm-up to config.lr."""
    return config.lr * min(1.0, (iteration + 1) / config.warmup) if config.warmup else config.lr


def ema_decay(config: TrainConfig, updates: int) -> float:
    """The EMA decay after ``updates`` updates. Warm-up: early on the EMA follows the model closely
    instead of clinging to the initial weights."""
    return min(config.ema_decay, (1.0 + updates) / (10.0 + updates))
