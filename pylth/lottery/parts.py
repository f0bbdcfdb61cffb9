"""The collaborators a Lottery is given, instead of importing them: how a round trains, how its model
is scored, how the report is drawn. Tests and other drivers pass their own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pylth.ddpm.trainer import train
from pylth.evaluation.fid import FidEvaluator
from pylth.lottery.report import render_report


@dataclass(frozen=True)
class LotteryParts:
    train: Callable = train  # pylth.ddpm.trainer.train's signature
    # (EvalConfig, data set name, data set, device, schedule, environment=, progress=) -> an object whose
    # score(model, seed=, return_samples=) is FidEvaluator.score's; the Lottery builds it once
    fid_evaluator: Callable = FidEvaluator
    render_report: Callable = render_report  # (records, title) -> PNG bytes
