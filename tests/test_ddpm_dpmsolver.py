"""DPM-Solver++(2M) without diffusers: on Gaussian data the probability-flow ODE has a closed-form
solution; the solver converges to it at second order in the number of steps, DDIM at first order."""
from __future__ import annotations

import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.samplers import SAMPLERS, DPMSolverPlusPlus2M, make_sampler, sample

DATA_STD = 1.0  # x0 ~ N(0, DATA_STD^2)


class GaussianDenoiser(torch.nn.Module):
    """The exact noise prediction for x0 ~ N(0, s^2 I): E[eps | x_t] = sqrt(1 - a) x_t / (a s^2 + 1 - a)."""

    def __init__(self, schedule: GaussianDiffusion):
        super().__init__()
        self.register_buffer("abar", schedule.alphas_cumprod.float())

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * DATA_STD ** 2 + 1 - a)


def exact_solution(schedule: GaussianDiffusion, x_start: torch.Tensor, t_start: int) -> torch.Tensor:
    """Where the ODE takes x_start at t_start to at t = 0 (x scales with the marginal std), then the
    x0 prediction there, as every pylth sampler ends."""
    marginal = lambda a: (a * DATA_STD ** 2 + 1 - a) ** 0.5  # noqa: E731
    a_start, a_0 = schedule.alpha_bar(t_start), schedule.alpha_bar(0)
    x_0 = x_start.double() * marginal(a_0) / marginal(a_start)
    return (a_0 ** 0.5 * DATA_STD ** 2 / marginal(a_0) ** 2 * x_0).float()


def relative_error(name: str, steps: int) -> float:
    """Largest error of the sampler's images against the exact solution, relative to the largest image
    value, over the pixels whose x0 predictions stay inside [-1, 1] all along (no clipping there)."""
    schedule = GaussianDiffusion(1000)
    start = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # sample()'s first draw
    exact = exact_solution(schedule, start, schedule.timesteps(steps)[0])
    out = sample(GaussianDenoiser(schedule), make_sampler(name, schedule, steps), 64, (1, 4, 4), seed=0,
                 progress=False, device="cpu")
    unclipped = start.abs() < 0.95 / DATA_STD
    return float((out - exact).abs()[unclipped].max() / exact.abs()[unclipped].max())


def test_dpmsolver_converges_to_the_exact_ode_solution_at_second_order_and_ddim_at_first():
    ddim = [relative_error("ddim", n) for n in (100, 200)]
    dpm = [relative_error("dpmsolver++", n) for n in (100, 200)]
    assert 1.8 < ddim[0] / ddim[1] < 2.2, ddim  # halving the step halves DDIM's error ...
    assert 3.5 < dpm[0] / dpm[1] < 4.5, dpm  # ... and quarters DPM-Solver++(2M)'s
    assert dpm[0] < ddim[0] / 3 and dpm[1] < 2e-3


def test_the_lower_order_final_step_helps_at_ten_steps():
    assert relative_error("dpmsolver++", 10) < relative_error("ddim", 10) / 2
    assert DPMSolverPlusPlus2M.LOWER_ORDER_FINAL_BELOW == 15


def test_the_solver_forgets_the_previous_chain_so_batches_do_not_matter():
    schedule = GaussianDiffusion(100)
    model = lambda x, t: torch.tanh(x) * (0.5 + t.float().view(-1, 1, 1, 1) / 100)  # noqa: E731
    sampler = make_sampler("dpmsolver++", schedule, 8)
    one_batch = sample(model, sampler, 5, (1, 2, 2), seed=3, batch_size=5, progress=False, device="cpu")
    three_batches = sample(model, sampler, 5, (1, 2, 2), seed=3, batch_size=2, progress=False, device="cpu")
    assert torch.equal(one_batch, three_batches)


def test_the_solver_is_registered_ignores_the_noise_and_handles_one_and_two_steps():
    assert SAMPLERS["dpmsolver++"] is DPMSolverPlusPlus2M
    schedule = GaussianDiffusion(100)
    sampler = make_sampler("dpmsolver++", schedule, 5, eta=1.0)
    x, eps = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    moves = []
    for noise in (torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)):
        sampler.reset()
        first = sampler.step(eps, 0, x, noise)
        moves.append((first, sampler.step(eps, 1, first, noise)))
    assert all(torch.equal(a, b) for a, b in zip(*moves))
    for steps in (1, 2, 3):
        out = schedule.sample(GaussianDenoiser(schedule), 3, (1, 2, 2), sampler="dpmsolver++", steps=steps, seed=0,
                              progress=False, device="cpu")
        assert out.shape == (3, 1, 2, 2) and torch.isfinite(out).all()
