"""pylth.ops.sparse_grad / sparse_train: the sparse conv's and linear's gradients against torch autograd
on the dense masked weight (F.conv2d / F.linear with ``weight * mask``, in float64, the weight gradient
read at the kept entries), and training on the compact values against MaskedAdam on the dense model."""
import pytest
import torch
import torch.nn.functional as F

from pylth.ops.native import native as _C
from pylth.ops.sparse_conv import compress_weight, sparse_conv2d
from pylth.ops.sparse_grad import (sparse_conv2d_backward, sparse_conv2d_grad_input, sparse_conv2d_grad_input_reference,
                                   sparse_conv2d_grad_weight, sparse_conv2d_grad_weight_reference,
                                   sparse_linear_grad_input, sparse_linear_grad_weight,
                                   sparse_linear_grad_weight_reference)
from pylth.ops.sparse_cpu_plan import group_size, workspace_budget
from pylth.ops.sparse_train import sparse_conv2d_trainable, sparse_linear_trainable
from pylth.optim import MaskedAdam
from test_ops_sparse_conv import CONV_CASES, conv_case


def assert_fp32_close(got, want):
    """fp32 against a float64 oracle: a few hundred ulps of the result's scale (weight gradients are
    sums of batch x positions products, so their scale grows with the plane)."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=2e-5 * scale)


def dense_conv_grads(x, weight, mask, bias, stride, padding, grad_out):
    """torch autograd in float64 on the masked dense weight: y, dx, dW at the kept entries, db."""
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    y = F.conv2d(x64, w64 * mask, b64, stride, padding)
    y.backward(grad_out.double())
    return y.detach(), x64.grad, w64.grad[mask], b64.grad


def sparse_conv_grads(x, weight, mask, bias, stride, padding, grad_out):
    """The trainable sparse conv's y, dx, d values, db (values in compress_weight's order, which is the
    row-major order of the mask's True entries, as ``dense[mask]`` reads them)."""
    structure = compress_weight(weight, mask).with_values(None)
    values = weight[mask].clone().requires_grad_()
    x, bias = x.clone().requires_grad_(), bias.clone().requires_grad_()
    y = sparse_conv2d_trainable(x, values, structure, bias, stride, padding)
    y.backward(grad_out)
    return y.detach(), x.grad, values.grad, bias.grad


def check_conv_grads(x, weight, mask, bias, stride, padding, seed=1):
    with torch.no_grad():
        shape = F.conv2d(x, weight, None, stride, padding).shape
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    got = sparse_conv_grads(x, weight, mask, bias, stride, padding, grad_out)
    want = dense_conv_grads(x, weight, mask, bias, stride, padding, grad_out)
    for g, w in zip(got, want):
        assert_fp32_close(g, w)
    return got


# The forward's cases (every layout the CPU kernel picks, odd sizes, strides 1 to 3, 1x1 to 5x5 kernels)
# and what the backward adds: odd channel counts on 28x28, 7x7 and 4x4 planes at stride 2, batch 1; and
# two shapes whose flat tiles (sparse_conv_flat_tile.h) have padding units and overlapping chunks.
GRAD_CASES = CONV_CASES + [(2, 7, 9, 28, 28, 3, 1, 1), (1, 5, 3, 7, 7, 3, 2, 1), (2, 15, 9, 7, 7, 1, 1, 0),
                           (2, 8, 8, 4, 4, 3, 2, 1), (1, 9, 5, 28, 28, 3, 2, 1), (5, 4, 4, 25, 25, 3, 1, 1),
                           (13, 4, 4, 21, 21, 3, 1, 1)]


@pytest.mark.parametrize("n,ci,co,h,w,k,stride,padding", GRAD_CASES)
def test_conv_forward_and_gradients_match_autograd_on_the_masked_weight(n, ci, co, h, w, k, stride, padding, cpu_isa_path):
    x, weight, mask, bias = conv_case(n, ci, co, h, w, k, density=0.3)
    check_conv_grads(x, weight, mask, bias, stride, padding)


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 1.0])
def test_conv_gradients_at_every_density(density, cpu_isa_path):
    x, weight, mask, bias = conv_case(3, 20, 12, 12, 12, 3, density)
    for stride in (1, 2):
        check_conv_grads(x, weight, mask, bias, stride, 1)


def test_all_kept_layer_trains_like_the_dense_conv(cpu_isa_path):
    x, weight, _, bias = conv_case(2, 6, 5, 16, 16, 3, 1.0)
    mask = torch.ones_like(weight, dtype=torch.bool)
    _, _, grad_values, _ = check_conv_grads(x, weight, mask, bias, 2, 1)
    assert grad_values.numel() == weight.numel()


def test_an_output_channel_without_kept_weights(cpu_isa_path):
    x, weight, mask, bias = conv_case(2, 6, 5, 16, 16, 3, 0.5)
    mask[2] = False
    y, _, grad_values, _ = check_conv_grads(x, weight, mask, bias, 1, 1)
    assert torch.equal(y[:, 2], torch.full_like(y[:, 2], float(bias[2])))
    assert grad_values.numel() == int(mask.sum())


def test_fully_pruned_layer_passes_no_gradient_to_x(cpu_isa_path):
    x, weight, _, bias = conv_case(2, 6, 5, 9, 9, 3, 0.5)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    for stride in (1, 2):
        y, grad_x, grad_values, _ = check_conv_grads(x, weight, mask, bias, stride, 1)
        assert torch.equal(grad_x, torch.zeros_like(x)) and grad_values.shape == (0,)
        assert torch.equal(y, bias[None, :, None, None].expand_as(y))


def test_input_without_grad_gets_none_and_the_values_still_do():
    x, weight, mask, bias = conv_case(2, 4, 3, 8, 8, 3, 0.5)
    structure = compress_weight(weight, mask)
    values = structure.values.clone().requires_grad_()
    sparse_conv2d_trainable(x, values, structure, bias, 1, 1).sum().backward()
    assert x.grad is None and bias.grad is None and values.grad.shape == (structure.nnz,)
    w = weight.clone().requires_grad_()
    F.conv2d(x, w * mask, bias, 1, 1).sum().backward()
    assert_fp32_close(values.grad, w.grad[mask].double())


def test_the_values_are_read_at_every_call_not_cached_with_the_structure():
    x, weight, mask, bias = conv_case(2, 4, 3, 8, 8, 3, 0.5)
    structure = compress_weight(weight, mask).with_values(None)
    values = torch.nn.Parameter(weight[mask].clone())
    with torch.no_grad():
        before = sparse_conv2d_trainable(x, values, structure, bias, 2, 1)
        values.mul_(-2.0)  # what an optimizer step does: in place
        after = sparse_conv2d_trainable(x, values, structure, bias, 2, 1)
    new_weight = torch.zeros_like(weight)
    new_weight[mask] = values.detach()
    torch.testing.assert_close(after, F.conv2d(x, new_weight, bias, 2, 1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, after)
    # The input gradient, too, reads the values of the forward pass it differentiates.
    grad_out = torch.randn(after.shape)
    got = sparse_conv2d_grad_input(grad_out, structure.with_values(values.detach()), x.shape, 2, 1)
    torch.testing.assert_close(got, torch.nn.grad.conv2d_input(x.shape, new_weight, grad_out, 2, 1),
                               rtol=1e-4, atol=1e-4)


def test_changing_the_values_between_forward_and_backward_is_an_autograd_error():
    x, weight, mask, _ = conv_case(1, 2, 2, 5, 5, 3, 0.5)
    structure = compress_weight(weight, mask)
    values = torch.nn.Parameter(structure.values.clone())
    y = sparse_conv2d_trainable(x.requires_grad_(), values, structure, None, 1, 1)
    with torch.no_grad():
        values.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("stride", [1, 2])
def test_threads_do_not_change_a_bit_of_the_gradients(stride, cpu_isa_path):
    # stride 1 takes the one-pass backward that pairs dL/dx's tiles with x (its threads own input
    # channels), stride 2 the one that builds x's slabs (its threads own output channels)
    x, weight, mask, _ = conv_case(4, 32, 48, 16, 16, 3, 0.3)
    sparse = compress_weight(weight, mask)
    grad_out = torch.randn(4, 48, 16 // stride, 16 // stride)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append((sparse_conv2d_grad_weight(x, grad_out, sparse, stride, 1),
                            sparse_conv2d_grad_input(grad_out, sparse, x.shape, stride, 1),
                            *sparse_conv2d_backward(x, grad_out, sparse, stride, 1, bias_grad=True)))
    finally:
        torch.set_num_threads(threads)
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, results[0]))


@pytest.mark.parametrize("n,ci,co,h,w,k,stride,padding", GRAD_CASES[::2])
def test_the_one_pass_backward_in_groups_of_one_image(n, ci, co, h, w, k, stride, padding, cpu_isa_path):
    # A budget of one image per group: every group's slabs, accumulators and (stride 1) x offsets move on.
    x, weight, mask, bias = conv_case(max(n, 3), ci, co, h, w, k, density=0.3)
    with workspace_budget(1):
        assert group_size(3, 1) == 1
        check_conv_grads(x, weight, mask, bias, stride, padding)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_one_pass_backward_computes_exactly_what_is_asked(stride, cpu_isa_path):
    x, weight, mask, bias = conv_case(3, 6, 5, 11, 9, 3, 0.4)
    sparse = compress_weight(weight, mask)
    grad_out = torch.randn(F.conv2d(x, weight, None, stride, 1).shape)
    _, want_x, want_w, want_b = dense_conv_grads(x, weight, mask, bias, stride, 1, grad_out)
    for asked in [(True, False, False), (False, True, False), (False, False, True), (True, True, True),
                  (False, False, False)]:
        got = sparse_conv2d_backward(x, grad_out, sparse, stride, 1, *asked)
        for wanted, g, w in zip(asked, got, (want_x, want_w, want_b)):
            if wanted:
                assert_fp32_close(g, w)
            else:
                assert g is None


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_on_rows_of_every_width(stride, cpu_isa_path):
    # The backward's tiles on rows of 1 to 3 vectors of 16 floats with overlapping tails, narrow planes
    # read flat (stride 1, AVX-512) and rows the 8-float build fills better; input channel 2 is read by no
    # kept weight and output channel 1 has none.
    for width in range(1, 50, 2):
        x, weight, mask, bias = conv_case(2, 3, 4, 5 if width > 8 else width, width, 3, 0.5, seed=width)
        mask[:, 2] = False
        mask[1] = False
        check_conv_grads(x, weight, mask, bias, stride, 1)


def test_input_channels_without_kept_weights_get_exactly_zero(cpu_isa_path):
    x, weight, mask, bias = conv_case(2, 6, 5, 12, 12, 3, 0.5)
    mask[:, 1] = False  # no kept weight reads input channel 1 (the one-pass backward then skips x there)
    mask[:, 4, 1] = False
    _, grad_x, _, _ = check_conv_grads(x, weight, mask, bias, 1, 1)
    assert torch.equal(grad_x[:, 1], torch.zeros_like(grad_x[:, 1]))


def test_one_weight_serves_several_input_sizes_in_the_backward(cpu_isa_path):
    _, weight, mask, bias = conv_case(1, 4, 3, 1, 1, 3, 0.5)
    for size in (8, 28, 8, 5, 28, 32, 16, 4, 7, 9, 10, 11, 8):  # more sizes than the caches hold
        x = torch.randn(2, 4, size, size)
        for stride in (1, 2):
            check_conv_grads(x, weight, mask, bias, stride, 1)


def test_non_contiguous_input_and_grad_out():
    x, weight, mask, _ = conv_case(2, 6, 5, 12, 12, 3, 0.5)
    sparse = compress_weight(weight, mask)
    grad_out = torch.randn(2, 5, 12, 12)
    want_w = sparse_conv2d_grad_weight(x, grad_out, sparse, 1, 1)
    want_x = sparse_conv2d_grad_input(grad_out, sparse, x.shape, 1, 1)
    x_view = x.to(memory_format=torch.channels_last)
    g_view = grad_out.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_view.is_contiguous() and not g_view.is_contiguous()
    assert torch.equal(sparse_conv2d_grad_weight(x_view, g_view, sparse, 1, 1), want_w)
    assert torch.equal(sparse_conv2d_grad_input(g_view, sparse, x.shape, 1, 1), want_x)


def test_empty_batch():
    x, weight, mask, _ = conv_case(1, 4, 3, 8, 8, 3, 0.5)
    sparse = compress_weight(weight, mask)
    x0, g0 = x[:0], torch.zeros(0, 3, 4, 4)
    assert torch.equal(sparse_conv2d_grad_weight(x0, g0, sparse, 2, 1), torch.zeros(sparse.nnz))
    assert sparse_conv2d_grad_input(g0, sparse, x0.shape, 2, 1).shape == (0, 4, 8, 8)


def test_the_references_are_torch_on_the_masked_weight():
    x, weight, mask, _ = conv_case(2, 5, 4, 9, 9, 3, 0.4)
    sparse = compress_weight(weight, mask)
    grad_out = torch.randn(2, 4, 5, 5)
    masked = weight * mask
    assert torch.equal(sparse_conv2d_grad_input_reference(grad_out, sparse, x.shape, 2, 1),
                       torch.nn.grad.conv2d_input(x.shape, masked, grad_out, 2, 1))
    assert torch.equal(sparse_conv2d_grad_weight_reference(x, grad_out, sparse, 2, 1),
                       torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, 2, 1)[mask])
    assert_fp32_close(sparse_conv2d_grad_weight(x, grad_out, sparse, 2, 1),
                      sparse_conv2d_grad_weight_reference(x.double(), grad_out.double(), sparse, 2, 1))


def linear_case(batch, i, o, density, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, i, generator=gen)
    weight = torch.randn(o, i, generator=gen) / (i * density) ** 0.5
    mask = torch.rand(o, i, generator=gen) < density
    return x, weight, mask, torch.randn(o, generator=gen)


def check_linear_grads(x, weight, mask, bias):
    """The trainable sparse linear's y, dx, d values, db against float64 autograd on the masked weight."""
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    y = F.linear(x64, w64 * mask, b64)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(x.device)
    y.backward(grad_out.double())
    values = weight[mask].clone().requires_grad_()
    xs, bs = x.clone().requires_grad_(), bias.clone().requires_grad_()
    ys = sparse_linear_trainable(xs, values, compress_weight(weight, mask).with_values(None), bs)
    ys.backward(grad_out)
    wants = (y.detach(), x64.grad, w64.grad[mask], b64.grad)
    for got, want in zip((ys.detach(), xs.grad, values.grad, bs.grad), wants):
        assert_fp32_close(got, want)


@pytest.mark.parametrize("batch,i,o", [(1, 512, 256), (8, 512, 256), (13, 37, 11), (64, 128, 512), (3, 1, 1)])
def test_linear_forward_and_gradients_match_autograd(batch, i, o, cpu_isa_path):
    x, weight, mask, bias = linear_case(batch, i, o, 0.2)
    mask[0] = False  # an output without kept weights
    check_linear_grads(x, weight, mask, bias)


def test_linear_leading_dimensions_and_empty_rows(cpu_isa_path):
    x, weight, mask, _ = linear_case(6, 7, 5, 0.5)
    x = x.reshape(2, 3, 7)
    sparse = compress_weight(weight, mask)
    grad_out = torch.randn(2, 3, 5)
    assert_fp32_close(sparse_linear_grad_input(grad_out, sparse), (grad_out @ (weight * mask)).double())
    assert_fp32_close(sparse_linear_grad_weight(x, grad_out, sparse),
                      sparse_linear_grad_weight_reference(x.double(), grad_out.double(), sparse))
    assert torch.equal(sparse_linear_grad_weight(x[:0], grad_out[:0], sparse), torch.zeros(sparse.nnz))
    assert sparse_linear_grad_input(grad_out[:0], sparse).shape == (0, 3, 7)


class DenseNet(torch.nn.Module):
    """conv 3x3 s1 -> conv 3x3 s2 -> conv 1x1 -> mean over the plane -> linear, SiLU between."""

    def __init__(self, gen):
        super().__init__()
        shapes = [(5, 3, 3, 3), (7, 5, 3, 3), (6, 7, 1, 1), (4, 6)]
        self.weights = torch.nn.ParameterList(torch.randn(s, generator=gen) * 0.4 for s in shapes)
        self.biases = torch.nn.ParameterList(torch.randn(s[0], generator=gen) * 0.1 for s in shapes)
        self.masks = [torch.rand(s, generator=gen) < 0.5 for s in shapes]

    def forward(self, x):
        (w1, w2, w3, w4), (b1, b2, b3, b4) = self.weights, self.biases
        x = F.silu(F.conv2d(x, w1, b1, 1, 1))
        x = F.silu(F.conv2d(x, w2, b2, 2, 1))
        x = F.silu(F.conv2d(x, w3, b3))
        return F.linear(x.mean((2, 3)), w4, b4)


class SparseNet(torch.nn.Module):
    """DenseNet on the compact kept values of its masked weights."""

    def __init__(self, dense: DenseNet):
        super().__init__()
        self.structures = [compress_weight(w.detach(), m).with_values(None) for w, m in zip(dense.weights, dense.masks)]
        self.values = torch.nn.ParameterList(w.detach()[m].clone() for w, m in zip(dense.weights, dense.masks))
        self.biases = torch.nn.ParameterList(b.detach().clone() for b in dense.biases)

    def forward(self, x):
        (s1, s2, s3, s4), (v1, v2, v3, v4), (b1, b2, b3, b4) = self.structures, self.values, self.biases
        x = F.silu(sparse_conv2d_trainable(x, v1, s1, b1, 1, 1))
        x = F.silu(sparse_conv2d_trainable(x, v2, s2, b2, 2, 1))
        x = F.silu(sparse_conv2d_trainable(x, v3, s3, b3))
        return sparse_linear_trainable(x.mean((2, 3)), v4, s4, b4)


def test_twenty_adam_steps_on_the_compact_values_follow_masked_adam_on_the_dense_model():
    gen = torch.Generator().manual_seed(0)
    dense = DenseNet(gen)
    sparse = SparseNet(dense)
    dense_opt = MaskedAdam(dense.parameters(), lr=1e-2)
    for w, m in zip(dense.weights, dense.masks):
        dense_opt.set_mask(w, m)
    sparse_opt = torch.optim.Adam(sparse.parameters(), lr=1e-2, fused=True)
    x = torch.randn(8, 3, 9, 9, generator=gen)
    target = torch.randn(8, 4, generator=gen)
    losses = []
    for step in range(20):
        pair = []
        for model, opt in ((dense, dense_opt), (sparse, sparse_opt)):
            opt.zero_grad()
            loss = F.mse_loss(model(x), target)
            loss.backward()
            opt.step()
            pair.append(loss.item())
        losses.append(pair)
    dense_losses, sparse_losses = zip(*losses)
    torch.testing.assert_close(torch.tensor(sparse_losses), torch.tensor(dense_losses), rtol=1e-4, atol=1e-6)
    assert dense_losses[-1] < 0.85 * dense_losses[0]  # it trained
    for w, m, v in zip(dense.weights, dense.masks, sparse.values):
        assert torch.equal(w.detach()[~m], torch.zeros(int((~m).sum())))
        torch.testing.assert_close(v.detach(), w.detach()[m], rtol=1e-3, atol=1e-4)
    # The optimizer state is sized by the kept weights.
    assert all(sparse_opt.state[v]["exp_avg"].numel() == int(m.sum()) for v, m in zip(sparse.values, dense.masks))


def test_bad_arguments_name_the_argument():
    x, weight, mask, bias = conv_case(2, 4, 3, 8, 8, 3, 0.5)
    sparse = compress_weight(weight, mask)
    structure = sparse.with_values(None)
    values = sparse.values.clone()
    grad_out = torch.zeros(2, 3, 8, 8)
    with pytest.raises(TypeError, match="values must have dtype torch.float32"):
        sparse_conv2d_trainable(x, values.double(), structure, bias, 1, 1)
    with pytest.raises(ValueError, match=r"values has shape \(\d+,\) but must have shape"):
        sparse_conv2d_trainable(x, values[1:], structure, bias, 1, 1)
    with pytest.raises(ValueError, match="values is on meta but must be on cpu"):
        sparse_conv2d_trainable(x, values.to("meta"), structure, bias, 1, 1)
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        sparse_conv2d_trainable(x, values.tolist(), structure, bias, 1, 1)
    with pytest.raises(TypeError, match="weight must be a SparseWeight"):
        sparse_conv2d_trainable(x, values, weight, bias, 1, 1)
    with pytest.raises(ValueError, match="weight must be a compressed conv"):
        sparse_conv2d_trainable(x, values, compress_weight(torch.ones(3, 4)), bias, 1, 1)
    with pytest.raises(ValueError, match="weight must be a compressed linear"):
        sparse_linear_trainable(x, values, structure, bias)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4, H, W\]"):
        sparse_conv2d_trainable(x[:, :3], values, structure, bias, 1, 1)
    with pytest.raises(TypeError, match="stride must be an int"):
        sparse_conv2d_trainable(x, values, structure, bias, 1.0, 1)
    with pytest.raises(ValueError, match="weight is a structure without values"):
        sparse_conv2d(x, structure, bias, 1, 1)
    with pytest.raises(ValueError, match="weight is a structure without values"):
        sparse_conv2d_grad_input(grad_out, structure, x.shape, 1, 1)
    with pytest.raises(ValueError, match="weight is a structure without values"):
        structure.to_dense()
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 3, 4, 4\) but the output has shape \(2, 3, 8, 8\)"):
        sparse_conv2d_grad_weight(x, grad_out[:, :, :4, :4], structure, 1, 1)
    with pytest.raises(TypeError, match="grad_out must have dtype torch.float32"):
        sparse_conv2d_grad_input(grad_out.double(), sparse, x.shape, 1, 1)
    with pytest.raises(ValueError, match="input_shape must be 4 non-negative ints"):
        sparse_conv2d_grad_input(grad_out, sparse, (2, 4, 8), 1, 1)
    with pytest.raises(ValueError, match="input_shape has 3 channels but weight has 4 input channels"):
        sparse_conv2d_grad_input(grad_out, sparse, (2, 3, 8, 8), 1, 1)
    with pytest.raises(ValueError, match="input_shape of spatial size 1x1 with padding 0 is smaller"):
        sparse_conv2d_grad_input(grad_out, sparse, (2, 4, 1, 1), 1, 0)
    with pytest.raises(ValueError, match=r"grad_out must have shape \[\.\.\., 5\]"):
        sparse_linear_grad_input(torch.zeros(2, 4), compress_weight(torch.ones(5, 7)))
    # The forward-only entry points still refuse inputs that require grad, and say where to go instead.
    with pytest.raises(ValueError, match="x requires grad.*pylth.ops.sparse_train"):
        sparse_conv2d(x.clone().requires_grad_(), sparse, bias, 1, 1)


def call_native(entry, rows, *args):
    """``entry`` on the table of ``rows`` (kept alive for the call: a table is read through its address)."""
    table = torch.tensor(rows, dtype=torch.int64)
    return entry(table.data_ptr(), *table.shape, *args)


def test_native_backward_entry_points_compute_and_raise_instead_of_aborting():
    # A 1x1 conv of 2 -> 3 channels on one 8x8 image, read in place as one flat row of 64 outputs.
    x, dy, grad, grad_bias = torch.randn(1, 2, 8, 8), torch.randn(1, 3, 8, 8), torch.empty(3), torch.empty(3)
    row_ptr, offsets = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 64, 0], dtype=torch.int32)
    plan = torch.tensor([1, 2, 8, 8, 3, 1, 64, 0, 0, 64, 192, 1, 64, 0, 0, 1, 8, 8, 1])  # csrc/sparse_conv.h
    workspace = torch.empty(16 * 4 + 3)
    rows = [(x.data_ptr(), x.numel()), (dy.data_ptr(), dy.numel()), (workspace.data_ptr(), workspace.numel()),
            (grad.data_ptr(), 3), (row_ptr.data_ptr(), 4), (offsets.data_ptr(), 3), (plan.data_ptr(), plan.numel()),
            (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (grad_bias.data_ptr(), 3)]
    conv = _C.sparse_conv2d_backward_cpu
    call_native(conv, rows, 1)
    torch.testing.assert_close(grad, torch.stack([(dy[0, 0] * x[0, 0]).sum(), (dy[0, 1] * x[0, 1]).sum(),
                                                  (dy[0, 2] * x[0, 0]).sum()]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_bias, dy.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="the workspace is too small"):
        call_native(conv, rows[:2] + [(workspace.data_ptr(), 16 * 4)] + rows[3:], 1)
    with pytest.raises(ValueError, match="grad_values size mismatch"):
        call_native(conv, rows[:3] + [(grad.data_ptr(), 4)] + rows[4:], 1)
    with pytest.raises(ValueError, match="grad_out size mismatch"):
        call_native(conv, rows[:1] + [(dy.data_ptr(), 191)] + rows[2:], 1)
    with pytest.raises(ValueError, match="14 rows"):
        call_native(conv, rows[:-1], 1)
    # The input gradient needs the transposed weight's plan, which must read dy.
    with pytest.raises(ValueError, match="the plan must hold"):
        call_native(conv, rows[:7] + [(x.data_ptr(), x.numel())] + rows[8:], 1)
    # The linear: x [2, 2], dy [2, 3], a workspace of (2 + 3) rows of 16 floats, slack and accumulators.
    linear_workspace = torch.empty(5 * 16 + 16 + 16 * 4)
    offsets[:] = torch.tensor([0, 16, 0], dtype=torch.int32)
    linear_rows = [(x.data_ptr(), 4), (linear_workspace.data_ptr(), linear_workspace.numel()), (dy.data_ptr(), 6),
                   (row_ptr.data_ptr(), 4), (offsets.data_ptr(), 3), (grad.data_ptr(), 3)]
    linear = _C.sparse_linear_grad_weight_cpu
    call_native(linear, linear_rows + [(0, 0)], 2, 2, 3, 1)
    xs, dys = x.reshape(-1)[:4].reshape(2, 2), dy.reshape(-1)[:6].reshape(2, 3)
    torch.testing.assert_close(grad, torch.stack([dys[:, 0] @ xs[:, 0], dys[:, 1] @ xs[:, 1], dys[:, 2] @ xs[:, 0]]))
    with pytest.raises(ValueError, match="the bias row must be empty"):
        call_native(linear, linear_rows + [(x.data_ptr(), 3)], 2, 2, 3, 1)
    with pytest.raises(ValueError, match="the workspace must hold"):
        call_native(linear, [linear_rows[0], (linear_workspace.data_ptr(), 159)] + linear_rows[2:] + [(0, 0)], 2, 2, 3, 1)
    with pytest.raises(ValueError, match="multiple of the batch pitch"):
        offsets[1] = 8
        call_native(linear, linear_rows + [(0, 0)], 2, 2, 3, 1)


@pytest.mark.cuda
@pytest.mark.parametrize("n,ci,co,h,w,k,stride,padding", GRAD_CASES[::3])
def test_cuda_conv_gradients_match_autograd(n, ci, co, h, w, k, stride, padding):
    x, weight, mask, bias = conv_case(n, ci, co, h, w, k, density=0.3)
    check_conv_grads(x.cuda(), weight.cuda(), mask.cuda(), bias.cuda(), stride, padding)


@pytest.mark.cuda
def test_cuda_linear_gradients_and_an_output_without_kept_weights():
    x, weight, mask, bias = (t.cuda() for t in linear_case(13, 64, 32, 0.2))
    mask[3] = False
    check_linear_grads(x, weight, mask, bias)
