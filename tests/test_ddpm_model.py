"""The U-Net presets and the diffusion schedule/samplers, against hand-computed values."""
import json
import math
import os

import pytest
import torch

from pylth.ddpm import PRESETS, GaussianDiffusion, UNet, build_model

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "ddpm_cifar10_param_shapes.json")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_cifar10_matches_ho_et_al_parameter_count_and_order():
    model = build_model("cifar10")
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    with open(BENCH) as f:
        reference = json.load(f)["parameters"]
    assert [(n, list(p.shape)) for n, p in model.named_parameters()] == [(r["name"], r["shape"]) for r in reference]
    assert sum(p.numel() for p in build_model("cifar100").parameters()) == 35_746_307


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_map_images_to_noise_of_the_same_shape(name):
    model = build_model(name, **({"ch": 32} if name.startswith("cifar") else {}))
    c, s = model.config["in_channels"], model.config["image_size"]
    x = torch.randn(2, c, s, s)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_sides_that_do_not_halve_evenly_are_padded_inside_the_model_and_cropped_back():
    assert build_model("mnist").padded_size == 28  # 28 -> 14 -> 7: no padding needed
    model = build_model("mnist", ch=32, ch_mult=(1, 1, 1, 1), attn_resolutions=(16,))
    assert model.padded_size == 32
    assert any(type(m).__name__ == "AttnBlock" for m in model.down.modules())  # at the padded 16x16
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28), torch.tensor([5])).shape == (1, 1, 28, 28)


def test_pruning_groups_cover_every_parameter_once_in_forward_order():
    model = build_model("digits")
    groups = model.pruning_groups()
    names = [n for n, _ in groups]
    assert names[:2] == ["temb", "head"] and names[-1] == "tail"
    assert [n for n in names if n.startswith("mid")] == ["mid.0", "mid.1"]
    seen = [id(p) for _, m in groups for p in m.parameters()]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    # Concatenating the groups' parameters gives named_parameters() order (registration = forward order).
    assert seen == [id(p) for p in model.parameters()]
    assert len(build_model("cifar10").pruning_groups()) == 2 + 11 + 2 + 15 + 1


def test_bad_model_arguments_raise_value_error():
    with pytest.raises(ValueError, match="preset"):
        build_model("imagenet")
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(ch=48)
    with pytest.raises(ValueError, match="x must have shape"):
        build_model("digits")(torch.randn(1, 3, 8, 8), torch.tensor([0]))
    for t in (torch.tensor(3), torch.tensor([1, 2, 3]), 3):
        with pytest.raises(ValueError, match="t must be a tensor of shape"):
            build_model("digits")(torch.randn(2, 1, 8, 8), t)


def test_schedule_closed_forms_match_hand_computation():
    d = GaussianDiffusion(num_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar = 1.0
    for t in range(1000):
        abar *= 1.0 - betas[t]
        if t in (0, 1, 10, 500, 999):
            assert d.alphas_cumprod[t].item() == pytest.approx(abar, rel=1e-12)
    assert d.alphas_cumprod[999].item() == pytest.approx(4.035e-5, rel=1e-3)  # Ho et al.: abar_T ~ 4e-5
    a0, a1 = 1 - betas[0], (1 - betas[0]) * (1 - betas[1])
    assert d.posterior_variance[0].item() == 0.0
    assert d.posterior_variance[1].item() == pytest.approx(betas[1] * (1 - a0) / (1 - a1), rel=1e-12)


def test_loss_with_explicit_t_and_noise_is_the_hand_mse():
    d = GaussianDiffusion(num_timesteps=10)
    x0, noise, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0, 4, 9])
    model = lambda x, tt: 0.5 * x  # noqa: E731
    abar = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    assert d.loss(model, x0, t=t, noise=noise).item() == pytest.approx(((0.5 * xt - noise) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="noise"):
        d.loss(model, x0, t=t, noise=noise[:2])


class PointOracle(torch.nn.Module):
    """The exact noise predictor for data that is a single image ``x_star``."""

    def __init__(self, diffusion, x_star):
        super().__init__()
        self.d, self.x_star = diffusion, x_star
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        abar = self.d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x - abar.sqrt() * self.x_star) / (1 - abar).sqrt()


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddpm", 25), ("ddim", 10)])
def test_samplers_recover_the_point_the_oracle_denoises_to(sampler, steps):
    d = GaussianDiffusion(num_timesteps=200)
    x_star = torch.rand(1, 4, 4) * 1.6 - 0.8
    out = d.sample(PointOracle(d, x_star), 5, (1, 4, 4), sampler=sampler, steps=steps, seed=3, progress=False)
    assert out.shape == (5, 1, 4, 4)
    torch.testing.assert_close(out, x_star.expand(5, -1, -1, -1), atol=1e-4, rtol=0)


def test_ddim_eta0_is_deterministic_and_independent_of_batch_size():
    d = GaussianDiffusion(num_timesteps=100)
    torch.manual_seed(0)
    model = build_model("digits", ch=32, ch_mult=(1,), attn_resolutions=()).eval()
    with torch.no_grad():  # non-trivial outputs: lift the near-zero init of the output layer
        model.tail[-1].weight.mul_(1e4)
    a = d.sample(model, 6, (1, 8, 8), sampler="ddim", steps=5, eta=0.0, seed=7, batch_size=6, progress=False)
    b = d.sample(model, 6, (1, 8, 8), sampler="ddim", steps=5, eta=0.0, seed=7, batch_size=4, progress=False)
    c = d.sample(model, 6, (1, 8, 8), sampler="ddim", steps=5, eta=0.0, seed=8, batch_size=6, progress=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_timesteps_and_bad_sampler_arguments():
    d = GaussianDiffusion(num_timesteps=1000)
    assert d.timesteps(None) == list(range(999, -1, -1))
    assert d.timesteps(4) == [999, 666, 333, 0]
    for kwargs, match in ((dict(sampler="euler"), "sampler"), (dict(steps=0), "steps"),
                          (dict(steps=1001), "steps"), (dict(eta=-1.0), "eta")):
        with pytest.raises(ValueError, match=match):
            d.sample(lambda x, t: x, 2, (1, 2, 2), device="cpu", progress=False, **kwargs)
    with pytest.raises(ValueError, match="beta"):
        GaussianDiffusion(beta_start=0.1, beta_end=0.01)
    assert math.isclose(d.betas[-1].item(), 0.02)
