"""One training step: the iteration's timesteps and noise, the masked optimizer step, the EMA update."""
from __future__ import annotations

import torch
from torch import nn

from pylth.ddpm.seeds import derived_seed
from pylth.ddpm.trainer.config import TrainConfig, ema_decay


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


FLIP_DRAW = 1  # the flips' draw of an iteration, beside its noise's (derived_seed(seed, iteration) itself)


def iteration_flips(config: TrainConfig, iteration: int, x0: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """``x0``, this rank's rows of the global batch of ``iteration``, with each row flipped left-right
    where the global batch's draw (seeded by seed and iteration, as the noise) says so: the same images
    flip whatever the number of processes."""
    gen = torch.Generator().manual_seed(derived_seed(derived_seed(config.seed, iteration), FLIP_DRAW))
    flip = (torch.rand(x0.shape[0] * world, generator=gen)[rank::world] < 0.5).to(x0.device)
    return torch.where(flip.view(-1, *([1] * (x0.ndim - 1))), x0.flip(-1), x0)


def train_step(net, diffusion, x0, optimizer, params, pruned, grad_clip: float, bf16: bool,
               t=None, noise=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step on batch ``x0``; ``pruned`` lists (param, bool tensor True where pruned);
    ``t`` and ``noise`` as for diffusion.loss (default: drawn from the global RNG). Returns the
    (detached) loss and the gradient norm before clipping (None without clipping), both still on the
    device: reading them is a sync."""
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = diffusion.loss(net, x0, t=t, noise=noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for param, where in pruned:  # pruned weights do not exist: keep them out of the gradient norm
            param.grad.masked_fill_(where, 0)
    grad_norm = nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip else None
    optimizer.step()
    return loss.detach(), grad_norm


@torch.no_grad()
def update_ema(ema_params: list, params: list, config: TrainConfig, updates: int) -> None:
    """One EMA update after ``updates`` earlier ones. Masked entries are exactly 0 in model and EMA
    alike, and lerp keeps them 0."""
    torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(config, updates))
