"""Prunable parameters, module groups, strategies, sparsity report and MACs on a tiny U-Net-like net."""
import math

import pytest
import torch
from torch import nn

from pylth.pruning import (STRATEGIES, compute_masks, count_macs, layerwise_ratios, module_groups,
                           prunable_parameters, sparsity_report)


class TinyUNet(nn.Module):
    """forward(x, t) like the DDPM U-Net; temb sits outside every pruning group on purpose."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.temb = nn.Linear(4, 8)
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.out = nn.Conv2d(16, 3, 1)

    def pruning_groups(self):
        return [("head", self.head), ("down", self.down), ("out", self.out)]

    def forward(self, x, t):
        h = self.head(x) + self.temb(t.float()[:, None].expand(-1, 4))[:, :, None, None]
        return self.out(self.down(h))


def tiny(seed=0):
    torch.manual_seed(seed)
    return TinyUNet()


NAMES = ["head.weight", "temb.weight", "down.0.weight", "down.2.weight", "out.weight"]
SIZES = {"head.weight": 216, "temb.weight": 32, "down.0.weight": 576, "down.2.weight": 1152, "out.weight": 48}


def test_prunable_parameters_in_registration_order_and_configurable():
    model = tiny()
    assert [n for n, _ in prunable_parameters(model)] == NAMES
    assert [n for n, _ in prunable_parameters(model, types=(nn.Linear,))] == ["temb.weight"]
    assert prunable_parameters(model)[0][1] is model.head.weight
    with pytest.raises(TypeError, match="model"):
        prunable_parameters("not a model")
    with pytest.raises(TypeError, match="types"):
        prunable_parameters(model, types=(int,))


def test_module_groups_use_pruning_groups_then_loose_tensors():
    model = tiny()
    assert module_groups(model) == [("head", ["head.weight"]), ("down", ["down.0.weight", "down.2.weight"]),
                                    ("out", ["out.weight"]), ("temb.weight", ["temb.weight"])]
    assert module_groups(model, per_tensor=True) == [(n, [n]) for n in NAMES]
    assert module_groups(model, ["out.weight", "head.weight"]) == [("head", ["head.weight"]), ("out", ["out.weight"])]
    with pytest.raises(ValueError, match="names"):
        module_groups(model, ["nope.weight"])


def test_module_groups_fall_back_to_top_level_children():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    assert module_groups(model) == [("0", ["0.weight"]), ("2", ["2.0.weight", "2.1.weight"])]


def pruned_counts(masks):
    return {n: SIZES[n] - int(m.sum()) for n, m in masks.items()}


def expected(ratio, n):
    return math.floor(ratio * n + 0.5)


def test_layerwise_ratio_grows_by_module_and_is_capped():
    assert layerwise_ratios([0, 1, 1, 5], 0.2, 0.1, 0.55) == pytest.approx([0.2, 0.3, 0.3, 0.55])
    model = tiny()
    masks = compute_masks(model, "layerwise", 0.2, increment=0.1)
    assert list(masks) == NAMES
    ratio = {"head.weight": 0.2, "down.0.weight": 0.3, "down.2.weight": 0.3, "out.weight": 0.4, "temb.weight": 0.5}
    assert pruned_counts(masks) == {n: expected(ratio[n], SIZES[n]) for n in NAMES}
    capped = compute_masks(model, "layerwise", 0.2, increment=0.1, cap=0.25)
    assert pruned_counts(capped) == {n: expected(min(ratio[n], 0.25), SIZES[n]) for n in NAMES}
    per_tensor = compute_masks(model, "layerwise", 0.2, increment=0.1, per_tensor=True)
    assert pruned_counts(per_tensor) == {n: expected(0.2 + 0.1 * j, SIZES[n]) for j, n in enumerate(NAMES)}


def test_layerwise_prunes_smallest_magnitudes_of_the_active_weights():
    model = tiny()
    first = compute_masks(model, "layerwise", 0.2, increment=0.1)
    second = compute_masks(model, "layerwise", 0.2, increment=0.1, masks=first)
    for n, w in model.named_parameters():
        if n in first:
            assert not (second[n] & ~first[n]).any()
            active = int(first[n].sum())
            assert int(first[n].sum() - second[n].sum()) == expected(
                {"head.weight": 0.2, "out.weight": 0.4, "temb.weight": 0.5}.get(n, 0.3), active)
            pruned = w.detach().abs()[first[n] & ~second[n]]
            assert w.detach().abs()[second[n]].min() >= pruned.max()


def test_uniform_and_global():
    model = tiny()
    assert pruned_counts(compute_masks(model, "uniform", 0.3)) == {n: expected(0.3, SIZES[n]) for n in NAMES}
    masks = compute_masks(model, "global", 0.3)
    assert sum(pruned_counts(masks).values()) == expected(0.3, sum(SIZES.values()))
    params = dict(model.named_parameters())
    kept = torch.cat([params[n].detach().abs()[m] for n, m in masks.items()])
    pruned = torch.cat([params[n].detach().abs()[~m] for n, m in masks.items()])
    assert kept.min() >= pruned.max()


def test_random_uses_layerwise_counts_and_is_seeded():
    model = tiny()
    a = compute_masks(model, "random", 0.2, increment=0.1, seed=1)
    b = compute_masks(model, "random", 0.2, increment=0.1, seed=1)
    c = compute_masks(model, "random", 0.2, increment=0.1, seed=2)
    layer = compute_masks(model, "layerwise", 0.2, increment=0.1)
    assert pruned_counts(a) == pruned_counts(layer)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert any(not torch.equal(a[n], c[n]) for n in NAMES)
    assert any(not torch.equal(a[n], layer[n]) for n in NAMES)
    assert set(STRATEGIES) == {"layerwise", "uniform", "global", "random"}


def test_compute_masks_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="strategy"):
        compute_masks(model, "magic", 0.2)
    with pytest.raises(ValueError, match="prune_ratio"):
        compute_masks(model, "uniform", 1.2)
    with pytest.raises(ValueError, match="cap"):
        compute_masks(model, "layerwise", 0.2, cap=-0.1)
    with pytest.raises(ValueError, match="increment"):
        compute_masks(model, "layerwise", 0.2, increment=float("nan"))
    with pytest.raises(ValueError, match="masks"):
        compute_masks(model, "uniform", 0.2, masks={"head.bias_typo": torch.ones(8, dtype=torch.bool)})
    with pytest.raises(TypeError, match="seed"):
        compute_masks(model, "random", 0.2, seed=0.5)
    with pytest.raises(TypeError, match="model"):
        compute_masks("not a model", "uniform", 0.2)
    with torch.no_grad():
        model.down[2].weight[0, 0, 0, 0] = float("nan")
    for strategy in ("layerwise", "global"):
        with pytest.raises(ValueError, match=r"down\.2\.weight"):
            compute_masks(model, strategy, 0.2)


def test_sparsity_report_by_hand():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True, False, True]),
             "c": torch.ones(2, dtype=torch.bool)}
    report = sparsity_report(masks, [("first", ["a", "b"]), ("second", ["c"])])
    assert report["overall"] == pytest.approx(4 / 10)
    assert list(report["per_module"].items()) == [("first", pytest.approx(4 / 8)), ("second", 0.0)]
    assert list(report["per_tensor"].items()) == [("a", 0.75), ("b", 0.25), ("c", 0.0)]
    with pytest.raises(TypeError, match="masks"):
        sparsity_report([masks["a"]], [])
    with pytest.raises(TypeError, match=r"masks\['b'\]"):
        sparsity_report({"a": masks["a"], "b": [True, False]}, [])


# Dense MACs of TinyUNet on one 3x8x8 image, per output position times weights:
# head 64*216, temb 1*32, down.0 64*576, down.2 (stride 2 -> 4x4) 16*1152, out 16*48.
DENSE = 64 * 216 + 32 + 64 * 576 + 16 * 1152 + 16 * 48


def test_count_macs_by_hand_with_masks_and_time_input():
    model = tiny()
    assert DENSE == 69920
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in NAMES}
    masks["head.weight"].view(-1)[54:] = False       # 54 of 216 kept
    masks["down.2.weight"].view(-1)[288:] = False    # 288 of 1152 kept
    masked, dense = count_macs(model, (1, 3, 8, 8), masks)
    assert dense == DENSE
    assert masked == 64 * 54 + 32 + 64 * 576 + 16 * 288 + 16 * 48
    x, t = torch.zeros(2, 3, 8, 8), torch.tensor([3, 7])
    assert count_macs(model, masks=masks, example_inputs=(x, t)) == (2 * masked, 2 * DENSE)


def test_count_macs_without_masks_counts_nonzero_weights_and_restores_mode():
    model = tiny()
    with torch.no_grad():
        model.out.weight[:, :8] = 0.0
    model.train()
    masked, dense = count_macs(model, (1, 3, 8, 8))
    assert (masked, dense) == (DENSE - 16 * 24, DENSE)
    assert model.training
    single_input = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    assert count_macs(single_input, (1, 1, 6, 6)) == (16 * 18 + 160, 16 * 18 + 160)


def test_count_macs_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="input_size"):
        count_macs(model, (1, -3, 8, 8))
    with pytest.raises(ValueError, match="input_size"):
        count_macs(model)
    with pytest.raises(TypeError, match="example_inputs"):
        count_macs(model, example_inputs=torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="masks"):
        count_macs(model, (1, 3, 8, 8), masks=[1])
    with pytest.raises(TypeError, match=r"masks\['out\.weight'\]"):
        count_macs(model, (1, 3, 8, 8), masks={"out.weight": [True] * 48})
    with pytest.raises(ValueError, match=r"masks\['out\.weight'\].*shape"):
        count_macs(model, (1, 3, 8, 8), masks={"out.weight": torch.ones(48, dtype=torch.bool)})
