"""Masked DDPM training: MaskedAdam with linear warm-up, gradient clipping, a masked EMA with
warm-up, optional bf16 autocast, atomic checkpoints and resume, DDP under torch.distributed."""
from __future__ import annotations

import collections
import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from pylth import distributed as D
from pylth.ddpm.config import help_field
from pylth.ddpm.diffusion import derived_seed
from pylth.io import atomic_torch_save, torch_load
from pylth.optim import MaskedAdam


@dataclass
class TrainConfig:
    iterations: int = field(**help_field("training iterations (optimizer steps) in all"))
    batch_size: int = field(default=128, **help_field("images per step, summed over all processes (the global batch; "
                                                 "each of N processes takes batch_size / N)"))
    lr: float = field(default=2e-4, **help_field("Adam learning rate after warm-up"))
    warmup: int = field(default=5000, **help_field("iterations of linear learning-rate warm-up"))
    grad_clip: float = field(default=1.0, **help_field("clip the gradient norm to this (0: no clipping)"))
    ema_decay: float = field(default=0.9999, **help_field("EMA decay, reached after a (1+n)/(10+n) warm-up"))
    num_workers: int = field(default=0, **help_field("DataLoader worker processes"))
    bf16: bool = field(default=False, **help_field("bf16 autocast for forward/backward (CUDA only)"))
    seed: int = field(default=0, **help_field("random seed"))
    device: str = field(default="cpu", **help_field("torch device, e.g. cpu, cuda, cuda:1, or auto; under torchrun "
                                                 "cuda means each process's own GPU, cuda:$LOCAL_RANK"))
    checkpoint_every: int = field(default=1000, **help_field("write a resumable checkpoint every this many iterations"))

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
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str such as cpu, cuda or auto, got {self.device!r}")
        try:
            resolve_device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r}: {exc}") from None


def resolve_device(device: str) -> torch.device:
    """torch.device(device), with "auto" meaning CUDA when available; unknown devices raise."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available")
    return dev


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module
    loss: float
    iterations: int


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


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict | None) -> None:
    """Zero the masked-out entries of ``model``'s parameters (select, so NaN becomes 0 too)."""
    params = dict(model.named_parameters())
    for name, mask in (masks or {}).items():
        params[name].masked_fill_(~mask.to(params[name].device), 0)


@torch.no_grad()
def check_masked_zero(model: nn.Module, masks: dict | None) -> None:
    """Raise RuntimeError unless every masked-out parameter entry is exactly 0."""
    params = dict(model.named_parameters())
    for name, mask in (masks or {}).items():
        p = params[name]
        if bool((p.masked_select(~mask.to(p.device)) != 0).any()):
            raise RuntimeError(f"masked entries of {name} are not zero")


def _check_masks(model: nn.Module, masks: dict | None) -> dict:
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict name -> bool tensor, got {type(masks).__name__}")
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"masks has {name!r}, which is not a parameter of the model")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != params[name].shape:
            raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(params[name].shape)}")
        out[name] = mask.to(params[name].device)
    return out


def _ema_decay(config: TrainConfig, updates: int) -> float:
    # Warm-up: early on the EMA follows the model closely instead of clinging to the initial weights.
    return min(config.ema_decay, (1.0 + updates) / (10.0 + updates))


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def iteration_noise(diffusion, config: TrainConfig, iteration: int, x0: torch.Tensor, rank: int, world: int):
    """(t, noise) for this rank's rows of the global batch of ``iteration``.

    Drawn for the whole global batch from a generator seeded by (seed, iteration), then split the way
    the sampler splits the images (rank r holds global rows r, r + world, ...): every image gets the
    same timestep and noise whatever the number of processes, and a resumed run the same as an
    uninterrupted one."""
    gen = torch.Generator(device=x0.device).manual_seed(derived_seed(config.seed, iteration))
    rows = x0.shape[0] * world
    t = torch.randint(0, diffusion.num_timesteps, (rows,), device=x0.device, generator=gen)
    noise = torch.randn((rows, *x0.shape[1:]), device=x0.device, dtype=x0.dtype, generator=gen)
    return t[rank::world], noise[rank::world]


def train_step(net, diffusion, x0, optimizer, params, pruned, grad_clip: float, bf16: bool,
               t=None, noise=None) -> torch.Tensor:
    """One optimizer step on batch ``x0``; ``pruned`` lists (param, bool tensor True where pruned);
    ``t`` and ``noise`` as for diffusion.loss (default: drawn from the global RNG).
    Returns the (detached) loss."""
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = diffusion.loss(net, x0, t=t, noise=noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for param, where in pruned:  # pruned weights do not exist: keep them out of the gradient norm
            param.grad.masked_fill_(where, 0)
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()


def _read_checkpoint(path: str | None) -> dict | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None when there is none. Under
    torch.distributed rank 0 reads it and sends it: the other machines need not share its disk."""
    if path is None:
        return None
    ckpt = None
    with D.fail_together(f"reading checkpoint {path}"):
        if D.is_main() and os.path.exists(path):
            ckpt = torch_load(path, map_location="cpu")
    return D.broadcast_object(ckpt)


def _global_losses(pending: list, world: int) -> list[float]:
    """The global batch's loss per step: the mean over processes of their (equal-sized) batches' losses,
    so every process keeps the same history and checkpoints and resumes agree with one process."""
    losses = torch.stack(pending).float()
    if world > 1:
        dist.all_reduce(losses)
        losses /= world
    return losses.cpu().tolist()


def train(model: nn.Module, diffusion, dataset, config: TrainConfig, *, masks: dict | None = None,
          start_iteration: int = 0, end_iteration: int | None = None, ema_state: dict | None = None,
          checkpoint_path: str | None = None, on_iteration=None, progress_desc: str = "train") -> TrainResult:
    """Train ``model`` (masked by ``masks``, name -> bool) for iterations [start_iteration,
    end_iteration) with a fresh MaskedAdam; see the module docstring. ``ema_state`` initialises the
    EMA (default: the model as it is at the start). ``checkpoint_path``: resume from it when it
    exists, write it every ``config.checkpoint_every`` iterations and at the end."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    end = config.iterations if end_iteration is None else end_iteration
    if not isinstance(end, int) or end < 0:
        raise ValueError(f"end_iteration must be a non-negative int, got {end!r}")
    if not isinstance(start_iteration, int) or not 0 <= start_iteration <= end:
        raise ValueError(f"start_iteration must be an int in [0, end_iteration={end}], got {start_iteration!r}")
    device = resolve_device(config.device)
    distributed, rank, world = D.is_distributed(), D.rank(), D.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    model.to(device).train()
    masks = _check_masks(model, masks)
    apply_masks(model, masks)
    named = dict(model.named_parameters())
    pruned = [(named[name], ~mask) for name, mask in masks.items()]

    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    if ema_state is not None:
        ema_model.load_state_dict(ema_state)
        apply_masks(ema_model, masks)
    optimizer = MaskedAdam(model.parameters(), lr=config.lr)
    for name, mask in masks.items():
        optimizer.set_mask(named[name], mask)
    ema_updates, losses = 0, collections.deque(maxlen=100)
    torch.manual_seed(config.seed * 100003 + start_iteration + rank)  # dropout: per process

    ckpt = _read_checkpoint(checkpoint_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema_model.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_iteration, ema_updates = int(ckpt["iteration"]), int(ckpt["ema_updates"])
        losses.extend(ckpt["losses"])
        rng = ckpt["rng"]  # one state per process
        if len(rng) != world:
            raise ValueError(f"checkpoint {checkpoint_path} was written by {len(rng)} processes, not {world}")
        _set_rng_state(rng[rank], device)
        if start_iteration > end:
            raise ValueError(f"checkpoint {checkpoint_path} is at iteration {start_iteration}, past the end {end}")

    def save(iteration: int) -> None:  # called by every process (gathering RNG states), rank 0 writes
        if pending:  # the checkpoint holds every step's loss so far, or a resumed run reports another loss
            losses.extend(_global_losses(pending, world))
            pending.clear()
        rng = [_rng_state(device)]
        if distributed:
            rng = [None] * world
            dist.all_gather_object(rng, _rng_state(device))
        if rank == 0:
            atomic_torch_save(dict(model=model.state_dict(), ema=ema_model.state_dict(),
                                   optimizer=optimizer.state_dict(), iteration=iteration, ema_updates=ema_updates,
                                   losses=[float(x) for x in losses], rng=rng,
                                   config=dataclasses.asdict(config)), checkpoint_path)

    net = model
    if distributed:
        # 1x1 convolutions get channels-last weight gradients whose strides differ from the bucket's
        # only along size-1 dimensions: the same memory order, so DDP's warning about it is noise.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True)
    loader = DataLoader(dataset, batch_sampler=ResumableBatchSampler(sampler, config.batch_size // world,
                                                                     start_iteration, end),
                        num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        # its own generator: creating the iterator must not draw from the global RNG,
                        # or a resumed run would diverge from an uninterrupted one
                        generator=torch.Generator().manual_seed(config.seed + start_iteration))
    use_bf16 = config.bf16 and device.type == "cuda"
    params = list(model.parameters())
    ema_params = list(ema_model.parameters())
    pending = []  # losses still on the device: read back in bulk, not one sync per step
    bar = tqdm(total=end, initial=start_iteration, desc=progress_desc, disable=rank != 0, dynamic_ncols=True)
    it = start_iteration
    for x0, _ in loader:
        x0 = x0.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (it + 1) / config.warmup) if config.warmup else config.lr
        t, noise = iteration_noise(diffusion, config, it, x0, rank, world)
        loss = train_step(net, diffusion, x0, optimizer, params, pruned, config.grad_clip, use_bf16, t, noise)
        with torch.no_grad():
            # Masked entries are exactly 0 in model and EMA alike, and lerp keeps them 0.
            torch._foreach_lerp_(ema_params, params, 1.0 - _ema_decay(config, ema_updates))
        ema_updates += 1
        it += 1
        pending.append(loss)
        if on_iteration is not None:
            on_iteration(it, model)
        if it % 25 == 0 or it == end:
            losses.extend(_global_losses(pending, world))
            pending.clear()
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", refresh=False)
        bar.update(1)
        if checkpoint_path is not None and it % config.checkpoint_every == 0 and it != end:
            check_masked_zero(model, masks)
            save(it)
    bar.close()
    check_masked_zero(model, masks)
    check_masked_zero(ema_model, masks)
    if checkpoint_path is not None:
        save(it)
    if distributed:
        dist.barrier()
    loss_value = sum(losses) / len(losses) if losses else float("nan")
    return TrainResult(model=model, ema_model=ema_model, loss=loss_value, iterations=it)
