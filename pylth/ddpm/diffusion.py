"""Gaussian diffusion of Ho et al. 2020: the linear beta schedule, the noise-prediction loss and two
samplers (ancestral DDPM and DDIM) over any subsequence of the timesteps. Knows nothing of the model
beyond calling ``model(x_t, t)``."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

SAMPLERS = ("ddpm", "ddim")


def derived_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` (a training iteration, a block of samples) of a run seeded ``seed``:
    distinct for distinct pairs, unlike seed + index, and a valid torch seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class GaussianDiffusion:
    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.num_timesteps = num_timesteps
        # float64 on the CPU: the closed forms are exact; values are cast when used.
        self.betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self._alphas_cumprod_on = {}  # device -> alphas_cumprod there

    def _alphas_cumprod_at(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """abar_t for each entry of t, shaped to broadcast over x. The schedule is copied to x's device
        once: a copy from pageable host memory waits for the GPU's queue, so one per training step
        would keep the host from running ahead of the GPU."""
        values = self._alphas_cumprod_on.get(x.device)
        if values is None:
            values = self._alphas_cumprod_on[x.device] = self.alphas_cumprod.to(x.device)
        return values[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        abar = self._alphas_cumprod_at(t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

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

    def timesteps(self, steps: int | None) -> list[int]:
        """``steps`` timesteps spread evenly over [0, T-1] (all of them for None), descending."""
        if steps is None:
            steps = self.num_timesteps
        if not isinstance(steps, int) or not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be an int in [1, {self.num_timesteps}], got {steps!r}")
        ts = torch.linspace(0, self.num_timesteps - 1, steps, dtype=torch.float64).round().long()
        return sorted(set(ts.tolist()), reverse=True)

    @torch.no_grad()
    def sample(self, model, num_samples: int, image_shape, sampler: str = "ddpm", steps: int | None = None,
               eta: float = 0.0, seed: int = 0, batch_size: int = 256, device=None, progress: bool = True
               ) -> torch.Tensor:
        """``num_samples`` images in [-1, 1] (on the CPU), generated in batches.

        "ddpm" is ancestral sampling with the posterior variance, over all T steps or, with ``steps``,
        over an evenly respaced subsequence; "ddim" is Song et al.'s sampler (``eta`` = 0:
        deterministic given the initial noise). All noise comes from a CPU generator seeded with
        ``seed``, so results do not depend on the device or the batch size."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        image_shape = tuple(int(s) for s in image_shape)
        ts = self.timesteps(steps)
        if device is None:
            device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(int(seed))
        # Each image's starting noise comes first, then one draw per step per batch.
        noise = torch.randn((num_samples, *image_shape), generator=generator)
        was_training = model.training
        model.eval()
        out = []
        bar = tqdm(total=num_samples * len(ts), desc=f"sample ({sampler}, {len(ts)} steps)", disable=not progress,
                   unit="img-step", leave=False)
        try:
            for start in range(0, num_samples, batch_size):
                x = noise[start:start + batch_size].to(device)
                for i, t in enumerate(ts):
                    s = ts[i + 1] if i + 1 < len(ts) else -1
                    z = torch.randn(x.shape, generator=generator).to(device) if s >= 0 else None
                    x = self._step(model, x, t, s, sampler, eta, z)
                    bar.update(x.shape[0])
                out.append(x.clamp(-1.0, 1.0).float().cpu())
        finally:
            bar.close()
            model.train(was_training)
        return torch.cat(out) if out else torch.empty((0, *image_shape))

    def _step(self, model, x, t: int, s: int, sampler: str, eta: float, z) -> torch.Tensor:
        """One move from timestep t to s < t (s = -1: to the clean image)."""
        abar_t = self.alphas_cumprod[t].item()
        abar_s = self.alphas_cumprod[s].item() if s >= 0 else 1.0
        eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0 = ((x - (1.0 - abar_t) ** 0.5 * eps) / abar_t ** 0.5).clamp(-1.0, 1.0)
        if s < 0:
            return x0
        if sampler == "ddpm":
            # Posterior q(x_s | x_t, x0) of the (respaced) forward process.
            beta = 1.0 - abar_t / abar_s
            mean = (abar_s ** 0.5 * beta / (1.0 - abar_t)) * x0 + \
                ((1.0 - beta) ** 0.5 * (1.0 - abar_s) / (1.0 - abar_t)) * x
            return mean + ((1.0 - abar_s) / (1.0 - abar_t) * beta) ** 0.5 * z
        sigma = eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)) ** 0.5
        direction = max(1.0 - abar_s - sigma ** 2, 0.0) ** 0.5 * eps
        return abar_s ** 0.5 * x0 + direction + sigma * z
