"""pylth.sparse trainable models (sparsify(..., trainable=True)) against torch autograd on the dense
masked model: layers of odd shapes, the whole U-Net's gradients, 20 Adam steps, and the way back to
the dense masked state_dict."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pylth.ddpm import GaussianDiffusion
from pylth.optim import MaskedAdam
from pylth.sparse import (SparseConv2d, SparseLinear, dense_layer_masks, dense_state_dict, load_dense_state_,
                          sparsify)
from test_sparse import inputs, masked_unet

pytestmark = pytest.mark.usefixtures("one_thread")

# (Ci, Co, K, stride, padding, H, W): odd channel counts and sizes, strides and paddings of the U-Net and others
CONVS = [(3, 5, 3, 1, 1, 7, 9), (6, 7, 3, 2, 1, 9, 6), (5, 3, 1, 1, 0, 5, 11), (4, 9, 3, 2, 0, 11, 8),
         (7, 6, 5, 1, 2, 6, 6), (3, 4, 2, 2, 1, 5, 7)]
LINEARS = [(13, 7), (1, 5), (33, 17)]


def _close(got, want):
    got, want = got.detach(), want.detach()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(want.abs().max())))


def _layer_against_dense(dense: nn.Module, sparse: nn.Module, mask: torch.Tensor, x: torch.Tensor):
    """Forward and gradients of ``sparse`` (trainable) against autograd through ``dense`` with its
    weight masked, for one random dL/dy."""
    x_dense, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = F.conv2d(x_dense, dense.weight * mask, dense.bias, dense.stride, dense.padding) \
        if isinstance(dense, nn.Conv2d) else F.linear(x_dense, dense.weight * mask, dense.bias)
    got = sparse(x_sparse)
    _close(got, want)
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
    want.backward(grad_out)
    got.backward(grad_out)
    _close(x_sparse.grad, x_dense.grad)
    _close(sparse.values.grad, dense.weight.grad[mask])  # the weight gradient at the kept positions
    _close(sparse.bias.grad, dense.bias.grad)
    assert sparse.values.grad.shape == (int(mask.sum()),)


@pytest.mark.parametrize("density", [0.07, 0.4, 1.0])
@pytest.mark.parametrize("shape", CONVS, ids=[f"conv{s}" for s in CONVS])
def test_a_trainable_sparse_conv_has_the_dense_masked_convs_output_and_gradients(shape, density):
    ci, co, k, stride, padding, h, w = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(ci, co, k, stride, padding)
    mask = torch.rand(conv.weight.shape) < density
    mask.view(-1)[0] = True  # never empty
    _layer_against_dense(conv, SparseConv2d(conv, mask, trainable=True), mask, torch.randn(3, ci, h, w))


@pytest.mark.parametrize("shape", LINEARS, ids=[f"linear{s}" for s in LINEARS])
def test_a_trainable_sparse_linear_has_the_dense_masked_linears_output_and_gradients(shape):
    torch.manual_seed(0)
    linear = nn.Linear(*shape)
    mask = torch.rand(linear.weight.shape) < 0.3
    mask.view(-1)[0] = True
    _layer_against_dense(linear, SparseLinear(linear, mask, trainable=True), mask, torch.randn(2, 5, shape[0]))


def _loss(model, x0, step: int):
    torch.manual_seed(step)  # the same dropout on both sides
    g = torch.Generator().manual_seed(100 + step)
    t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
    return GaussianDiffusion().loss(model, x0, t=t, noise=torch.randn(x0.shape, generator=g))


@pytest.mark.parametrize("sparsity", [0.5, 0.95])
def test_the_sparse_unets_gradients_are_the_dense_masked_unets_at_the_kept_weights(sparsity):
    model, masks = masked_unet(sparsity)
    model.train()
    sparse = sparsify(model, masks, trainable=True, max_density=1.0)  # every masked layer sparse
    assert len(sparse.sparsify_report.sparse) == len(masks) and not dense_layer_masks(sparse, masks)
    x0 = inputs(batch=4)[0]
    want, got = _loss(model, x0, 0), _loss(sparse, x0, 0)
    _close(got, want)
    want.backward()
    got.backward()
    dense_params = dict(model.named_parameters())
    for name, param in sparse.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        if leaf == "values":
            mask = masks[f"{prefix}.weight"]
            torch.testing.assert_close(param.grad, dense_params[f"{prefix}.weight"].grad[mask], rtol=1e-3, atol=1e-5)
        else:
            torch.testing.assert_close(param.grad, dense_params[name].grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_twenty_adam_steps_on_the_kept_values_match_masked_adam_on_the_dense_masked_model(fused):
    model, masks = masked_unet(0.9)
    model.train()
    sparse = sparsify(model, masks, trainable=True, max_density=1.0)
    dense_opt = MaskedAdam(model.parameters(), lr=1e-3)
    named = dict(model.named_parameters())
    for name, mask in masks.items():
        dense_opt.set_mask(named[name], mask)
    sparse_opt = torch.optim.Adam(sparse.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    x0 = inputs(batch=4)[0]
    dense_losses, sparse_losses = [], []
    for step in range(20):
        for net, opt, losses in ((model, dense_opt, dense_losses), (sparse, sparse_opt, sparse_losses)):
            opt.zero_grad(set_to_none=True)
            loss = _loss(net, x0, step)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert dense_losses[-1] < dense_losses[0]  # it trained
    torch.testing.assert_close(torch.tensor(sparse_losses), torch.tensor(dense_losses), rtol=2e-4, atol=1e-6)
    # the optimizer state holds one entry per kept weight
    kept = sum(int(m.sum()) for m in masks.values())
    values = [p for n, p in sparse.named_parameters() if n.endswith(".values")]
    assert sum(sparse_opt.state[p]["exp_avg"].numel() for p in values) == kept
    # The pruned weights agree to a fifth of one Adam step (lr). Not every parameter does: Adam divides by
    # the gradient's running size, and the biases of convs followed by a GroupNorm get gradients near 0
    # whose sign summation order decides, each such step moving them by up to lr either way.
    back = dense_state_dict(sparse)
    assert list(back) == list(model.state_dict())
    for key in masks:
        torch.testing.assert_close(back[key], model.state_dict()[key], rtol=0, atol=0.2e-3)
        assert bool((back[key][~masks[key]] == 0).all())


def test_layers_left_dense_train_masked_with_masked_adam_beside_the_sparse_ones():
    model, masks = masked_unet(0.8)
    model.train()
    # denser than 0.5 stays dense: a few layers each way
    masks = {n: (m | (torch.rand(m.shape) < 0.6)) if i % 3 == 0 else m for i, (n, m) in enumerate(masks.items())}
    sparse = sparsify(model, masks, trainable=True, max_density=0.5)
    left = dense_layer_masks(sparse, masks)
    assert sparse.sparsify_report.sparse and left
    opts = []
    for net, net_masks in ((model, masks), (sparse, left)):
        opt = MaskedAdam(net.parameters(), lr=1e-3)
        named = dict(net.named_parameters())
        for name, mask in net_masks.items():
            opt.set_mask(named[name], mask)
        opts.append(opt)
    x0 = inputs(batch=4)[0]
    for step in range(5):
        losses = []
        for net, opt in zip((model, sparse), opts):
            opt.zero_grad(set_to_none=True)
            loss = _loss(net, x0, step)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=2e-4)
    named = dict(sparse.named_parameters())
    assert all(bool((named[n][~m] == 0).all()) for n, m in left.items())  # the dense layers stayed masked


def test_the_dense_state_dict_has_model_pts_keys_in_order_and_loading_one_gathers_the_kept_values():
    model, masks = masked_unet(0.9)
    sparse = sparsify(model, masks, trainable=True, max_density=0.2)
    want = model.state_dict()
    back = dense_state_dict(sparse)
    assert list(back) == list(want)
    for key in want:
        assert torch.equal(back[key], want[key]), key
    # theta with weights where the masks prune (a rewind point): only the kept entries are read
    torch.manual_seed(5)
    theta = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in want.items()}
    load_dense_state_(sparse, theta)
    for name, mask in dense_layer_masks(sparse, masks).items():
        dict(sparse.named_parameters())[name].data.masked_fill_(~mask, 0)
    back = dense_state_dict(sparse)
    for key, value in theta.items():
        expected = value * masks[key] if key in masks else value
        assert torch.equal(back[key], expected), key
    with pytest.raises(RuntimeError, match="Missing key"):
        load_dense_state_(sparse, {k: v for k, v in theta.items() if not k.startswith("head.bias")})
    with pytest.raises(ValueError, match="no 'head.weight'"):
        load_dense_state_(sparse, {k: v for k, v in theta.items() if k != "head.weight"})


def test_a_trainable_sparse_model_is_in_train_mode_with_gradients_and_the_inference_one_is_not():
    model, masks = masked_unet(0.95)
    model.train()
    train_copy = sparsify(model, masks, trainable=True)
    infer = sparsify(model, masks)
    assert train_copy.training and all(p.requires_grad for p in train_copy.parameters())
    assert not infer.training and not any(p.requires_grad for p in infer.parameters())
    with pytest.raises(TypeError, match="trainable must be a bool"):
        sparsify(model, masks, trainable="yes")


@pytest.mark.parametrize("trainable", [False, True])
def test_loading_another_mask_with_the_same_kept_count_recomputes_the_kernels_offsets(trainable):
    # load_state_dict copies taps and row_ptr in place (same addresses): cached offsets must not survive
    g = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    a_mask = torch.rand(conv.weight.shape, generator=g) < 0.3
    b_mask = a_mask.flatten()[torch.randperm(a_mask.numel(), generator=g)].reshape(a_mask.shape)  # same count
    a, b = SparseConv2d(conv, a_mask, trainable=trainable), SparseConv2d(conv, b_mask, trainable=trainable)
    x = torch.randn(2, 6, 9, 9, generator=g)
    with torch.no_grad():
        a(x)  # builds a's offsets for this input size
        a.load_state_dict(b.state_dict())
        want = F.conv2d(x, conv.weight * b_mask, conv.bias, padding=1)
        torch.testing.assert_close(a(x), want, rtol=1e-5, atol=1e-5)


def test_a_trainable_copy_keeps_frozen_layers_frozen_and_explicit_layers_decide_what_is_sparse():
    model, masks = masked_unet(0.95)
    model.head.requires_grad_(False)
    sparse = sparsify(model, masks, trainable=True, max_density=1.0)
    assert not sparse.head.values.requires_grad and not sparse.head.bias.requires_grad
    assert sparse.down[0].b1[2].values.requires_grad
    chosen = sparsify(model, masks, trainable=True, layers=["head", "down.0.b1.2"])
    assert sorted(chosen.sparsify_report.sparse) == ["down.0.b1.2", "head"]
    assert isinstance(chosen.tail[2], nn.Conv2d) and not isinstance(chosen.tail[2], SparseConv2d)
    with pytest.raises(ValueError, match="without a masked weight"):
        sparsify(model, masks, trainable=True, layers=["nope"])
    with pytest.raises(TypeError, match="layers"):
        sparsify(model, masks, layers="head")


def test_a_conv_subclass_with_its_own_forward_stays_dense():
    class Standardized(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    model = nn.Sequential(Standardized(4, 4, 3, padding=1))
    masks = {"0.weight": torch.rand(4, 4, 3, 3) < 0.05}
    sparse = sparsify(model, masks)
    assert not sparse.sparsify_report[0].sparse and "overrides Conv2d.forward" in sparse.sparsify_report[0].reason


def _masked_at(model: nn.Module, density: float) -> dict:
    """Masks keeping the first ``density`` of each conv/linear weight (in flat order)."""
    masks = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.ndim >= 2:
            mask = torch.zeros(p.numel(), dtype=torch.bool)
            mask[: max(1, round(density * p.numel()))] = True
            masks[name] = mask.reshape(p.shape)
    return masks


def test_training_chooses_each_conv_by_its_outputs_per_channel_and_keeps_linears_dense():
    from pylth.sparse.convert import TRAINING_CONV_MAX_DENSITY, TRAINING_POINTWISE_CONV_MAX_DENSITY
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(1024, 1024))
    few, many = TRAINING_CONV_MAX_DENSITY[0][0], TRAINING_CONV_MAX_DENSITY[-2][0] + 1
    dense_few, dense_many = TRAINING_CONV_MAX_DENSITY[0][1], TRAINING_CONV_MAX_DENSITY[-1][1]
    between = (dense_few + dense_many) / 2  # above the crossover of few outputs, below that of many
    masks = _masked_at(model, between)
    chosen = lambda positions: {c.name: c.sparse for c in sparsify(  # noqa: E731
        model, masks, trainable=True, output_positions=positions).sparsify_report}
    assert chosen({"0": many, "1": many}) == {"0": True, "1": True, "2": False}
    assert chosen({"0": few, "1": few})["0"] is False
    assert chosen({})["0"] is False  # outputs not known: the crossover of the fewest
    pointwise_few = TRAINING_POINTWISE_CONV_MAX_DENSITY[0][1]
    assert chosen({"0": few, "1": few})["1"] is (between <= pointwise_few)
    report = sparsify(model, masks, trainable=True, output_positions={"0": many}).sparsify_report
    assert "trains faster dense" in {c.name: c.reason for c in report}["2"]
    # the inference rule does not depend on it: a Linear this big and sparse is made sparse for sampling
    assert {c.name: c.sparse for c in sparsify(model, _masked_at(model, 0.05)).sparsify_report}["2"]
    with pytest.raises(TypeError, match="output_positions"):
        sparsify(model, masks, trainable=True, output_positions={"0": 0})


def test_the_trainer_measures_each_convs_output_plane_without_touching_the_random_stream():
    from pylth.ddpm import build_model
    from pylth.ddpm.trainer.sparse import conv_output_planes, sparse_layers, training_module
    model = build_model("digits").train()
    torch.manual_seed(11)
    state = torch.get_rng_state()
    planes = conv_output_planes(model)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    side = model.config["image_size"]
    assert planes["head"] == side * side and planes["tail.2"] == side * side
    assert min(planes.values()) < side * side  # the downsampled levels
    masks = _masked_at(model, 0.1)  # between the crossovers of few and of many outputs per channel
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    few = sparse_layers(training_module(model, masks, "auto")[0])
    many = sparse_layers(training_module(model, masks, "auto", batch_size=4096)[0])
    assert set(few) < set(many)
