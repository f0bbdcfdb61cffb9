"""RunSpec: everything that defines a find_ticket run; its JSON form is the run's config.json."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from pylth.ddpm.config import DataConfig, DiffusionConfig
from pylth.ddpm.models import DEFAULT_MODEL
from pylth.ddpm.trainer import TrainConfig
from pylth.evaluation.config import EvalConfig
from pylth.lottery.config import LotteryConfig


@dataclass
class RunSpec:
    data: DataConfig
    model: dict  # the model kind's constructor configuration
    image_shape: tuple
    train: TrainConfig
    diffusion: DiffusionConfig
    evaluation: EvalConfig
    lottery: LotteryConfig
    model_kind: str = DEFAULT_MODEL  # a name in pylth.ddpm.models.MODELS
    init_from: Optional[dict] = None  # theta_0's saved model folder: {"folder", "sha256"} (resolve_model)

    @property
    def rewind_iteration(self) -> int:
        return math.floor(self.lottery.rewind_fraction * self.train.iterations + 0.5)

    def to_json(self) -> dict:
        out = asdict(self)
        out["rewind_iteration"] = self.rewind_iteration
        return out
