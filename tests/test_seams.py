"""The extension points of ARCHITECTURE.md: model kinds, samplers, the presets table, the trainer's
schedules, and a Lottery driven through its collaborators with a model kind registered here."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.models import MODELS, ModelKind, model_kind, register
from pylth.ddpm.presets import DATASET_PRESETS, flag_defaults
from pylth.ddpm.samplers import SAMPLERS, DDIMSampler, Sampler, make_sampler, sample
from pylth.ddpm.trainer import TrainConfig, ema_decay, learning_rate
from pylth.foundations.io import torch_load
from pylth.lottery import find_ticket

from test_lottery_helpers import fake, tiny_spec  # noqa: F401  (fixtures)


class TwoConvs(nn.Module):
    """A model kind that is not the U-Net: its output is a tuple, read by its own predict."""

    def __init__(self, channels: int):
        super().__init__()
        self.first = nn.Conv2d(1, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x, t):
        return (self.second(torch.relu(self.first(x))) + 0 * t.float().view(-1, 1, 1, 1),)


@pytest.fixture
def two_convs_kind():
    kind = register(ModelKind(name="two-convs", summary="test model", config_for=lambda name, shape: {"channels": 4},
                              build=lambda config: TwoConvs(**config),
                              pruning_groups=lambda m: [("second", m.second), ("first", m.first)],
                              predict=lambda m, x, t: m(x, t)[0]))
    yield kind
    del MODELS[kind.name]


def test_an_unknown_model_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="model must be one of unet"):
        model_kind("resnet")


def test_a_kind_registered_twice_is_refused(two_convs_kind):
    with pytest.raises(ValueError, match="registered twice"):
        register(two_convs_kind)


def test_a_kind_s_models_and_their_deep_copies_answer_with_the_noise(two_convs_kind):
    # register() applies the kind's predict once: model(x_t, t) is the noise, not the kind's tuple, and
    # a deep copy (sparsify, the EMA) answers with its own weights, not the original's.
    model = two_convs_kind.fresh({"channels": 4}, 0)
    assert type(model) is TwoConvs and list(model.state_dict()) == list(TwoConvs(4).state_dict())
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 7, 999])
    torch.testing.assert_close(model(x, t), TwoConvs.forward(model, x, t)[0], rtol=0, atol=0)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.second.bias.add_(1.0)
    torch.testing.assert_close(copied(x, t), TwoConvs.forward(copied, x, t)[0], rtol=0, atol=0)
    torch.testing.assert_close(copied(x, t), model(x, t) + 1.0)


def test_fresh_models_depend_on_the_seed_only_and_leave_the_global_rng_alone():
    kind = model_kind("unet")
    config = kind.config_for("digits", (1, 8, 8))
    state = torch.get_rng_state()
    a, b, c = kind.fresh(config, 3), kind.fresh(config, 3), kind.fresh(config, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_the_unet_kind_sizes_a_folder_network_from_its_images():
    config = model_kind("unet").config_for("folder", (1, 16, 16))
    assert config["in_channels"] == 1 and config["image_size"] == 16 and config["ch"] == 128
    with pytest.raises(ValueError, match="square"):
        model_kind("unet").config_for("folder", (3, 16, 12))


def test_every_data_set_has_one_row_and_find_ticket_flags_override_train_flags():
    assert flag_defaults("digits", "train") == {"lr": 5e-4, "warmup": 100}
    assert flag_defaults("digits", "find_ticket")["lr"] == 1e-3
    assert flag_defaults("cifar10", "find_ticket")["iterations"] == 800_000
    assert flag_defaults("no-such-set", "find_ticket") == flag_defaults("digits", "find_ticket")
    assert set(DATASET_PRESETS) == {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder"}


def test_learning_rate_warms_up_linearly_and_the_ema_decay_warms_up_to_its_value():
    config = TrainConfig(iterations=10, lr=1e-3, warmup=4, ema_decay=0.9)
    assert [learning_rate(config, i) for i in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(TrainConfig(iterations=1, lr=1e-3, warmup=0), 0) == 1e-3
    assert ema_decay(config, 0) == pytest.approx(0.1) and ema_decay(config, 1000) == 0.9


class CountingSampler(DDIMSampler):
    """DDIM that counts its chains: a sampler with state must be reset at every batch."""

    name = "counting"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.resets, self.steps_since_reset = 0, []

    def reset(self):
        self.resets += 1
        self.steps_since_reset.append(0)

    def update(self, *args):
        self.steps_since_reset[-1] += 1
        return super().update(*args)


def test_the_loop_resets_a_sampler_per_batch_and_gives_ddims_samples():
    schedule = GaussianDiffusion(50)
    model = lambda x, t: 0.1 * x  # noqa: E731
    counting = CountingSampler(schedule, 5)
    out = sample(model, counting, 5, (1, 2, 2), seed=1, batch_size=2, device="cpu", progress=False)
    assert counting.resets == 3 and counting.steps_since_reset == [4, 4, 4]  # 3 batches, 5 steps (the last gives x0)
    same = sample(model, make_sampler("ddim", schedule, 5), 5, (1, 2, 2), seed=1, batch_size=2, device="cpu",
                  progress=False)
    assert torch.equal(out, same)


def test_sampler_names_and_options_are_checked():
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpmsolver++"} and all(issubclass(s, Sampler) for s in SAMPLERS.values())
    with pytest.raises(ValueError, match=r"sampler must be one of ddpm, ddim, dpmsolver\+\+"):
        make_sampler("euler", GaussianDiffusion(10))
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", GaussianDiffusion(10), eta=float("nan"))


def test_a_registered_model_kind_runs_the_lottery_with_its_own_groups_and_output(two_convs_kind, fake,  # noqa: F811
                                                                                tmp_path):
    spec = tiny_spec(str(tmp_path / "cache"), strategy="layerwise", prune_ratio=0.2, increment=0.5, max_rounds=1)
    spec.model_kind, spec.model = "two-convs", {"channels": 4}
    out = str(tmp_path / "run")
    records = find_ticket(spec, out, log=lambda _m: None, parts=fake.parts)
    assert list(records[1]["module_sparsity"]) == ["second", "first"], "the kind's groups, in its order"
    masks = torch_load(f"{out}/round_01/mask.pt")
    kept = {n: int(m.sum()) for n, m in masks.items()}
    assert kept == {"first.weight": 36 - 25, "second.weight": 36 - 7}  # 0.2 + 0.5 * j of module j, rounded
    assert set(torch_load(f"{out}/rewind.pt")) == {"first.weight", "first.bias", "second.weight", "second.bias"}
    # The held-out loss read the tuple output through the kind's predict (calling the model bare fails).
    assert math.isfinite(records[1]["loss"]) and records[1]["loss"] > 0
