"""Batches that depend only on (seed, iteration): a resumed run replays what an uninterrupted one saw."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from pylth.ddpm.trainer.config import TrainConfig


class ResumableBatchSampler(Sampler):
    """Batches for iterations [start, end): epoch e is DistributedSampler's shuffle for e (this rank's
    share), cut into full batches; iteration i is batch i mod (batches per epoch) of epoch i div it.
    So resuming at any iteration replays exactly the batches an uninterrupted run would see."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, start: int, end: int):
        self.sampler, self.batch_size, self.start, self.end = sampler, batch_size, start, end
        self.per_epoch = len(sampler) // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} per process exceeds the {len(sampler)} images per process")

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        epoch, order = None, None
        for it in range(self.start, self.end):
            e, b = divmod(it, self.per_epoch)
            if e != epoch:
                self.sampler.set_epoch(e)
                epoch, order = e, list(self.sampler)
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def make_loader(dataset, config: TrainConfig, start: int, end: int, rank: int, world: int,
                device: torch.device) -> DataLoader:
    """This process's batches for iterations [start, end) of the global batch schedule."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    return DataLoader(dataset, batch_sampler=ResumableBatchSampler(sampler, config.batch_size // world, start, end),
                      num_workers=config.num_workers, pin_memory=device.type == "cuda",
                      # its own generator: creating the iterator must not draw from the global RNG,
                      # or a resumed run would diverge from an uninterrupted one
                      generator=torch.Generator().manual_seed(config.seed + start))
