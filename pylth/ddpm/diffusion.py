"""Gaussian diffusion of Ho et al. 2020: the noise schedule with its training loss (the noise-prediction
MSE), plus ``sample()``, a convenience over the samplers of ``pylth.ddpm.samplers``. It asks a model
for nothing but its noise prediction, ``model(x_t, t)`` (every model kind's models answer so)."""
from __future__ import annotations

import torch

from pylth.ddpm.samplers import SAMPLERS, make_sampler, sample
from pylth.ddpm.schedule import NoiseSchedule
from pylth.ddpm.seeds import derived_seed

__all__ = ["GaussianDiffusion", "SAMPLERS", "derived_seed"]


class GaussianDiffusion(NoiseSchedule):
    def loss(self, model, x0: torch.Tensor, t=None, noise=None, generator=None) -> torch.Tensor:
        """Mean squared error between the true and predicted noise (Ho et al.'s L_simple).

        ``t`` and ``noise`` default to uniform timesteps and Gaussian noise drawn with ``generator``
        (which must live on x0's device); pass them explicitly for reproducible held-out losses."""
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        elif t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        pred = model(self.q_sample(x0, t, noise), t)
        return torch.mean((pred.float() - noise.float()) ** 2)

    def sample(self, model, num_samples: int, image_shape, sampler: str = "ddpm", steps: int | None = None,
               eta: float = 0.0, seed: int = 0, batch_size: int = 256, device=None,
               progress: bool = True) -> torch.Tensor:
        """``num_samples`` images in [-1, 1] (on the CPU) from the sampler registered as ``sampler``
        ("ddpm": ancestral sampling over all T steps or an evenly respaced ``steps``; "ddim": Song et
        al.'s, ``eta`` = 0 deterministic given the starting noise); see ``pylth.ddpm.samplers.sample``
        for the noise, which comes from a CPU generator seeded with ``seed``."""
        return sample(model, make_sampler(sampler, self, steps, eta=eta), num_samples, image_shape, seed=seed,
                      batch_size=batch_size, device=device, progress=progress)
