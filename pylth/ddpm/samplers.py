"""Samplers, registered by name, and the loop that runs one from starting noise to images.

A sampler is a small object in the shape of diffusers' schedulers: ``step(eps, index, x, noise)``
turns the model's noise prediction at ``timesteps[index]`` into the sample at the next timestep. It
knows the noise schedule and its own options, nothing of models or training, and it may keep state
between the steps of one chain (a multistep solver); ``reset()`` starts a new chain.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from pylth.ddpm.schedule import NoiseSchedule
from pylth.ddpm.seeds import derived_seed


class Sampler:
    """Walks ``timesteps`` (descending) of ``schedule``; subclasses give the update rule."""

    name = ""

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, eta: float = 0.0):
        """``steps``: that many timesteps spread evenly over the chain (None: all T). ``eta``: the
        noise scale of samplers that have one (DDIM); the others ignore it."""
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        self.schedule = schedule
        self.timesteps = schedule.timesteps(steps)
        self.eta = float(eta)

    def reset(self) -> None:
        """Forget the previous chain (these samplers keep no state between steps)."""

    def step(self, eps: torch.Tensor, index: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The sample at ``timesteps[index + 1]`` (after the last index: the clean image) from ``x`` at
        ``timesteps[index]``; ``noise`` is a standard normal draw shaped like x (None at the last index)."""
        abar_t, abar_s = self.alpha_bars(index)
        x0 = predicted_x0(eps, x, abar_t)
        if index + 1 == len(self.timesteps):
            return x0
        return self.update(eps, x, x0, abar_t, abar_s, noise)

    def alpha_bars(self, index: int) -> tuple[float, float]:
        """abar at ``timesteps[index]`` and at the next timestep (1.0 after the last)."""
        s = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1
        return self.schedule.alpha_bar(self.timesteps[index]), self.schedule.alpha_bar(s)

    def update(self, eps, x, x0, abar_t: float, abar_s: float, noise) -> torch.Tensor:
        """The move from x at abar_t to abar_s, given the predicted noise and clean image."""
        raise NotImplementedError


def predicted_x0(eps: torch.Tensor, x: torch.Tensor, abar_t: float) -> torch.Tensor:
    """The clean image that ``eps`` implies at ``x`` (abar_t), clipped to the data range [-1, 1]."""
    return ((x - (1.0 - abar_t) ** 0.5 * eps) / abar_t ** 0.5).clamp(-1.0, 1.0)


class DDPMSampler(Sampler):
    """Ho et al.'s ancestral sampler: the posterior q(x_s | x_t, x0) of the (respaced) forward process."""

    name = "ddpm"

    def update(self, eps, x, x0, abar_t, abar_s, noise):
        beta = 1.0 - abar_t / abar_s
        mean = (abar_s ** 0.5 * beta / (1.0 - abar_t)) * x0 + \
            ((1.0 - beta) ** 0.5 * (1.0 - abar_s) / (1.0 - abar_t)) * x
        return mean + ((1.0 - abar_s) / (1.0 - abar_t) * beta) ** 0.5 * noise


class DDIMSampler(Sampler):
    """Song et al.'s DDIM; eta = 0 is deterministic given the starting noise."""

    name = "ddim"

    def update(self, eps, x, x0, abar_t, abar_s, noise):
        sigma = self.eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)) ** 0.5
        direction = max(1.0 - abar_s - sigma ** 2, 0.0) ** 0.5 * eps
        return abar_s ** 0.5 * x0 + direction + sigma * noise


class DPMSolverPlusPlus2M(Sampler):
    """DPM-Solver++(2M) of Lu et al. 2022: the multistep second-order solver of the diffusion ODE in
    its data-prediction form, for FID in 10-25 steps. Deterministic (eta and the noise are unused).

    With lambda = log(alpha / sigma) (alpha = sqrt(abar), sigma = sqrt(1 - abar)) and h = lambda_s -
    lambda_t, a step from t to s is x_s = (sigma_s / sigma_t) x_t - alpha_s (e^-h - 1) D, where D is the
    clipped x0 prediction at t on the first (first-order) step and, after it, the extrapolation
    x0_t + (x0_t - x0_prev) / (2 r), r = (lambda_t - lambda_prev) / h. As diffusers' scheduler and Lu
    et al.'s code do for few steps, the move into the last timestep is first-order when the chain has
    fewer than LOWER_ORDER_FINAL_BELOW moves; the last timestep then gives the clipped x0, as every
    pylth sampler does."""

    name = "dpmsolver++"
    LOWER_ORDER_FINAL_BELOW = 15  # diffusers' lower_order_final threshold, in moves of x

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, eta: float = 0.0):
        super().__init__(schedule, steps, eta)
        self.reset()

    def reset(self) -> None:
        self._previous = None  # (x0 prediction, lambda) of the chain's previous step

    def step(self, eps, index, x, noise):
        abar_t, abar_s = self.alpha_bars(index)
        x0 = predicted_x0(eps, x, abar_t)
        moves = len(self.timesteps) - 1
        if index == moves:
            self._previous = None
            return x0
        lambda_t, lambda_s = half_log_snr(abar_t), half_log_snr(abar_s)
        h = lambda_s - lambda_t
        lower_order_final = index == moves - 1 and moves < self.LOWER_ORDER_FINAL_BELOW
        data = x0
        if self._previous is not None and not lower_order_final:
            x0_previous, lambda_previous = self._previous
            r = (lambda_t - lambda_previous) / h
            data = x0 + (x0 - x0_previous) * (0.5 / r)
        self._previous = (x0, lambda_t)
        sigma_ratio = ((1.0 - abar_s) / (1.0 - abar_t)) ** 0.5
        return sigma_ratio * x - (abar_s ** 0.5 * math.expm1(-h)) * data


def half_log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDPMSampler, DDIMSampler, DPMSolverPlusPlus2M)}


def make_sampler(name: str, schedule: NoiseSchedule, steps: int | None = None, eta: float = 0.0) -> Sampler:
    """The sampler registered as ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](schedule, steps, eta=eta)


@torch.no_grad()
def sample(model, sampler: Sampler, num_samples: int, image_shape, *, seed: int = 0, batch_size: int = 256,
           device=None, progress: bool = True) -> torch.Tensor:
    """``num_samples`` images in [-1, 1] (on the CPU), made in batches of ``batch_size`` by ``sampler``
    with ``model(x_t, t)``'s noise predictions.

    All noise comes from one CPU generator seeded with ``seed``: each image's starting noise first,
    then, per batch, one draw per step but the last (whatever the sampler uses of it). So results do
    not depend on the device or the batch size, and samplers compare at equal noise."""
    if not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    image_shape = tuple(int(s) for s in image_shape)
    ts = sampler.timesteps
    if device is None:
        device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((num_samples, *image_shape), generator=generator)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    out = []
    bar = tqdm(total=num_samples * len(ts), desc=f"sample ({sampler.name}, {len(ts)} steps)", disable=not progress,
               unit="img-step", leave=False)
    try:
        for start in range(0, num_samples, batch_size):
            x = noise[start:start + batch_size].to(device)
            sampler.reset()
            for i, t in enumerate(ts):
                z = torch.randn(x.shape, generator=generator).to(device) if i + 1 < len(ts) else None
                eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
                x = sampler.step(eps, i, x, z)
                bar.update(x.shape[0])
            out.append(x.clamp(-1.0, 1.0).float().cpu())
    finally:
        bar.close()
        if was_training:
            model.train(True)
    return torch.cat(out) if out else torch.empty((0, *image_shape))


def block_seed(seed: int, block: int) -> int:
    """The sampling seed of block ``block`` of a run seeded ``seed`` (distinct for distinct pairs)."""
    return derived_seed(seed, block)


def sample_blocks(model, sampler: Sampler, num_samples: int, image_shape, blocks: range, *, batch_size: int,
                  seed: int, device=None, progress: bool = False, desc: str = "samples") -> torch.Tensor:
    """Samples ``blocks.start * batch_size`` up to the end of block ``blocks.stop - 1`` (at most
    ``num_samples``) of a run's sequence of samples: block j holds samples [j * batch_size, (j + 1) *
    batch_size) and is drawn from seed ``block_seed(seed, j)``. So the sequence does not depend on how
    the blocks are shared out among processes: FID samples and ``python -m pylth.sample`` agree."""
    out = []
    first, last = blocks.start * batch_size, min(blocks.stop * batch_size, num_samples)
    with tqdm(total=max(last - first, 0), desc=desc, disable=not progress, unit="img", leave=False) as bar:
        for j in blocks:
            n = min(batch_size, num_samples - j * batch_size)
            out.append(sample(model, sampler, n, image_shape, seed=block_seed(seed, j), batch_size=batch_size,
                              device=device, progress=False))
            bar.update(n)
    return torch.cat(out) if out else torch.empty((0, *image_shape))
