"""The held-out denoising loss: fixed images, timesteps and noise, so that rounds compare."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeldOut:
    """Fixed held-out images, timesteps and noise: the denoising loss differs only by the model."""

    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor


def make_heldout(dataset, num_samples: int, num_timesteps: int, seed: int) -> HeldOut:
    g = torch.Generator().manual_seed(seed)
    n = min(num_samples, len(dataset))
    index = torch.randperm(len(dataset), generator=g)[:n]
    x0 = torch.stack([dataset[int(i)][0] for i in index])
    # Timesteps spread evenly over the whole chain, so the loss weighs every noise level.
    t = torch.linspace(0, num_timesteps - 1, n).round().long()
    noise = torch.randn(x0.shape, generator=g)
    return HeldOut(x0, t, noise)


@torch.no_grad()
def heldout_loss(model, diffusion, heldout: HeldOut, device, batch_size: int = 256) -> float:
    """Mean denoising MSE over the held-out set (batch means weighted by batch size)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, heldout.x0.shape[0]
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        loss = diffusion.loss(model, heldout.x0[sl].to(device), t=heldout.t[sl].to(device),
                              noise=heldout.noise[sl].to(device))
        total += float(loss) * heldout.x0[sl].shape[0]
    model.train(was_training)
    return total / n
