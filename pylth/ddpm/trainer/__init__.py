"""Masked DDPM training in parts, each with one job: the hyper-parameters and schedules (``config``),
the state a step changes (``state``), one step (``step``), the batches (``loader``), checkpoints
(``checkpoint``), what trains under --sparse-training (``sparse``) and the loop that joins them
(``loop``). MaskedAdam with a linear warm-up, gradient clipping, a masked EMA with warm-up, optional
bf16 autocast, atomic checkpoints and bit-exact resume, DDP under torch.distributed; a stop on
divergence (``divergence``) and on SIGTERM/SIGUSR1 (``pylth.foundations.preemption``), each leaving a good
checkpoint."""
from pylth.ddpm.trainer.config import TrainConfig, ema_decay, learning_rate
from pylth.ddpm.trainer.divergence import Diverged
from pylth.ddpm.trainer.loader import ResumableBatchSampler
from pylth.ddpm.trainer.loop import TrainResult, train
from pylth.ddpm.trainer.step import iteration_noise, train_step

__all__ = ["Diverged", "ResumableBatchSampler", "TrainConfig", "TrainResult", "ema_decay", "iteration_noise",
           "learning_rate", "train", "train_step"]
