"""pylth.ops.sparse_conv: sparse-weight conv and linear against torch's dense ops on the masked weights."""
import pytest
import torch
import torch.nn.functional as F

from pylth.ddpm import UNet, build_model
from pylth.ops.native import native as _C
from pylth.ops.sparse_cpu_plan import group_size, workspace_budget
from pylth.ops.sparse_conv import (SparseWeight, compress_weight, sparse_conv2d, sparse_conv2d_reference,
                                   sparse_linear, sparse_linear_reference)

# fp32 results of a different summation order than torch's: outputs are O(1) (unit inputs, weights
# scaled by 1/sqrt(fan-in)), so this is a few hundred ulps at most.
TOL = dict(rtol=1e-4, atol=1e-4)


def conv_case(n, ci, co, h, w, k, density, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=gen)
    weight = torch.randn(co, ci, k, k, generator=gen) / (ci * k * k * max(density, 0.01)) ** 0.5
    mask = torch.rand(co, ci, k, k, generator=gen) < density
    b = torch.randn(co, generator=gen) if bias else None
    return x, weight, mask, b


def check_conv(x, weight, mask, bias, stride, padding):
    sparse = compress_weight(weight, mask)
    with torch.no_grad():
        got = sparse_conv2d(x, sparse, bias, stride, padding)
    want = F.conv2d(x, weight * mask, bias, stride, padding)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOL)
    return got


# (N, Ci, Co, H, W, K, stride, padding): every layout the CPU kernel picks (rows of 1-12 vectors,
# partial last vectors, column phases, flat "shifted" and "im2col" planes, the 1x1 plane read in place
# or copied) on the presets' sizes (32, 16, 8, 4; 28, 14, 7) and odd ones.
CONV_CASES = [
    (2, 16, 24, 32, 32, 3, 1, 1), (2, 16, 8, 32, 32, 3, 2, 1), (3, 12, 16, 16, 16, 3, 1, 1),
    (2, 12, 8, 16, 16, 3, 2, 1), (2, 8, 8, 8, 8, 3, 1, 1), (2, 8, 8, 8, 8, 3, 2, 1), (2, 8, 8, 4, 4, 3, 1, 1),
    (2, 8, 8, 28, 28, 3, 1, 1), (2, 8, 8, 28, 28, 3, 2, 1), (2, 8, 8, 14, 14, 3, 1, 1), (2, 8, 8, 14, 14, 3, 2, 1),
    (2, 8, 8, 7, 7, 3, 1, 1), (2, 16, 8, 16, 16, 1, 1, 0), (2, 16, 8, 4, 4, 1, 1, 0), (2, 16, 8, 7, 7, 1, 1, 0),
    (2, 16, 8, 14, 14, 1, 1, 0), (2, 16, 8, 28, 28, 1, 1, 0), (1, 3, 5, 9, 11, 3, 1, 1), (1, 5, 3, 13, 13, 3, 2, 1),
    (3, 7, 9, 5, 5, 3, 1, 1), (1, 1, 1, 1, 1, 3, 1, 1), (2, 3, 4, 6, 100, 3, 1, 1), (1, 2, 3, 3, 41, 3, 2, 1),
    (2, 4, 4, 10, 10, 3, 3, 1), (1, 3, 2, 9, 9, 5, 1, 2), (1, 3, 2, 8, 8, 3, 1, 0), (1, 2, 3, 5, 5, 1, 2, 0),
    (2, 3, 4, 7, 9, 2, 1, 1), (1, 3, 2, 2, 2, 3, 2, 1), (64, 4, 8, 8, 8, 3, 1, 1), (1, 33, 17, 12, 12, 3, 1, 1),
]


@pytest.mark.parametrize("n,ci,co,h,w,k,stride,padding", CONV_CASES)
def test_conv_matches_torch_on_the_masked_weight(n, ci, co, h, w, k, stride, padding, cpu_isa_path):
    x, weight, mask, b = conv_case(n, ci, co, h, w, k, density=0.3)
    check_conv(x, weight, mask, b, stride, padding)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_conv_at_every_density(density, cpu_isa_path):
    x, weight, mask, b = conv_case(3, 20, 12, 12, 12, 3, density)
    check_conv(x, weight, mask, b, 1, 1)
    check_conv(x, weight, mask, b, 2, 1)


def test_fully_pruned_layer_gives_the_bias_exactly(cpu_isa_path):
    x, weight, _, b = conv_case(2, 6, 5, 9, 9, 3, 0.5)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    got = check_conv(x, weight, mask, b, 1, 1)
    assert torch.equal(got, b[None, :, None, None].expand_as(got))
    with torch.no_grad():
        assert torch.equal(sparse_conv2d(x, compress_weight(weight, mask), None, 1, 1), torch.zeros_like(got))


def test_an_output_channel_without_kept_weights_is_its_bias(cpu_isa_path):
    x, weight, mask, b = conv_case(2, 6, 5, 16, 16, 3, 0.5)
    mask[2] = False
    got = check_conv(x, weight, mask, b, 1, 1)
    assert torch.equal(got[:, 2], torch.full_like(got[:, 2], float(b[2])))


def test_all_kept_layer_and_kept_zero_weights(cpu_isa_path):
    x, weight, _, b = conv_case(2, 6, 5, 16, 16, 3, 1.0)
    weight[0, 0] = 0.0  # kept by the mask although zero: part of the sparse weight
    sparse = compress_weight(weight, torch.ones_like(weight, dtype=torch.bool))
    assert sparse.nnz == weight.numel() and sparse.density == 1.0
    with torch.no_grad():
        torch.testing.assert_close(sparse_conv2d(x, sparse, b, 1, 1), F.conv2d(x, weight, b, 1, 1), **TOL)


def test_without_a_mask_the_nonzeros_are_kept():
    _, weight, mask, _ = conv_case(1, 4, 3, 1, 1, 3, 0.4)
    sparse = compress_weight(weight * mask)
    assert sparse.nnz == int(mask.sum())
    assert torch.equal(sparse.to_dense(), weight * mask)


def test_compressed_form_is_per_output_channel_in_tap_order():
    _, weight, mask, _ = conv_case(1, 3, 4, 1, 1, 3, 0.5, seed=3)
    sparse = compress_weight(weight, mask)
    assert sparse.shape == (4, 3, 3, 3) and sparse.kernel_size == (3, 3)
    assert sparse.row_ptr.tolist() == [0] + mask.reshape(4, -1).sum(1).cumsum(0).tolist()
    for c in range(4):
        taps = sparse.taps[sparse.row_ptr[c]:sparse.row_ptr[c + 1]].long()
        assert torch.equal(taps, mask[c].reshape(-1).nonzero().reshape(-1))
        assert torch.equal(sparse.values[sparse.row_ptr[c]:sparse.row_ptr[c + 1]], weight[c].reshape(-1)[taps])
    assert torch.equal(sparse.to_dense(), weight * mask)


def test_threads_do_not_change_a_bit(cpu_isa_path):
    x, weight, mask, b = conv_case(4, 32, 48, 16, 16, 3, 0.3)
    sparse = compress_weight(weight, mask)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            with torch.no_grad():
                results.append(sparse_conv2d(x, sparse, b, 1, 1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_non_contiguous_input_is_made_contiguous():
    x, weight, mask, b = conv_case(2, 6, 5, 12, 12, 3, 0.5)
    want = check_conv(x, weight, mask, b, 1, 1)
    sparse = compress_weight(weight, mask)
    with torch.no_grad():
        for view in (x.transpose(2, 3).contiguous().transpose(2, 3), x.to(memory_format=torch.channels_last),
                     torch.cat([x, x], dim=1)[:, ::2]):
            assert not view.is_contiguous()
            torch.testing.assert_close(sparse_conv2d(view, sparse, b, 1, 1), F.conv2d(view, weight * mask, b, 1, 1),
                                       **TOL)
        torch.testing.assert_close(sparse_conv2d(x, sparse, b[::1].clone(), 1, 1), want, **TOL)


def test_one_weight_serves_several_input_sizes(cpu_isa_path):
    _, weight, mask, b = conv_case(1, 4, 3, 1, 1, 3, 0.5)
    sparse = compress_weight(weight, mask)
    for size in (8, 28, 8, 5, 28, 32, 16, 4, 7, 9, 10, 11, 8):  # more sizes than the plan cache holds
        x = torch.randn(2, 4, size, size)
        for stride in (1, 2):
            with torch.no_grad():
                torch.testing.assert_close(sparse_conv2d(x, sparse, b, stride, 1),
                                           F.conv2d(x, weight * mask, b, stride, 1), **TOL)


def test_empty_batch():
    x, weight, mask, b = conv_case(1, 4, 3, 8, 8, 3, 0.5)
    with torch.no_grad():
        got = sparse_conv2d(x[:0], compress_weight(weight, mask), b, 1, 1)
    assert got.shape == (0, 3, 8, 8)


def _conv_inputs(model, x, t):
    """Every Conv2d of ``model`` with the input it sees in one forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0])))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x, t)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("model_name,size,overrides", [
    ("mnist", 28, {}),
    ("digits", 8, {}),
    ("cifar10", 28, dict(in_channels=1, image_size=28, ch=16, norm_groups=8)),  # 28 padded to 32 inside
    ("cifar10", 32, dict(ch=16, norm_groups=8)),
])
def test_every_conv_of_the_presets(model_name, size, overrides, one_thread, cpu_isa_path):
    model = build_model(model_name, **overrides).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.config["in_channels"], size, size, generator=gen)
    for conv, inp in _conv_inputs(model, x, torch.tensor([3, 500])):
        mask = torch.rand(conv.weight.shape, generator=gen) < 0.1
        check_conv(inp, conv.weight.detach(), mask, conv.bias.detach(), conv.stride[0], conv.padding[0])


def test_unet_with_the_28_padding_sees_32():
    model = UNet(in_channels=1, image_size=28, ch=16, ch_mult=(1, 2, 2, 2), norm_groups=8)
    sizes = {inp.shape[-1] for _, inp in _conv_inputs(model, torch.randn(1, 1, 28, 28), torch.tensor([1]))}
    assert sizes == {32, 16, 8, 4}


@pytest.mark.parametrize("batch", [1, 8, 13, 64])
def test_linear_matches_torch(batch, cpu_isa_path):
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 512, generator=gen)
    weight = torch.randn(256, 512, generator=gen) / 512**0.5
    mask = torch.rand(256, 512, generator=gen) < 0.1
    b = torch.randn(256, generator=gen)
    sparse = compress_weight(weight, mask)
    with torch.no_grad():
        torch.testing.assert_close(sparse_linear(x, sparse, b), F.linear(x, weight * mask, b), **TOL)
        torch.testing.assert_close(sparse_linear(x, sparse), F.linear(x, weight * mask), **TOL)
        torch.testing.assert_close(sparse_linear_reference(x, sparse, b), F.linear(x, weight * mask, b), **TOL)


def test_linear_leading_dimensions_empty_rows_and_odd_sizes(cpu_isa_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, generator=gen)
    weight = torch.randn(5, 7, generator=gen)
    mask = torch.rand(5, 7, generator=gen) < 0.5
    mask[1] = False
    b = torch.randn(5, generator=gen)
    with torch.no_grad():
        got = sparse_linear(x, compress_weight(weight, mask), b)
        assert got.shape == (2, 3, 5)
        torch.testing.assert_close(got, F.linear(x, weight * mask, b), **TOL)
        assert torch.equal(got[..., 1], torch.full_like(got[..., 1], float(b[1])))
        assert sparse_linear(x[:0], compress_weight(weight, mask), b).shape == (0, 3, 5)
        x_t = torch.randn(7, 4, generator=gen).t()  # non-contiguous
        torch.testing.assert_close(sparse_linear(x_t, compress_weight(weight, mask), b),
                                   F.linear(x_t, weight * mask, b), **TOL)


def test_reference_is_the_dense_op():
    x, weight, mask, b = conv_case(2, 5, 4, 9, 9, 3, 0.4)
    sparse = compress_weight(weight, mask)
    assert torch.equal(sparse_conv2d_reference(x, sparse, b, 2, 1), F.conv2d(x, weight * mask, b, 2, 1))


def test_bad_arguments_name_the_argument():
    x, weight, mask, b = conv_case(2, 4, 3, 8, 8, 3, 0.5)
    sparse = compress_weight(weight, mask)
    with torch.no_grad():
        with pytest.raises(TypeError, match="x must have dtype torch.float32"):
            sparse_conv2d(x.double(), sparse, b, 1, 1)
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            sparse_conv2d(x.numpy(), sparse, b, 1, 1)
        with pytest.raises(ValueError, match="x is on meta but weight is on cpu"):
            sparse_conv2d(x.to("meta"), sparse, b, 1, 1)
        with pytest.raises(ValueError, match=r"x must have shape \[N, 4, H, W\]"):
            sparse_conv2d(x[:, :3], sparse, b, 1, 1)
        with pytest.raises(ValueError, match=r"x must have shape \[N, 4, H, W\]"):
            sparse_conv2d(x[0], sparse, b, 1, 1)
        with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
            sparse_conv2d(x[:, :, :1, :1], sparse, b, 1, 0)
        with pytest.raises(TypeError, match="weight must be a SparseWeight"):
            sparse_conv2d(x, weight, b, 1, 1)
        with pytest.raises(ValueError, match=r"weight must be a compressed conv"):
            sparse_conv2d(x, compress_weight(torch.ones(3, 4)), b, 1, 1)
        with pytest.raises(ValueError, match=r"weight must be a compressed linear"):
            sparse_linear(x, sparse, b)
        with pytest.raises(ValueError, match=r"bias has shape \(4,\)"):
            sparse_conv2d(x, sparse, torch.zeros(4), 1, 1)
        with pytest.raises(TypeError, match="bias must have dtype"):
            sparse_conv2d(x, sparse, b.double(), 1, 1)
        with pytest.raises(ValueError, match="stride must be >= 1"):
            sparse_conv2d(x, sparse, b, 0, 1)
        with pytest.raises(TypeError, match="stride must be an int"):
            sparse_conv2d(x, sparse, b, (1, 1), 1)
        with pytest.raises(TypeError, match="padding must be an int"):
            sparse_conv2d(x, sparse, b, 1, True)
        with pytest.raises(ValueError, match="padding must be >= 0"):
            sparse_conv2d(x, sparse, b, 1, -1)
        with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 7\]"):
            sparse_linear(torch.zeros(2, 6), compress_weight(torch.ones(3, 7)))
    with pytest.raises(ValueError, match="x requires grad"):
        sparse_conv2d(x.requires_grad_(), sparse, b, 1, 1)
    with pytest.raises(TypeError, match="weight must have dtype torch.float32"):
        compress_weight(weight.double(), mask)
    with pytest.raises(ValueError, match="mask has shape"):
        compress_weight(weight, mask[:1])
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        compress_weight(weight, mask.float())
    with pytest.raises(ValueError, match="weight must be a non-empty conv"):
        compress_weight(torch.ones(2, 3, 4))


def _plan_row(**changes):
    """The plan row (csrc/sparse_conv.h) of a 1x1 conv 2 -> 3 over one 8x8 image read in place."""
    fields = dict(n=1, ci=2, h=8, w=8, co=3, unit_rows=1, row_len=64, in_row_stride=0, out_row_stride=0, out_pitch=64,
                  out_image=192, direct=1, plane_floats=64, pad_rows=0, pad_cols=0, col_step=1, slab_rows=8,
                  slab_pitch=8, group=1)
    fields.update(changes)
    return torch.tensor(list(fields.values()), dtype=torch.int64)


def test_native_entry_point_computes_and_raises_instead_of_aborting():
    x, y = torch.randn(1, 2, 8, 8), torch.empty(1, 3, 8, 8)
    row_ptr, offsets, values = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 64, 0], dtype=torch.int32), torch.randn(3)
    keep = []

    def call(plan=None, rows=None, width=2, table_rows=None, threads=1):
        plan = _plan_row() if plan is None else plan
        keep.append(plan)
        entries = [(x.data_ptr(), x.numel()), (0, 0), (y.data_ptr(), y.numel()), (row_ptr.data_ptr(), 4),
                   (offsets.data_ptr(), 3), (values.data_ptr(), 3), (0, 0), (plan.data_ptr(), plan.numel())]
        table = torch.tensor(entries if table_rows is None else table_rows(entries), dtype=torch.int64)
        keep.append(table)
        _C.sparse_conv2d_cpu(table.data_ptr(), table.shape[0] if rows is None else rows, width, threads)

    call()
    want = torch.stack([values[0] * x[0, 0], values[1] * x[0, 1], values[2] * x[0, 0]])[None]
    torch.testing.assert_close(y, want)
    with pytest.raises(ValueError, match="2 columns"):
        call(width=3)
    with pytest.raises(ValueError, match="8 rows"):
        call(rows=7)
    with pytest.raises(ValueError, match="the plan must hold"):
        call(plan=_plan_row()[:-1])
    with pytest.raises(ValueError, match="plan sizes out of range"):
        call(plan=_plan_row(ci=0))
    with pytest.raises(ValueError, match="read in place must be one flat input plane"):
        call(plan=_plan_row(h=2, w=2, row_len=4, plane_floats=4, out_pitch=4, out_image=12))
    with pytest.raises(ValueError, match="input size mismatch"):
        call(table_rows=lambda e: [(e[0][0], 127)] + e[1:])
    with pytest.raises(ValueError, match="an offset reads outside"):
        offsets[1] = 65
        try:
            call()
        finally:
            offsets[1] = 64
    with pytest.raises(ValueError, match="the workspace is too small"):
        call(plan=_plan_row(direct=0, plane_floats=100))
    with pytest.raises(ValueError, match="slab layout out of range"):
        call(plan=_plan_row(direct=0, plane_floats=100, slab_rows=9))
    with pytest.raises(ValueError, match="num_threads"):
        call(threads=0)


def test_sparse_weight_moves_between_devices_and_keeps_its_shape():
    _, weight, mask, _ = conv_case(1, 3, 2, 1, 1, 3, 0.5)
    sparse = compress_weight(weight, mask)
    moved = sparse.to("cpu")
    assert isinstance(moved, SparseWeight) and moved.shape == sparse.shape and moved.nnz == sparse.nnz
    assert moved.device == torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("n,ci,co,h,w,k,stride,padding", CONV_CASES[::3])
def test_cuda_conv_matches_torch(n, ci, co, h, w, k, stride, padding):
    x, weight, mask, b = conv_case(n, ci, co, h, w, k, density=0.3)
    x, weight, mask, b = x.cuda(), weight.cuda(), mask.cuda(), b.cuda()
    check_conv(x, weight, mask, b, stride, padding)


@pytest.mark.cuda
def test_cuda_linear_fully_pruned_channels_and_device_mismatch():
    x = torch.randn(13, 64, device="cuda")
    weight = torch.randn(32, 64, device="cuda")
    mask = torch.rand(32, 64, device="cuda") < 0.2
    mask[3] = False
    b = torch.randn(32, device="cuda")
    with torch.no_grad():
        got = sparse_linear(x, compress_weight(weight, mask), b)
        torch.testing.assert_close(got, F.linear(x, weight * mask, b), **TOL)
        assert torch.equal(got[:, 3], b[3].expand(13))
        with pytest.raises(ValueError, match="x is on cpu but weight is on cuda"):
            sparse_linear(x.cpu(), compress_weight(weight, mask), b)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_rows_of_every_width(stride, cpu_isa_path):
    # Rows shorter than a vector (partial), whole vectors, and tails that overlap the vector before them,
    # for each column phase count: up to three 16-float vectors (the AVX-512 path), each width also as
    # the narrow plane the flat tiles and the 8-float build take.
    for width in range(1, 50):
        x, weight, mask, b = conv_case(2, 3, 4, 5, width, 3, 0.5, seed=width)
        check_conv(x, weight, mask, b, stride, 1)


@pytest.mark.parametrize("n,ci,co,h,w,k,stride,padding", CONV_CASES[::2])
def test_groups_of_one_image_compute_the_same(n, ci, co, h, w, k, stride, padding, cpu_isa_path):
    # The kernel takes images a group at a time into its workspace: a budget of one image per group.
    x, weight, mask, b = conv_case(max(n, 3), ci, co, h, w, k, density=0.3)
    want = check_conv(x, weight, mask, b, stride, padding)
    with torch.no_grad(), workspace_budget(1):
        assert group_size(3, 1) == 1
        torch.testing.assert_close(sparse_conv2d(x, compress_weight(weight, mask), b, stride, padding), want, **TOL)


def test_the_workspace_budget_is_restored_and_checked():
    before = group_size(64, 1000)
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="nbytes"):
            with workspace_budget(bad):
                pass
    with pytest.raises(RuntimeError):
        with workspace_budget(1):
            assert group_size(64, 1000) == 1
            raise RuntimeError("a failing block")
    assert group_size(64, 1000) == before > 1
