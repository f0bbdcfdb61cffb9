"""Algorithm 1's hyper-parameters; the training ones live in ``pylth.ddpm.trainer.TrainConfig``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pylth.foundations.hparams import help_field

RESETS = ("rewind", "init", "reinit")
STRATEGY_NAMES = ("layerwise", "uniform", "global", "random")


def _opt(default, help: str, choices=None, resumable: bool = False):
    return field(default=default, **help_field(help, resumable=resumable,
                                               **({} if choices is None else {"choices": choices})))


@dataclass
class LotteryConfig:
    strategy: str = _opt("layerwise", "how each round prunes: layerwise (p + j*q for U-Net module j in forward "
                         "order, the paper's), uniform (p per tensor), global (p of all weights ranked together), "
                         "random (layerwise ratios, random weights)", STRATEGY_NAMES)
    prune_ratio: float = _opt(0.2, "p: fraction of the still-active weights pruned per round")
    increment: float = _opt(0.01, "q: extra fraction per module downstream (layerwise and random)")
    cap: float = _opt(0.95, "largest fraction of a module's active weights pruned in one round")
    target_sparsity: float = _opt(0.99, "stop once this fraction of the prunable weights is zero", resumable=True)
    max_rounds: int = _opt(25, "stop after this many pruning rounds (round 0, dense, is extra); "
                           "raise it to extend a finished run", resumable=True)
    rewind_fraction: float = _opt(0.05, "tau = this fraction of --iterations: the rewind point")
    reset: str = _opt("rewind", "survivors restart from theta_tau (rewind), theta_0 (init) or fresh random "
                      "weights (reinit, the control)", RESETS)
    heldout_samples: int = _opt(256, "held-out images for the denoising loss (fixed timesteps and noise)")

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the flag of the first bad value."""
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGY_NAMES)}, got {self.strategy!r}")
        if self.reset not in RESETS:
            raise ValueError(f"--reset must be one of {', '.join(RESETS)}, got {self.reset!r}")
        for name in ("prune_ratio", "increment", "cap", "target_sparsity", "rewind_fraction"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be a number in [0, 1], got {value!r}")
        if self.prune_ratio == 0.0 and self.target_sparsity > 0.0:
            raise ValueError("--prune-ratio is 0: no round would prune anything")
        for name, low in (("max_rounds", 0), ("heldout_samples", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")

