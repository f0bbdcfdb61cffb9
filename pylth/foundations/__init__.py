"""What every layer stands on: the run directory and its lock (``run_dir``, ``run_lock``), atomic files
and digests (``io``), torch.distributed (``distributed``), stop signals (``preemption``), devices by name
(``devices``) and the dataclass <-> argparse helpers (``hparams``)."""
