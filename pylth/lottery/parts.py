"""The collaborators a Lottery is given, instead of importing them: how a round trains, how its model
is scored, how the report is drawn. Tests and other drivers pass their own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pylth.ddpm.trainer import train
from pylth.evaluation.fid import evaluate_fid
from pylth.lottery.report import render_report


@dataclass(frozen=True)
class LotteryParts:
    train: Callable = train  # pylth.ddpm.trainer.train's signature
    evaluate_fid: Callable = evaluate_fid  # pylth.evaluation.fid.evaluate_fid's signature
    render_report: Callable = render_report  # (records, title) -> PNG bytes
