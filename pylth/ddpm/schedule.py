"""The noise schedule of Ho et al. 2020: linear betas, the closed forms of the forward process, and
the evenly respaced timesteps a sampler walks. It knows nothing of models, losses or samplers."""
from __future__ import annotations

import torch


class NoiseSchedule:
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

    def alpha_bar(self, t: int) -> float:
        """abar_t of one timestep as a Python float; t = -1 (past the last step) is 1.0."""
        return self.alphas_cumprod[t].item() if t >= 0 else 1.0

    def alphas_cumprod_at(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """abar_t for each entry of t, shaped to broadcast over x. The schedule is copied to x's device
        once: a copy from pageable host memory waits for the GPU's queue, so one per training step
        would keep the host from running ahead of the GPU."""
        values = self._alphas_cumprod_on.get(x.device)
        if values is None:
            values = self._alphas_cumprod_on[x.device] = self.alphas_cumprod.to(x.device)
        return values[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        abar = self.alphas_cumprod_at(t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def timesteps(self, steps: int | None) -> list[int]:
        """``steps`` timesteps spread evenly over [0, T-1] (all of them for None), descending."""
        if steps is None:
            steps = self.num_timesteps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be an int in [1, {self.num_timesteps}], got {steps!r}")
        ts = torch.linspace(0, self.num_timesteps - 1, steps, dtype=torch.float64).round().long()
        return sorted(set(ts.tolist()), reverse=True)
