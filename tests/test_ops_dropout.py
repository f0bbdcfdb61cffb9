"""Keyed dropout (pylth.ops.dropout, csrc/dropout.*): the native kernel equals its pure-torch reference
bit for bit on odd sizes; rows split across processes get the masks they get in one; the keep rate
and the independence of the masks hold up against binomial statistics; the backward regenerates the
mask; bad input is refused naming the argument. KeyedDropout is nn.Dropout's drop-in."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pylth.ddpm.models import UNet, model_kind
from pylth.ddpm.models.dropout import (KeyedDropout, clear_dropout_step, keyed_dropouts, set_dropout_step,
                                       swap_dropouts)
from pylth.ddpm.models.unet import ResBlock
from pylth.ops.dropout import dropout_mask_reference, keyed_dropout, keyed_dropout_reference, stream_key, threshold
from pylth.ops.native import warn_fallback

SHAPES = [(1, 1), (3, 7), (5, 3, 5, 5), (2, 40_001), (17,), (4, 16, 9, 11), (0, 5), (3, 0)]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_native_equals_the_reference_bit_for_bit(shape, p, cpu_isa_path):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for offset, stride in ((0, 1), (1, 2), (5, 3)):
        key = stream_key(7, 11, offset)
        assert torch.equal(keyed_dropout(x, p, key, row_offset=offset, row_stride=stride),
                           keyed_dropout_reference(x, p, key, offset, stride))


def test_a_kept_value_is_scaled_as_torch_scales_it_and_a_dropped_one_is_zero():
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(2))
    x[0, :5] = float("nan")
    y = keyed_dropout(x, 0.25, 3)
    keep = dropout_mask_reference(64, 300, 0.25, 3)
    torch.testing.assert_close(y[keep], x[keep] * (1 / 0.75), rtol=0, atol=0, equal_nan=True)  # torch's scaling
    assert torch.equal(y[~keep], torch.zeros(int((~keep).sum())))  # a select: a dropped NaN is 0 too
    assert torch.isnan(y[0, :5][keep[0, :5]]).all()


def test_the_rows_of_a_batch_split_across_processes_get_the_masks_of_one_process():
    x = torch.randn(12, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    whole = keyed_dropout(x, 0.3, 99)
    for world in (2, 3, 4):
        for rank in range(world):  # rank r holds global rows r, r + world, ... (DistributedSampler's split)
            part = keyed_dropout(x[rank::world].contiguous(), 0.3, 99, row_offset=rank, row_stride=world)
            assert torch.equal(part, whole[rank::world])


def test_strides_do_not_change_the_mask():
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(4))
    channels_last = x.to(memory_format=torch.channels_last)
    assert torch.equal(keyed_dropout(channels_last, 0.5, 8), keyed_dropout(x, 0.5, 8))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_keep_rate_is_one_minus_p_and_masks_of_other_keys_rows_and_elements_are_independent(p):
    rows, per_row = 64, 4096
    keep = dropout_mask_reference(rows, per_row, p, stream_key(0, 0, 0)).float()
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma of a binomial
    other = dropout_mask_reference(rows, per_row, p, stream_key(0, 1, 0)).float()  # the next iteration
    layer = dropout_mask_reference(rows, per_row, p, stream_key(0, 0, 1)).float()  # the next layer
    for a, b in ((keep, other), (keep, layer), (keep[:-1], keep[1:]), (keep[:, :-1], keep[:, 1:])):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        correlation = float((a * b).mean() / (a.std() * b.std()))
        assert abs(correlation) < 5 / math.sqrt(a.numel())


def test_the_threshold_is_p_of_2_to_the_32():
    assert threshold(0.0) == 0 and threshold(0.5) == 2**31 and threshold(0.1) == round(0.1 * 2**32)
    assert threshold(1 - 1e-12) == 2**32 - 1


def test_the_backward_regenerates_the_mask_and_stores_no_tensor():
    x = torch.randn(8, 33, requires_grad=True)
    y = keyed_dropout(x, 0.4, 21, row_offset=1, row_stride=2)
    assert y.grad_fn.saved_tensors == () and all(isinstance(a, (int, float)) for a in y.grad_fn.args)
    g = torch.randn(8, 33)
    y.backward(g)
    keep = dropout_mask_reference(8, 33, 0.4, 21, 1, 2)
    assert torch.equal(x.grad, torch.where(keep, g * (1 / 0.6), torch.zeros(())))
    with warnings.catch_warnings():  # float64 runs on the reference, which warns once
        warnings.simplefilter("ignore", RuntimeWarning)
        assert torch.autograd.gradcheck(lambda t: keyed_dropout(t, 0.4, 21),
                                        torch.randn(3, 5, dtype=torch.float64, requires_grad=True))


def test_p_zero_is_the_identity_and_other_dtypes_use_the_reference():
    x = torch.randn(4, 5)
    assert keyed_dropout(x, 0.0, 1) is x
    half = x.to(torch.bfloat16)
    warn_fallback.cache_clear()  # it warns once per process
    with pytest.warns(RuntimeWarning, match="reference"):
        out = keyed_dropout(half, 0.5, 1)
    assert torch.equal(out, keyed_dropout_reference(half, 0.5, 1))


@pytest.mark.parametrize("call, error, match", [
    (lambda: keyed_dropout([1.0], 0.1, 1), TypeError, "^x must be a torch.Tensor"),
    (lambda: keyed_dropout(torch.ones(3, dtype=torch.int64), 0.1, 1), TypeError, "^x must be a floating"),
    (lambda: keyed_dropout(torch.tensor(1.0), 0.1, 1), ValueError, "^x must have a batch dimension"),
    (lambda: keyed_dropout(torch.ones(3), 1.0, 1), ValueError, "^p must be"),
    (lambda: keyed_dropout(torch.ones(3), -0.1, 1), ValueError, "^p must be"),
    (lambda: keyed_dropout(torch.ones(3), 0.1, -1), ValueError, "^key must be"),
    (lambda: keyed_dropout(torch.ones(3), 0.1, 2**64), ValueError, "^key must be"),
    (lambda: keyed_dropout(torch.ones(3), 0.1, 1.5), ValueError, "^key must be"),
    (lambda: keyed_dropout(torch.ones(3), 0.1, 1, row_offset=-1), ValueError, "^row_offset must be"),
    (lambda: keyed_dropout(torch.ones(3), 0.1, 1, row_stride=0), ValueError, "^row_stride must be"),
])
def test_bad_input_is_refused_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_equals_the_reference_and_the_cpu(dtype):
    x = torch.randn(6, 5, 7, 9, generator=torch.Generator().manual_seed(5)).to(dtype)
    on_gpu = keyed_dropout(x.cuda(), 0.2, 77, row_offset=3, row_stride=4)
    assert torch.equal(on_gpu, keyed_dropout_reference(x.cuda(), 0.2, 77, 3, 4))
    assert torch.equal(on_gpu.cpu(), keyed_dropout_reference(x, 0.2, 77, 3, 4))


# -- the module --------------------------------------------------------------------------------------
def test_keyed_dropout_module_is_the_identity_in_eval_and_keyed_in_training():
    layers = [KeyedDropout(0.5), KeyedDropout(0.5)]
    x = torch.randn(6, 40)
    assert layers[0].eval()(x) is x
    set_dropout_step(layers, seed=3, iteration=9, row_offset=1, row_stride=2)
    out = [layer.train()(x) for layer in layers]
    assert torch.equal(out[0], keyed_dropout(x, 0.5, stream_key(3, 9, 0), row_offset=1, row_stride=2))
    assert not torch.equal(out[0], out[1]), "each layer has its own masks"
    clear_dropout_step(layers)
    assert layers[0].key is None and (layers[0].row_offset, layers[0].row_stride) == (0, 1)
    torch.manual_seed(0)
    first = layers[0](x)
    torch.manual_seed(0)
    assert torch.equal(layers[0](x), first) and not torch.equal(layers[0](x), first)  # unkeyed: the global RNG
    with pytest.raises(ValueError, match="dropout probability"):
        KeyedDropout(1.0)


def test_the_unet_uses_keyed_dropout_and_its_state_dict_is_unchanged():
    model = UNet(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 dropout=0.1, norm_groups=4)
    blocks = sum(isinstance(m, ResBlock) for m in model.modules())
    assert len(keyed_dropouts(model)) == blocks == 8 and not any(type(m) is nn.Dropout for m in model.modules())
    assert all(".b2.2." not in name for name in model.state_dict())


def test_diffusers_unet2d_gets_keyed_dropout_with_the_same_state_dict():
    pytest.importorskip("diffusers")
    kind = model_kind("diffusers-unet2d")
    config = kind.config_for("digits", (1, 8, 8))
    model = kind.build(config)
    plain = __import__("diffusers").UNet2DModel(**config)
    assert keyed_dropouts(model) and not any(type(m) is nn.Dropout for m in model.modules())
    assert list(model.state_dict()) == list(plain.state_dict())
    assert sum(type(m) is nn.Dropout for m in plain.modules()) == len(keyed_dropouts(model))


def test_swap_dropouts_replaces_nn_dropout_in_place_keeping_the_rate():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.3)), nn.Dropout(1.0))
    assert swap_dropouts(model) is model
    assert [type(m).__name__ for m in model.modules()][1:] == ["Linear", "KeyedDropout", "Sequential",
                                                               "KeyedDropout", "Dropout"]
    assert model[1].p == 0.2 and model[2][0].p == 0.3


def test_dropout_in_training_is_what_torch_dropout_does_with_that_mask():
    # the outside oracle: torch's dropout, given the same mask, scales and zeroes alike
    x = torch.randn(16, 64)
    keep = dropout_mask_reference(16, 64, 0.3, 5)
    torch_style = x * keep * (1 / (1 - 0.3))  # F.dropout's formula
    assert torch.equal(keyed_dropout(x, 0.3, 5), torch_style)
    assert F.dropout(x, 0.3, training=False) is x and KeyedDropout(0.3).eval()(x) is x
