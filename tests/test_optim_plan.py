"""MaskedAdam's kept launch plan follows every change between steps (oracle: torch.optim.Adam on grad * mask).

Each test changes something the plan's kernel table was built from, between two steps, and does the
same to a torch.optim.Adam run on masked copies; a stale plan would write through old addresses.
"""
import copy
import warnings

import pytest
import torch

from pylth.ops.adam import GRAD_COLUMN, adam_step_constants
from pylth.ops.native import warn_fallback
from pylth.optim import MaskedAdam

SHAPES = [(5, 3), (7,), (2, 3, 4)]
HP = dict(lr=1e-2, weight_decay=0.01)


class Pair:
    """A MaskedAdam run and torch.optim.Adam on masked copies, changed in step."""

    def __init__(self, shapes=SHAPES, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        weights = [torch.randn(s, generator=self.gen) for s in shapes]
        self.masks = [torch.rand(s, generator=self.gen) < 0.5 for s in shapes]
        self.ours = [torch.nn.Parameter(w.clone()) for w in weights]
        self.theirs = [torch.nn.Parameter(w * m) for w, m in zip(weights, self.masks)]
        self.opt = MaskedAdam(self.ours, **HP)
        self.ref = torch.optim.Adam(self.theirs, foreach=False, **HP)
        for p, m in zip(self.ours, self.masks):
            self.opt.set_mask(p, m)

    def set_mask(self, i, mask):
        self.opt.set_mask(self.ours[i], mask)
        self.masks[i] = torch.ones_like(self.masks[i]) if mask is None else mask.clone()
        q = self.theirs[i]
        with torch.no_grad():
            for t in [q] + ([self.ref.state[q]["exp_avg"], self.ref.state[q]["exp_avg_sq"]] if q in self.ref.state else []):
                t.masked_fill_(~self.masks[i], 0)

    def step(self, skip=(), transpose=()):
        for i, (p, q, m) in enumerate(zip(self.ours, self.theirs, self.masks)):
            if i in skip:
                p.grad = q.grad = None
                continue
            g = torch.randn(p.shape, generator=self.gen)
            if i in transpose:  # same values, non-contiguous layout
                g = g.t().contiguous().t()
            p.grad, q.grad = g, (g * m).contiguous()
        self.opt.step()
        self.ref.step()

    def check(self):
        for p, q in zip(self.ours, self.theirs):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
        for p, m in zip(self.ours, self.masks):
            assert (p.detach()[~m] == 0).all()


def test_plan_keeps_its_tables_and_rewrites_only_grads_and_constants():
    # The host-overhead property: steps over the same params reuse the plan's tables; each step writes
    # its grads' addresses (new tensors every step here) and its step's constants into them.
    run = Pair()
    run.step()
    plan = run.opt._plan
    (batch,) = plan.batches
    table, constants, kept = batch.table, batch.constants, batch.table.clone()
    for step in (2, 3):
        run.step()
        assert run.opt._plan is plan and batch.table is table and batch.constants is constants
        grads = [p.grad.data_ptr() for p in run.ours]
        assert table[:, GRAD_COLUMN].tolist() == grads
        others = [c for c in range(table.shape[1]) if c != GRAD_COLUMN]
        assert torch.equal(table[:, others], kept[:, others])
        want = adam_step_constants(run.opt._hyper(run.opt.param_groups[0], step))
        assert constants.tolist() == [list(want)] * len(SHAPES)
    run.check()


def test_mask_changes_between_steps():
    run = Pair()
    run.step()
    run.step()
    run.set_mask(0, torch.rand(SHAPES[0], generator=run.gen) < 0.3)
    run.step()
    run.set_mask(1, None)
    run.step()
    run.check()


def test_param_data_replaced_by_another_storage():
    run = Pair()
    run.step()
    for i in (0, 2):
        fresh = torch.randn(SHAPES[i], generator=run.gen) * run.masks[i]
        run.ours[i].data = fresh.clone()
        run.theirs[i].data = fresh.clone()
    run.step()
    run.step()
    run.check()


def test_param_data_of_another_shape_raises_instead_of_writing_out_of_bounds():
    run = Pair()
    run.step()
    run.ours[1].data = torch.zeros(11)
    with pytest.raises(ValueError, match="has shape"):
        run.opt.step()


def test_grad_data_of_another_shape_raises():
    run = Pair()
    run.step()
    run.ours[1].grad.data = torch.zeros(3)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        run.opt.step()


def test_added_param_group_is_stepped():
    run = Pair()
    run.step()
    w = torch.randn(4, 2, generator=run.gen)
    p, q = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    run.opt.add_param_group({"params": [p], "lr": 3e-2})
    run.ref.add_param_group({"params": [q], "lr": 3e-2})
    run.ours.append(p)
    run.theirs.append(q)
    run.masks.append(torch.ones(4, 2, dtype=torch.bool))
    run.step()
    run.step()
    run.check()


def test_grad_that_disappears_or_turns_non_contiguous():
    run = Pair()
    run.step()
    run.step(skip=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference fallback's one-time warning
        run.step(transpose=(0,))
    run.step()
    run.step(skip=(0, 2))
    run.step()
    run.check()
    assert [int(run.opt.state[p]["step"]) for p in run.ours] == [5, 5, 5]


def test_replaced_moment_tensor_is_used():
    run = Pair()
    run.step()
    run.step()
    p, q = run.ours[2], run.theirs[2]
    run.opt.state[p]["exp_avg"] = torch.zeros_like(p)
    run.ref.state[q]["exp_avg"].zero_()
    run.step()
    run.check()


def test_load_state_dict_rewinds_mid_run():
    run = Pair()
    run.step()
    # state_dict() aliases the live state: copy it, as saving to a file would.
    saved = copy.deepcopy({"opt": run.opt.state_dict(), "params": [p.detach() for p in run.ours],
                           "ref": run.ref.state_dict(), "ref_params": [q.detach() for q in run.theirs]})
    run.step()
    run.step()
    with torch.no_grad():
        for p, q, sp, sq in zip(run.ours, run.theirs, saved["params"], saved["ref_params"]):
            p.copy_(sp)
            q.copy_(sq)
    run.opt.load_state_dict(saved["opt"])
    run.ref.load_state_dict(saved["ref"])
    run.step()
    run.check()
    assert int(run.opt.state[run.ours[0]]["step"]) == 2


def test_params_whose_device_has_no_kernel_step_on_the_reference(monkeypatch):
    # CUDA params in a build without CUDA go to the reference for their device, not their layout; the
    # plan must accept them step after step (it once rebuilt, and rejected, itself on every step).
    monkeypatch.setattr("pylth.optim.masked_adam.runs_natively", lambda device: False)
    monkeypatch.setattr("pylth.optim.plan.runs_natively", lambda device: False)
    run = Pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference's one-time fallback warning
        try:
            for _ in range(3):
                run.step()
        finally:
            warn_fallback.cache_clear()  # so that later tests still see the warning once
    run.check()
    assert run.opt._plan.batches == [] and len(run.opt._plan.reference) == len(SHAPES)


@pytest.mark.parametrize("change, error, match", [
    (lambda st: st["exp_avg"].resize_(3), ValueError, r"exp_avgs\[1\] has shape"),
    (lambda st: st["exp_avg_sq"].set_(st["exp_avg_sq"].untyped_storage(), 0, (7, 1)), ValueError,
     r"exp_avg_sqs\[1\] has shape"),
    (lambda st: setattr(st["exp_avg"], "data", st["exp_avg"].data.view(torch.int32)), TypeError, r"exp_avgs\[1\]"),
    (lambda st: st["mask"].resize_(2), ValueError, r"masks\[1\] has shape"),
])
def test_state_tensor_changed_in_place_at_the_same_address_raises(change, error, match):
    # The same object at the same address, but another shape or dtype: a plan that trusted the address
    # would hand the kernel a buffer of another size (after a free, the address can even be reused).
    run = Pair()
    run.step()
    state = run.opt.state[run.ours[1]]
    address = state["exp_avg"].data_ptr(), state["exp_avg_sq"].data_ptr(), state["mask"].data_ptr()
    change(state)
    assert (state["exp_avg"].data_ptr(), state["exp_avg_sq"].data_ptr(), state["mask"].data_ptr()) == address
    with pytest.raises(error, match=match):
        run.opt.step()


def test_param_listed_twice_raises():
    # torch.optim only warns about a duplicate within a group; stepping it twice in one launch would race.
    p = torch.nn.Parameter(torch.randn(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = MaskedAdam([p, p])
    p.grad = torch.randn(5)
    with pytest.raises(ValueError, match=r"param_groups\[0\] lists a param that appears earlier"):
        opt.step()
    run = Pair()
    run.step()
    run.opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))]})
    run.opt.param_groups[1]["params"].append(run.ours[0])  # behind add_param_group's back
    with pytest.raises(ValueError, match=r"param_groups\[1\] lists a param"):
        run.opt.step()


def test_masked_adam_for_holds_each_named_mask_and_names_a_stranger():
    from pylth.optim import masked_adam_for
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    mask = torch.rand(5, 6) > 0.5
    optimizer = masked_adam_for(net, {"0.weight": mask}, lr=0.1)
    net(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    assert torch.equal(net[0].weight[~mask], torch.zeros(int((~mask).sum())))  # pruned: exactly zero
    assert bool((net[0].weight[mask] != 0).all()) and bool((net[1].weight != 0).all())
    with pytest.raises(KeyError, match="'2.weight'"):
        masked_adam_for(net, {"2.weight": mask})
