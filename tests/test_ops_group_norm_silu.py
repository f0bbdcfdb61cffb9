"""GroupNorm + SiLU in one native pass, forward and backward, against torch's two ops and their autograd
in float64 (the oracle), on odd shapes, with far-from-zero means, without affine parameters, and in the
sparsified U-Net."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pylth.ddpm import build_model
from pylth.ops.group_norm_silu import group_norm_silu
from pylth.pruning import compute_masks
from pylth.sparse import sparsify
from pylth.sparse.modules import GroupNormSiLU


def oracle(x, groups, weight, bias, eps):
    w = None if weight is None else weight.double()
    b = None if bias is None else bias.double()
    return F.silu(F.group_norm(x.double(), groups, w, b, eps))


@pytest.mark.parametrize("shape,groups", [((8, 128, 32, 32), 32), ((3, 12, 7, 5), 4), ((2, 6, 1, 1), 3),
                                          ((1, 5, 3), 5), ((4, 64, 28, 28), 32), ((2, 8, 9, 9), 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_group_norm_then_silu(shape, groups, threads, monkeypatch, cpu_isa_path):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what pylth's launcher passes to OpenMP
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3 + 1
    weight, bias = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    got = group_norm_silu(x, groups, weight, bias, 1e-5)
    want = oracle(x, groups, weight, bias, 1e-5)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # as accurate as torch's own fp32 ops, within a small factor
    torch_error = (F.silu(F.group_norm(x, groups, weight, bias, 1e-5)).double() - want).abs().max()
    assert (got.double() - want).abs().max() <= 4 * torch_error + 1e-6


def test_a_mean_far_from_zero_keeps_the_variance(cpu_isa_path):
    # mean 1000, std 0.01: E[x^2] - mean^2 in fp32 would lose every digit of the variance
    x = 1000 + 0.01 * torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    got = group_norm_silu(x, 2)
    want = oracle(x, 2, None, None, 1e-5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)  # torch's fp32 ops: off by 5e-3


def test_extremes_saturate_like_silu(cpu_isa_path):
    x = torch.tensor([-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4]).repeat(2, 1).reshape(1, 2, 9)
    weight, bias = torch.full((2,), 60.0), torch.zeros(2)  # normalised values spread to about +-200
    got = group_norm_silu(x, 1, weight, bias, 0.0)
    want = oracle(x, 1, weight, bias, 0.0)
    assert torch.isfinite(got).all() and want.abs().max() > 100
    # fp32 rounding of values ~200 bounds the absolute error of those near 0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7 * want.abs().max().item())


def test_non_contiguous_input_and_empty_batch(cpu_isa_path):
    x = torch.randn(4, 6, 5, 7).transpose(2, 3)
    torch.testing.assert_close(group_norm_silu(x, 3).double(), oracle(x, 3, None, None, 1e-5), rtol=1e-5, atol=1e-5)
    assert group_norm_silu(torch.empty(0, 6, 4, 4), 3).shape == (0, 6, 4, 4)


def oracle_grads(x, groups, weight, bias, eps, grad_out):
    """torch's GroupNorm then SiLU with autograd in float64: dx, dweight, dbias (None without them)."""
    x64 = x.detach().double().requires_grad_()
    w64 = None if weight is None else weight.detach().double().requires_grad_()
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    F.silu(F.group_norm(x64, groups, w64, b64, eps)).backward(grad_out.double())
    return x64.grad, None if w64 is None else w64.grad, None if b64 is None else b64.grad


def ours_grads(x, groups, weight, bias, eps, grad_out):
    x = x.detach().clone().requires_grad_()
    weight = None if weight is None else weight.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    group_norm_silu(x, groups, weight, bias, eps).backward(grad_out)
    return x.grad, None if weight is None else weight.grad, None if bias is None else bias.grad


def assert_grads_close(got, want):
    """fp32 against float64: the parameters' gradients are sums over the batch and positions."""
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert g.dtype == torch.float32 and g.shape == w.shape
            scale = max(1.0, float(w.abs().max()))
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("shape,groups", [((4, 64, 14, 14), 32), ((3, 12, 7, 5), 4), ((2, 6, 1, 1), 3),
                                          ((1, 5, 3), 5), ((2, 8, 9, 9), 1), ((5, 32, 7, 7), 32)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_match_group_norm_then_silu_autograd(shape, groups, threads, affine, monkeypatch, cpu_isa_path):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what pylth's launcher passes to OpenMP
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3 + 1
    weight, bias = (torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)) if affine else (None, None)
    grad_out = torch.randn(shape, generator=g)
    assert_grads_close(ours_grads(x, groups, weight, bias, 1e-5, grad_out),
                       oracle_grads(x, groups, weight, bias, 1e-5, grad_out))


def test_every_plane_size_forward_and_backward(cpu_isa_path):
    # Planes of 1 to 70 positions (a vector of 16 or 8 floats and a tail, two and four vectors a step) and
    # groups longer than one 512-value run of the moments' fp32 sums, each against the float64 oracle.
    g = torch.Generator().manual_seed(11)
    for hw in [*range(1, 71), 255, 513, 1100]:
        shape, groups = (2, 4, hw), 2 if hw % 2 else 1
        x = torch.randn(shape, generator=g) * 2 - 0.5
        weight, bias = torch.randn(4, generator=g), torch.randn(4, generator=g)
        torch.testing.assert_close(group_norm_silu(x, groups, weight, bias).double(),
                                   oracle(x, groups, weight, bias, 1e-5), rtol=1e-5, atol=1e-5)
        grad_out = torch.randn(shape, generator=g)
        assert_grads_close(ours_grads(x, groups, weight, bias, 1e-5, grad_out),
                           oracle_grads(x, groups, weight, bias, 1e-5, grad_out))


def test_gradients_with_a_mean_far_from_zero_and_extreme_values(cpu_isa_path):
    g = torch.Generator().manual_seed(5)
    x = 1000 + 0.01 * torch.randn(2, 8, 6, 6, generator=g)  # x - mean in fp32 would lose the spread
    grad_out = torch.randn(2, 8, 6, 6, generator=g)
    assert_grads_close(ours_grads(x, 2, None, None, 1e-5, grad_out), oracle_grads(x, 2, None, None, 1e-5, grad_out))
    x = torch.tensor([-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4]).repeat(2, 1).reshape(1, 2, 9)
    weight, bias = torch.full((2,), 60.0), torch.zeros(2)  # normalised values to about +-200: sigmoid saturates
    grad_out = torch.ones(1, 2, 9)
    got = ours_grads(x, 1, weight, bias, 0.0, grad_out)
    assert all(torch.isfinite(t).all() for t in got)
    assert_grads_close(got, oracle_grads(x, 1, weight, bias, 0.0, grad_out))


def test_gradients_only_where_asked_non_contiguous_grad_and_empty_batch(cpu_isa_path):
    g = torch.Generator().manual_seed(6)
    x, weight, bias = torch.randn(3, 6, 5, 4, generator=g), torch.randn(6, generator=g), torch.randn(6, generator=g)
    weight.requires_grad_()
    grad_out = torch.randn(3, 6, 4, 5, generator=g).transpose(2, 3)  # non-contiguous
    group_norm_silu(x, 3, weight, bias).backward(grad_out)
    assert x.grad is None and bias.grad is None
    want = oracle_grads(x, 3, weight, bias, 1e-5, grad_out)[1]
    torch.testing.assert_close(weight.grad.double(), want, rtol=1e-4, atol=1e-5)
    empty = torch.empty(0, 6, 4, 4, requires_grad=True)
    w = torch.ones(6, requires_grad=True)
    group_norm_silu(empty, 3, w).sum().backward()
    assert empty.grad.shape == (0, 6, 4, 4) and torch.equal(w.grad, torch.zeros(6))


def test_a_fused_module_trains_like_torchs_pair():
    torch.manual_seed(7)
    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    fused = GroupNormSiLU.from_group_norm(copy_of(norm))
    pair = nn.Sequential(copy_of(norm), nn.SiLU())
    x = torch.randn(3, 8, 6, 6)
    for module in (fused, pair):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            (module(x) ** 2).mean().backward()
            optimizer.step()
    torch.testing.assert_close(fused.weight, pair[0].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.bias, pair[0].bias, rtol=1e-5, atol=1e-6)


def copy_of(norm: nn.GroupNorm) -> nn.GroupNorm:
    out = nn.GroupNorm(norm.num_groups, norm.num_channels, norm.eps)
    out.load_state_dict(norm.state_dict())
    return out


@pytest.mark.parametrize("call,match", [
    (lambda x: group_norm_silu(x.double(), 2), "x must have dtype"),
    (lambda x: group_norm_silu(x, 3), "num_groups"),
    (lambda x: group_norm_silu(x, True), "num_groups"),
    (lambda x: group_norm_silu(x, 2, torch.ones(3)), "weight has shape"),
    (lambda x: group_norm_silu(x, 2, None, torch.ones(4, dtype=torch.float64)), "bias must have dtype"),
    (lambda x: group_norm_silu(x, 2, eps=-1.0), "eps"),
    (lambda x: group_norm_silu(x[0, 0, 0], 1), "batch and a channel"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(torch.randn(2, 4, 3, 3))


def test_sparsify_fuses_the_unet_pairs_and_keeps_its_outputs_and_keys():
    torch.manual_seed(0)
    model = build_model("digits").eval()
    masks = compute_masks(model, "uniform", 0.95)
    plain = sparsify(model, masks)
    assert plain.sparsify_report.fused_norms > 0 and "GroupNorm + SiLU pairs fused" in str(plain.sparsify_report)
    assert isinstance(plain.down[0].b1[0], GroupNormSiLU) and isinstance(plain.down[0].b1[1], nn.Identity)
    assert type(plain.down[2].attn.n) is nn.GroupNorm  # no SiLU after it
    assert sparsify(model, masks, max_density=0.0).sparsify_report.fused_norms == 0  # nothing sparse: unchanged
    trainable = sparsify(model, masks, trainable=True)  # fused for training too: the pass has a backward
    assert trainable.sparsify_report.fused_norms == plain.sparsify_report.fused_norms
    assert isinstance(trainable.down[0].b1[0], GroupNormSiLU) and trainable.down[0].b1[0].weight.requires_grad
    # the fused network against the same network with torch's GroupNorm and SiLU put back
    unfused = sparsify(model, masks)
    for m in unfused.modules():
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], GroupNormSiLU):
                    norm = nn.GroupNorm(m[i].num_groups, m[i].num_channels, m[i].eps)
                    norm.load_state_dict(m[i].state_dict())
                    m[i], m[i + 1] = norm, nn.SiLU()
    assert set(plain.state_dict()) == set(unfused.state_dict())  # the fused modules keep GroupNorm's keys
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t), unfused(x, t), rtol=1e-5, atol=1e-5)



def test_small_planes_train_on_torchs_pair_and_large_ones_on_the_fused_pass(monkeypatch, cpu_isa_path):
    from pylth.sparse import modules
    calls = []
    monkeypatch.setattr(modules, "group_norm_silu", lambda *a, **k: calls.append(a[0].shape) or group_norm_silu(*a, **k))
    norm = GroupNormSiLU(2, 4)
    assert modules.fused_training_min_plane() == modules.FUSED_TRAINING_MIN_PLANE[cpu_isa_path]
    side = int(modules.fused_training_min_plane() ** 0.5)
    assert side * side == modules.fused_training_min_plane()  # the edge is a square plane
    for size, fused in ((side - 1, False), (side, True)):
        calls.clear()
        x = torch.randn(2, 4, size, size, requires_grad=True)
        y = norm(x)
        torch.testing.assert_close(y, F.silu(F.group_norm(x, 2, norm.weight, norm.bias)), rtol=1e-5, atol=1e-5)
        y.sum().backward()
        assert bool(calls) is fused
        with torch.no_grad():  # sampling always takes the fused pass
            calls.clear()
            norm(x)
            assert calls
