"""Algorithm 1 of the lottery-ticket DDPM paper: rounds of train -> prune -> reset, in a run directory.

``find_ticket(spec, out)`` runs or resumes a run; ``load_round_start(run_dir, round)`` returns where a
round started (its masked starting weights, theta_tau ⊙ m, and its masks); ``load_trained(run_dir,
round)`` its ticket, the model it trained; ``export_ticket(run_dir, out)`` writes a round's ticket as a
diffusers DDPMPipeline. The command line is ``python -m pylth.find_ticket``.
"""
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.config import LotteryConfig
from pylth.lottery.export import export_ticket
from pylth.lottery.parts import LotteryParts
from pylth.lottery.resume import ConfigMismatchError
from pylth.lottery.rounds import Lottery, LotteryData
from pylth.lottery.run_reader import load_round_start, load_trained
from pylth.lottery.runner import find_ticket
from pylth.lottery.spec import RunSpec

__all__ = ["ConfigMismatchError", "Lottery", "LotteryConfig", "LotteryData", "LotteryParts", "RunDirectory",
           "RunSpec", "export_ticket", "find_ticket", "load_round_start", "load_trained"]
