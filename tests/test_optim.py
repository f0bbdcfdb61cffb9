"""MaskedAdam against torch.optim.Adam/AdamW run on grad * mask (the outside oracle)."""
import io

import pytest
import torch

from pylth.optim import MaskedAdam

SIZES = [(1,), (7,), (100003,), (3, 5, 7)]


def _make(shape, seed, density=0.5, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen)
    mask = torch.rand(shape, generator=gen) < density
    return weight.to(device), mask.to(device)


def _grads(shape, steps, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed + 1000)
    return [torch.randn(shape, generator=gen).to(device) for _ in range(steps)]


def _oracle(weight, mask, grads, **hp):
    """torch's Adam/AdamW on a masked copy with grads * mask."""
    decoupled = hp.pop("decoupled_weight_decay", False)
    p = torch.nn.Parameter((weight * mask).clone())
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([p], foreach=False, **hp)
    for g in grads:
        p.grad = g * mask
        opt.step()
    return p.detach(), opt.state[p]


def _run_masked(weight, mask, grads, **hp):
    p = torch.nn.Parameter(weight.clone())
    opt = MaskedAdam([p], **hp)
    opt.set_mask(p, mask)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt.state[p], opt


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("hp", [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=3e-3, weight_decay=0.05, decoupled_weight_decay=True),
], ids=["adam", "adam-l2", "adamw"])
def test_matches_torch_adam_on_masked_grads(shape, hp):
    weight, mask = _make(shape, seed=len(shape) + shape[0])
    grads = _grads(shape, 5, seed=3)
    expected, expected_state = _oracle(weight, mask, grads, **dict(hp))
    actual, state, _ = _run_masked(weight, mask, grads, **hp)
    _assert_close(actual, expected)
    _assert_close(state["exp_avg"], expected_state["exp_avg"])
    _assert_close(state["exp_avg_sq"], expected_state["exp_avg_sq"])
    assert int(state["step"]) == 5


def test_unmasked_params_are_plain_adam_and_adamw():
    weight, _ = _make((100003,), seed=1)
    grads = _grads((100003,), 4, seed=1)
    for decoupled in (False, True):
        p, q = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(weight.clone())
        opt = MaskedAdam([p], lr=1e-2, weight_decay=0.1, decoupled_weight_decay=decoupled)
        ref = (torch.optim.AdamW if decoupled else torch.optim.Adam)([q], lr=1e-2, weight_decay=0.1, foreach=False)
        for g in grads:
            p.grad, q.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
        assert opt.get_mask(p) is None
        _assert_close(p.detach(), q.detach())


def test_masked_entries_stay_exactly_zero_even_with_nan_and_inf_grads():
    weight, mask = _make((100003,), seed=2, density=0.3)
    p = torch.nn.Parameter(weight.clone())
    opt = MaskedAdam([p], lr=1e-1, weight_decay=0.5, decoupled_weight_decay=True)
    opt.set_mask(p, mask)
    state = opt.state[p]
    clean = []
    for k, g in enumerate(_grads((100003,), 4, seed=2)):
        poisoned = g.clone()
        poisoned[~mask] = [float("nan"), float("inf"), -float("inf"), 1e30][k]
        p.grad = poisoned
        opt.step()
        clean.append(g)
        for t in (p.detach(), state["exp_avg"], state["exp_avg_sq"]):
            assert torch.equal(t[~mask], torch.zeros(int((~mask).sum())))
            assert torch.isfinite(t).all()
    expected, _ = _oracle(weight, mask, clean, lr=1e-1, weight_decay=0.5, decoupled_weight_decay=True)
    _assert_close(p.detach(), expected)


def test_set_mask_zeroes_param_and_moments_at_once_and_none_removes_it():
    weight, mask = _make((7, 3), seed=4)
    p = torch.nn.Parameter(weight.clone())
    opt = MaskedAdam([p], lr=1e-2)
    p.grad = torch.ones_like(p)
    opt.step()
    assert (opt.state[p]["exp_avg"] != 0).all()
    opt.set_mask(p, mask)
    assert torch.equal(opt.get_mask(p), mask) and opt.get_mask(p).dtype == torch.bool
    for t in (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]):
        assert (t[~mask] == 0).all() and (t[mask] != 0).all()
    opt.set_mask(p, None)
    assert opt.get_mask(p) is None
    opt.step()
    assert (p.detach()[~mask] != 0).all()  # unmasked again: the pruned entries train


def test_mask_is_copied_not_aliased():
    weight, mask = _make((7,), seed=5)
    p = torch.nn.Parameter(weight.clone())
    opt = MaskedAdam([p])
    opt.set_mask(p, mask)
    mask.fill_(True)
    assert not opt.get_mask(p).all()


@pytest.mark.parametrize("decoupled", [False, True])
def test_state_dict_round_trip_mid_run(decoupled):
    hp = dict(lr=5e-3, weight_decay=0.02, decoupled_weight_decay=decoupled)
    weight, mask = _make((100003,), seed=6)
    grads = _grads((100003,), 6, seed=6)
    expected, _ = _oracle(weight, mask, grads, **dict(hp))

    p = torch.nn.Parameter(weight.clone())
    opt = MaskedAdam([p], **hp)
    opt.set_mask(p, mask)
    for g in grads[:3]:
        p.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"param": p.detach(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    q = torch.nn.Parameter(saved["param"].clone())
    resumed = MaskedAdam([q], lr=1.0)  # hyper-parameters come back from the state_dict
    resumed.load_state_dict(saved["opt"])
    restored = resumed.get_mask(q)
    assert restored.dtype == torch.bool and torch.equal(restored, mask)
    for g in grads[3:]:
        q.grad = g.clone()
        resumed.step()
    _assert_close(q.detach(), expected)
    assert (q.detach()[~mask] == 0).all()


def test_param_groups_and_lr_scheduler_match_torch():
    gen = torch.Generator().manual_seed(7)
    shapes = [(100, 3), (7,), (1,)]
    weights = [torch.randn(s, generator=gen) for s in shapes]
    masks = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    ours = [torch.nn.Parameter(w * m) for w, m in zip(weights, masks)]
    theirs = [torch.nn.Parameter(w * m) for w, m in zip(weights, masks)]

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 1e-1, "weight_decay": 0.3}]

    opt = MaskedAdam(groups(ours), lr=1e-2)
    ref = torch.optim.Adam(groups(theirs), lr=1e-2, foreach=False)
    for p, m in zip(ours, masks):
        opt.set_mask(p, m)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: min(1.0, (it + 1) / 3))
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda it: min(1.0, (it + 1) / 3))
    for _ in range(5):
        g = [torch.randn(s, generator=gen) for s in shapes]
        for p, q, gi, m in zip(ours, theirs, g, masks):
            p.grad, q.grad = gi.clone(), gi * m
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    for p, q in zip(ours, theirs):
        _assert_close(p.detach(), q.detach())


def test_params_without_grad_are_skipped():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(5))
    opt = MaskedAdam([p, q])
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(5)) and q not in opt.state


def test_non_float32_params_use_the_reference_and_match_torch():
    weight, mask = _make((7,), seed=8)
    weight = weight.double()
    grads = [g.double() for g in _grads((7,), 3, seed=8)]
    p = torch.nn.Parameter(weight.clone())
    opt = MaskedAdam([p], lr=1e-2)
    opt.set_mask(p, mask)
    with pytest.warns(RuntimeWarning, match="reference"):
        for g in grads:
            p.grad = g.clone()
            opt.step()
    expected, _ = _oracle(weight, mask, grads, lr=1e-2)
    torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"),
    (dict(eps=-1e-8), "epsilon"),
    (dict(betas=(1.0, 0.999)), "beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), "beta parameter at index 1"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_invalid_hyper_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedAdam([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_bad_masks_raise():
    p = torch.nn.Parameter(torch.ones(3, 4))
    opt = MaskedAdam([p])
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        opt.set_mask(p, torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"mask has shape \(12,\)"):
        opt.set_mask(p, torch.ones(12, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        opt.set_mask(p, [[True] * 4] * 3)
    with pytest.raises(ValueError, match="not one of this optimizer's parameters"):
        opt.set_mask(torch.nn.Parameter(torch.ones(3, 4)), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not one of this optimizer's parameters"):
        opt.get_mask(torch.ones(3, 4))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="mask is on cuda"):
            opt.set_mask(p, torch.ones(3, 4, dtype=torch.bool, device="cuda"))


def test_non_contiguous_mask_is_accepted_and_stored_contiguous():
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = MaskedAdam([p])
    mask = (torch.arange(12).reshape(3, 4) % 2 == 0).t()
    opt.set_mask(p, mask)
    assert opt.get_mask(p).is_contiguous() and torch.equal(opt.get_mask(p), mask)
    assert torch.equal(p.detach() != 0, mask)


@pytest.mark.cuda
@pytest.mark.parametrize("decoupled", [False, True])
def test_cuda_matches_torch_and_keeps_zeros(decoupled):
    hp = dict(lr=3e-3, weight_decay=0.05, decoupled_weight_decay=decoupled)
    shapes = [(1,), (7,), (100003,), (33, 17, 3)]
    weights_masks = [_make(s, seed=i) for i, s in enumerate(shapes)]
    grads = [_grads(s, 4, seed=i) for i, s in enumerate(shapes)]
    ps = [torch.nn.Parameter(w.cuda()) for w, _ in weights_masks]
    opt = MaskedAdam(ps, **hp)
    for p, (_, m) in zip(ps, weights_masks):
        opt.set_mask(p, m.cuda())
    for k in range(4):
        for p, g, (_, m) in zip(ps, grads, weights_masks):
            poisoned = g[k].clone()
            poisoned[~m] = float("nan")
            p.grad = poisoned.cuda()
        opt.step()
    for p, g, (w, m) in zip(ps, grads, weights_masks):
        expected, _ = _oracle(w, m, g, **dict(hp))
        torch.testing.assert_close(p.detach().cpu(), expected, rtol=1e-5, atol=1e-6)
        assert (p.detach().cpu()[~m] == 0).all()
        assert (opt.state[p]["exp_avg_sq"].cpu()[~m] == 0).all()
