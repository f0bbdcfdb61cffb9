"""Algorithm 1 of the lottery-ticket DDPM paper: rounds of train -> prune -> reset, in a run directory.

``find_ticket(spec, out)`` runs or resumes a run; ``load_ticket(run_dir, round)`` returns a round's
ticket (its masked starting weights and masks). The command line is ``python -m pylth.find_ticket``.
"""
from pylth.lottery.config import LotteryConfig
from pylth.lottery.resume import ConfigMismatchError
from pylth.lottery.rounds import RunSpec, find_ticket
from pylth.lottery.run_dir import RunDirectory
from pylth.lottery.ticket import load_ticket

__all__ = ["ConfigMismatchError", "LotteryConfig", "RunDirectory", "RunSpec", "find_ticket", "load_ticket"]
