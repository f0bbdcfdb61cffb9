"""pylth's samplers against diffusers' schedulers on the same UNet2DModel and the same noise.

pylth's ``sample`` draws all noise from one CPU generator: the starting images, then one draw per step
but the last. The diffusers chains below draw the same values in the same order and hand them to the
scheduler, so the two differ only by arithmetic (diffusers keeps its schedule in float32, pylth's
scalars are float64).

Timesteps. pylth walks ``NoiseSchedule.timesteps(N)``: N timesteps spread evenly over [0, T-1] with
rounding, descending, and the last one only gives the clipped x0. DDIMScheduler's "linspace"
spacing yields the same list, but its step always goes from t to t - T // N, which for those uneven
strides is another timestep than the next in the list; so the DDIM chains use spacings where the two
agree (all T timesteps; or "leading", 900, 800, ..., 0, given to pylth's sampler as its timesteps).
DPMSolverMultistepScheduler takes pylth's own timesteps (``set_timesteps(timesteps=...)``) without the
final 0, with ``final_sigmas_type="sigma_min"`` (its last move ends at sigma(t=0)); the x0 read-out at
t = 0 that pylth's chain ends with is then done by hand. Its ``thresholding`` with
``sample_max_value=1`` is exactly pylth's clipping of x0 to [-1, 1].
"""
from __future__ import annotations

import pytest
import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.models import model_kind
from pylth.ddpm.samplers import make_sampler, predicted_x0, sample
from diffusers_helpers import tiny_config

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.usefixtures("one_thread"),  # numpy 2's complaint about diffusers' own code:
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]
KIND = model_kind("diffusers-unet2d")
SHAPE, COUNT, SEED = (1, 8, 8), 3, 11
LINEAR = dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon")


class Denoiser(torch.nn.Module):
    """A tiny UNet2DModel's prediction added to the exact noise prediction for Gaussian data
    N(0, 0.5^2), its share scaled by sqrt(abar): the samples are then images of a sensible range,
    not all clipped to -1 and 1 as a random UNet's alone are, and every step still runs the UNet."""

    def __init__(self, unet, abar: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("abar", abar.float())

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        gaussian = (1 - a).sqrt() * x / (0.25 * a + 1 - a)
        return gaussian + 0.3 * a.sqrt() * KIND.predict(self.unet, x, t)


def denoiser(num_timesteps: int) -> Denoiser:
    unet = KIND.fresh(tiny_config(), 0).eval()
    with torch.no_grad():
        probe = KIND.predict(unet, torch.randn(4, *SHAPE), torch.tensor([0, 10, 500, 999]))
    assert 0.05 < float(probe.abs().mean()) < 5, "the UNet's share is not negligible"
    return Denoiser(unet, GaussianDiffusion(num_timesteps).alphas_cumprod)


def predict(model, x, t):
    with torch.no_grad():
        return model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))


def diffusers_chain(model, timesteps, step) -> torch.Tensor:
    """``step(eps, t, x, noise)`` over ``timesteps`` with sample()'s noise (zeros at the last step)."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn((COUNT, *SHAPE), generator=generator)
    for i, t in enumerate(timesteps):
        noise = torch.randn(x.shape, generator=generator) if i + 1 < len(timesteps) else torch.zeros_like(x)
        x = step(predict(model, x, t), int(t), x, noise)
    return x


def pylth_chain(model, sampler) -> torch.Tensor:
    return sample(model, sampler, COUNT, SHAPE, seed=SEED, batch_size=COUNT, progress=False, device="cpu")


def check_images(ours: torch.Tensor) -> None:
    """Samples worth comparing: of a sensible size, and mostly not clipped."""
    assert 0.1 < float(ours.abs().mean()) < 0.9 and float((ours.abs() < 0.999).float().mean()) > 0.8


def test_pylth_timesteps_are_ddimscheduler_s_linspace_spacing():
    schedule = GaussianDiffusion(1000)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace", **LINEAR)
    for steps in (7, 10, 20, 50, 100, 1000):
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == schedule.timesteps(steps), steps


@pytest.mark.parametrize("num_timesteps, steps, eta", [(50, None, 0.0), (50, None, 1.0), (1000, 10, 0.0),
                                                       (1000, 10, 0.5)])
def test_ddim_agrees_with_diffusers_ddimscheduler(num_timesteps, steps, eta):
    model = denoiser(num_timesteps)
    schedule = GaussianDiffusion(num_timesteps)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=num_timesteps, clip_sample=True, set_alpha_to_one=True,
                                        steps_offset=0, timestep_spacing="leading", **LINEAR)
    scheduler.set_timesteps(steps or num_timesteps)
    sampler = make_sampler("ddim", schedule, steps, eta=eta)
    sampler.timesteps = scheduler.timesteps.tolist()  # all of T, or 900, 800, ..., 0
    if steps is None:
        assert sampler.timesteps == schedule.timesteps(None), "pylth's own timesteps"
    theirs = diffusers_chain(model, scheduler.timesteps, lambda eps, t, x, noise: scheduler.step(
        eps, t, x, eta=eta, variance_noise=noise).prev_sample)
    ours = pylth_chain(model, sampler)
    check_images(ours)
    torch.testing.assert_close(ours, theirs.clamp(-1, 1), rtol=0, atol=2e-5)


@pytest.mark.parametrize("steps", [10, 20])  # fewer than 15 moves: the move into t = 0 is first-order
def test_dpmsolver_agrees_with_diffusers_dpmsolvermultistepscheduler(steps):
    model = denoiser(1000)
    schedule = GaussianDiffusion(1000)
    timesteps = schedule.timesteps(steps)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="sigma_min", thresholding=True, sample_max_value=1.0, **LINEAR)
    scheduler.set_timesteps(timesteps=timesteps[:-1])
    x = diffusers_chain(model, timesteps[:-1], lambda eps, t, x, noise: scheduler.step(eps, t, x).prev_sample)
    theirs = predicted_x0(predict(model, x, 0), x, schedule.alpha_bar(0))  # pylth's last step, at t = 0
    ours = pylth_chain(model, make_sampler("dpmsolver++", schedule, steps))
    check_images(ours)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    # Not DDIM by another name: the second-order steps move the samples.
    assert (ours - pylth_chain(model, make_sampler("ddim", schedule, steps))).abs().max() > 1e-2
