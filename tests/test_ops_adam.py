"""pylth.ops.adam: the multi-tensor kernel against its torch reference, and argument checks."""
import pytest
import torch

from pylth.ops.adam import AdamHyper, adam_constants_table, adam_table, masked_adam_, masked_adam_reference_
from pylth.ops.dispatch import pack_table
from pylth.ops.native import native as _C
from pylth.ops.native import set_cpu_isa


def _case(shapes, seed, device="cpu", mask_dtype=torch.bool):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=gen) for s in shapes]
    gs = [torch.randn(s, generator=gen) for s in shapes]
    ms = [torch.randn(s, generator=gen) for s in shapes]
    vs = [torch.rand(s, generator=gen) for s in shapes]
    masks = [None if i % 3 == 2 else (torch.rand(s, generator=gen) < 0.5).to(mask_dtype)
             for i, s in enumerate(shapes)]
    for p, m, v, mask in zip(ps, ms, vs, masks):
        if mask is not None:
            for t in (p, m, v):
                t.masked_fill_(mask == 0, 0)
    move = lambda ts: [None if t is None else t.to(device) for t in ts]  # noqa: E731
    return move(ps), move(gs), move(ms), move(vs), move(masks)


def _hypers(n):
    # Every tensor its own hyper-parameters and step count, as param groups and late params give.
    return [AdamHyper(lr=1e-3 * (i + 1), beta1=0.9 - 0.05 * (i % 2), beta2=0.999, eps=1e-8 * (i + 1),
                      weight_decay=0.01 * (i % 3), decoupled=bool(i % 2), step=1 + i) for i in range(n)]


def _clone(ts):
    return [None if t is None else t.clone() for t in ts]


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8])
def test_multi_tensor_kernel_matches_reference(mask_dtype):
    shapes = [(1,), (7,), (100003,), (65536,), (32769,), (0,), (5, 3, 3)]
    ps, gs, ms, vs, masks = _case(shapes, seed=0, mask_dtype=mask_dtype)
    hypers = _hypers(len(shapes))
    expected = [_clone(ps), _clone(ms), _clone(vs)]
    masked_adam_reference_(expected[0], gs, expected[1], expected[2], masks, hypers)
    masked_adam_(ps, gs, ms, vs, masks, hypers)
    for actual, want in zip((ps, ms, vs), expected):
        for a, w in zip(actual, want):
            torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-7)


def test_one_thread_and_many_give_identical_bits():
    shapes = [(100003,), (40000,)]
    results = []
    for threads in (1, 2):
        ps, gs, ms, vs, masks = _case(shapes, seed=1)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            masked_adam_(ps, gs, ms, vs, masks, _hypers(2))
        finally:
            torch.set_num_threads(old)
        results.append(ps + ms + vs)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_empty_call_is_a_no_op():
    masked_adam_([], [], [], [], [], [])


def test_bad_arguments_name_the_argument():
    ps, gs, ms, vs, masks = _case([(4,), (6,)], seed=2)
    h = _hypers(2)
    with pytest.raises(ValueError, match="grads has 1 entries but params has 2|params has 2 entries but grads"):
        masked_adam_(ps, gs[:1], ms, vs, masks, h)
    with pytest.raises(TypeError, match=r"params\[0\] must have dtype torch.float32"):
        masked_adam_([ps[0].double(), ps[1]], gs, ms, vs, masks, h)
    with pytest.raises(ValueError, match=r"exp_avgs\[1\] has shape"):
        masked_adam_(ps, gs, [ms[0], ms[0]], vs, masks, h)
    with pytest.raises(ValueError, match=r"grads\[0\] must be contiguous"):
        masked_adam_([torch.zeros(2, 2)] + ps[1:], [torch.zeros(2, 2).t()] + gs[1:],
                     [torch.zeros(2, 2)] + ms[1:], [torch.zeros(2, 2)] + vs[1:], [None, None], h)
    with pytest.raises(TypeError, match=r"masks\[0\] must have dtype"):
        masked_adam_(ps, gs, ms, vs, [torch.ones(4), None], h)
    with pytest.raises(TypeError, match=r"hypers\[1\] must be an AdamHyper"):
        masked_adam_(ps, gs, ms, vs, masks, [h[0], (1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)])
    with pytest.raises(ValueError, match=r"hypers\[0\].step must be >= 1"):
        masked_adam_(ps, gs, ms, vs, masks, [h[0]._replace(step=0), h[1]])
    with pytest.raises(TypeError, match="params must be a list or tuple"):
        masked_adam_(ps[0], gs, ms, vs, masks, h)


def _native_call(table, constants=None, num_threads=1):
    constants = torch.zeros((table.shape[0], 8), dtype=torch.float64) if constants is None else constants
    _C.masked_adam_cpu(table.data_ptr(), table.shape[0], table.shape[1], constants.data_ptr(), num_threads)


def test_native_entry_point_takes_its_table():
    # The table masked_adam_ builds, given straight to the entry point, is the step torch's Adam takes.
    p, g = torch.randn(10), torch.randn(10)
    m, v = torch.zeros(10), torch.zeros(10)
    want = p.clone().requires_grad_()
    want.grad = g.clone()
    torch.optim.Adam([want], lr=1e-2).step()
    h = AdamHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, step=1)
    _native_call(adam_table([p], [g], [m], [v], [None]), adam_constants_table([h]))
    torch.testing.assert_close(p, want.detach(), rtol=1e-6, atol=1e-7)


def test_native_entry_point_raises_instead_of_aborting():
    t = torch.zeros(3)
    row = [t.data_ptr(), t.data_ptr(), t.data_ptr(), t.data_ptr(), 0, 3]
    with pytest.raises(ValueError, match="masked_adam_cpu: the table must have 6 columns, got 5"):
        _native_call(pack_table([row[:5]], 5))
    with pytest.raises(ValueError, match="negative row count"):
        _C.masked_adam_cpu(0, -1, 6, 0, 1)
    with pytest.raises(ValueError, match="null table"):
        _C.masked_adam_cpu(0, 1, 6, 0, 1)
    with pytest.raises(ValueError, match="null consts table"):
        _C.masked_adam_cpu(pack_table([row], 6).data_ptr(), 1, 6, 0, 1)
    for column in range(4):  # param, grad, exp_avg, exp_avg_sq
        with pytest.raises(ValueError, match="null data address in row 1"):
            _native_call(pack_table([row, row[:column] + [0] + row[column + 1:]], 6))
    with pytest.raises(ValueError, match="negative element count in row 0"):
        _native_call(pack_table([row[:5] + [-1]], 6))
    with pytest.raises(ValueError, match="num_threads"):
        _native_call(pack_table([row], 6), num_threads=0)
    _native_call(pack_table([[0, 0, 0, 0, 0, 0]], 6))  # an empty tensor needs no addresses
    _native_call(pack_table([], 6))
    assert torch.equal(t, torch.zeros(3))  # none of the calls that raised touched the data


@pytest.mark.cuda
def test_cuda_kernel_matches_reference_including_unaligned_views():
    shapes = [(1,), (7,), (100003,), (65536,), (8193,), (0,), (5, 3, 3)]
    ps, gs, ms, vs, masks = _case(shapes, seed=3, device="cuda")
    # An offset view is not 16-byte aligned: the kernel must take its scalar path.
    base = [torch.zeros(1001, device="cuda") for _ in range(4)]
    views = [b[1:] for b in base]
    views[1].normal_()
    ps, gs, ms, vs = ps + [views[0]], gs + [views[1]], ms + [views[2]], vs + [views[3]]
    masks = masks + [(torch.arange(1000, device="cuda") % 3 == 0)]
    hypers = _hypers(len(ps))
    expected = [_clone(ps), _clone(ms), _clone(vs)]
    masked_adam_reference_(expected[0], gs, expected[1], expected[2], masks, hypers)
    masked_adam_(ps, gs, ms, vs, masks, hypers)
    torch.cuda.synchronize()
    for actual, want in zip((ps, ms, vs), expected):
        for a, w in zip(actual, want):
            torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cuda_many_tensors_span_several_launches():
    shapes = [(i * 37 + 1,) for i in range(100)]  # more tensors than one launch table holds
    ps, gs, ms, vs, masks = _case(shapes, seed=4, device="cuda")
    hypers = _hypers(len(shapes))
    expected = [_clone(ps), _clone(ms), _clone(vs)]
    masked_adam_reference_(expected[0], gs, expected[1], expected[2], masks, hypers)
    masked_adam_(ps, gs, ms, vs, masks, hypers)
    for a, w in zip(ps, expected[0]):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)


# ---- every CPU path (csrc/cpu_dispatch.h) against torch's own Adam ----

# Odd sizes around the vector widths (8 and 16 floats, the AVX-512 loop's 32-float step) and the
# kernel's 32768-element work items, so that every tail and chunk boundary is crossed.
PATH_SHAPES = [(1,), (7,), (15,), (16,), (17,), (31,), (32,), (33,), (47,), (65,), (1023,), (32769,), (3, 5, 7)]


def _torch_adam_steps(p0, grads, mask, steps, **hyper):
    """torch.optim.Adam/AdamW (single-tensor) on where(mask, grad, 0) from p0 with zeroed pruned entries."""
    p = torch.nn.Parameter(p0.clone())
    opt = (torch.optim.AdamW if hyper.pop("decoupled") else torch.optim.Adam)([p], foreach=False, **hyper)
    for g in grads[:steps]:
        p.grad = torch.where(mask, g, torch.zeros(())) if mask is not None else g.clone()
        opt.step()
    state = opt.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


@pytest.mark.parametrize("decoupled", [False, True])
def test_every_cpu_path_matches_torch_adam_on_tails_and_masks(cpu_isa_path, decoupled):
    gen = torch.Generator().manual_seed(7)
    hyper = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, decoupled=decoupled)
    for i, shape in enumerate(PATH_SHAPES):
        mask = None if i % 4 == 3 else torch.rand(shape, generator=gen) < 0.6
        p0 = torch.randn(shape, generator=gen)
        if mask is not None:
            p0[~mask] = 0
        grads = [torch.randn(shape, generator=gen) for _ in range(3)]
        if mask is not None:  # whatever a pruned entry's gradient holds, it stays exactly 0
            for g in grads:
                g[~mask] = float("nan")
        p, m, v = p0.clone(), torch.zeros(shape), torch.zeros(shape)
        for step, g in enumerate(grads, start=1):
            h = AdamHyper(lr=hyper["lr"], beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, decoupled=decoupled,
                          step=step)
            masked_adam_([p], [g], [m], [v], [mask], [h])
        want = _torch_adam_steps(p0, grads, mask, 3, **dict(hyper))
        for got, expected in zip((p, m, v), want):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
            if mask is not None:
                assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))


def test_every_cpu_path_gives_the_same_bits(cpu_isa_path):
    # Same operations in the same order, IEEE sqrt and division, no FMA: the paths agree bit for bit.
    ps, gs, ms, vs, masks = _case(PATH_SHAPES, seed=11)
    hypers = _hypers(len(PATH_SHAPES))
    masked_adam_(ps, gs, ms, vs, masks, hypers)
    set_cpu_isa("baseline")  # the fixture restores the path
    base = _case(PATH_SHAPES, seed=11)
    masked_adam_(base[0], gs, base[2], base[3], masks, hypers)
    for got, expected in zip(ps + ms + vs, base[0] + base[2] + base[3]):
        assert torch.equal(got, expected)
