"""The round loop's decisions, with the trainer and FID replaced by fast stand-ins: which weights each
strategy prunes, what each --reset starts from, stopping, extending and refusing runs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pylth.foundations.io import torch_load
from pylth.lottery import ConfigMismatchError, RunDirectory, find_ticket
from pylth.lottery.run_reader import fresh_model, reinit_seed
from pylth.pruning import module_groups

from test_lottery_helpers import fake, file_digests, tiny_spec  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(fake, tmp_path, name="run", **lottery):
    out = str(tmp_path / name)
    return out, find_ticket(tiny_spec(str(tmp_path / "cache"), **lottery), out, log=lambda _m: None, parts=fake.parts)


def masks_of(out, k):
    return torch_load(os.path.join(out, f"round_{k:02d}", "mask.pt"))


def trained(out, k):
    return torch_load(os.path.join(out, f"round_{k:02d}", "model.pt"))


def assert_smallest_pruned(weights, old_masks, new_masks):
    """Among the previously active entries, every pruned |w| is <= every kept |w| (numpy oracle)."""
    w = np.concatenate([weights[n].abs().numpy().ravel() for n in new_masks])
    old = np.concatenate([old_masks[n].numpy().ravel() for n in new_masks])
    new = np.concatenate([new_masks[n].numpy().ravel() for n in new_masks])
    pruned, kept = w[old & ~new], w[new]
    assert pruned.size and pruned.max() <= kept.min()


def test_layerwise_prunes_p_plus_j_q_of_each_module_by_trained_magnitude(fake, tmp_path):
    out, records = run(fake, tmp_path, strategy="layerwise", max_rounds=1, prune_ratio=0.2, increment=0.05)
    before, after, weights = masks_of(out, 0), masks_of(out, 1), trained(out, 0)
    groups = module_groups(fresh_model(tiny_spec("").model, 0))
    for j, (_, names) in enumerate(groups):
        ratio = min(0.2 + 0.05 * j, 0.95)
        for n in names:
            total = before[n].numel()
            assert int(after[n].sum()) == total - int(np.floor(ratio * total + 0.5)), n
            assert_smallest_pruned(weights, {n: before[n]}, {n: after[n]})
    module = records[1]["module_sparsity"]
    assert list(module.values()) == sorted(module.values()), "downstream modules are pruned more"


def test_global_prunes_p_of_all_remaining_weights_ranked_together(fake, tmp_path):
    out, records = run(fake, tmp_path, strategy="global", max_rounds=2)
    for k in (1, 2):
        old, new = masks_of(out, k - 1), masks_of(out, k)
        active = sum(int(m.sum()) for m in old.values())
        assert sum(int(m.sum()) for m in new.values()) == active - int(np.floor(0.2 * active + 0.5))
        assert_smallest_pruned(trained(out, k - 1), old, new)


def test_random_prunes_as_many_as_layerwise_but_other_weights(fake, tmp_path):
    layer_out, _ = run(fake, tmp_path, "layerwise", strategy="layerwise", max_rounds=1)
    random_out, _ = run(fake, tmp_path, "random", strategy="random", max_rounds=1)
    a, b = masks_of(layer_out, 1), masks_of(random_out, 1)
    assert all(int(a[n].sum()) == int(b[n].sum()) for n in a)
    assert any(not torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("reset", ["rewind", "init", "reinit"])
def test_every_round_starts_from_its_reset_weights_times_the_mask(fake, tmp_path, reset):
    out, _ = run(fake, tmp_path, reset=reset, max_rounds=2)
    spec = tiny_spec("", reset=reset)
    theta0 = fresh_model(spec.model, spec.train.seed).state_dict()
    assert all(torch.equal(fake[0]["state"][k], v) for k, v in theta0.items()), "round 0 starts from theta_0"
    assert fake[0]["start"] == 0 and fake[0]["masks"] is None
    for k in (1, 2):
        call, mask = fake[k], masks_of(out, k)
        if reset == "rewind":
            expected, start = torch_load(os.path.join(out, "rewind.pt")), spec.rewind_iteration
        elif reset == "init":
            expected, start = torch_load(os.path.join(out, "init.pt")), 0
            assert all(torch.equal(expected[n], v) for n, v in theta0.items())
        else:
            expected, start = fresh_model(spec.model, reinit_seed(spec.train.seed, k)).state_dict(), 0
            assert not torch.equal(expected["head.weight"], theta0["head.weight"])
        assert call["start"] == start and call["end"] == spec.train.iterations
        assert all(torch.equal(call["masks"][n].cpu(), mask[n]) for n in mask)
        for name, value in call["state"].items():
            want = expected[name] * mask[name] if name in mask else expected[name]
            assert torch.equal(value, want), (k, name)


def test_rewind_point_is_the_state_after_tau_steps(fake, tmp_path):
    out, _ = run(fake, tmp_path, max_rounds=0)
    spec = tiny_spec("")
    model = fresh_model(spec.model, spec.train.seed)
    gen = torch.Generator().manual_seed(1)  # the stand-in trainer's steps, replayed to iteration tau
    with torch.no_grad():
        for _ in range(spec.rewind_iteration):
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
    rewind = torch_load(os.path.join(out, "rewind.pt"))
    assert all(torch.equal(rewind[k], v) for k, v in model.state_dict().items())


def test_stops_at_the_target_sparsity(fake, tmp_path):
    _, records = run(fake, tmp_path, strategy="uniform", target_sparsity=0.3, max_rounds=10)
    assert [round(r["sparsity"], 3) for r in records] == [0.0, 0.2, 0.36]


def test_a_larger_max_rounds_extends_a_finished_run_without_rewriting_it(fake, tmp_path):
    out, first = run(fake, tmp_path, max_rounds=1)
    before = {p: d for p, d in file_digests(out).items() if p.startswith(("round_", "rewind"))}
    _, again = run(fake, tmp_path, max_rounds=1)
    assert again == first
    _, extended = run(fake, tmp_path, max_rounds=2)
    assert extended[:2] == first and extended[2]["round"] == 2
    after = file_digests(out)
    assert {p: after[p] for p in before} == before
    assert RunDirectory(out).read_config()["lottery"]["max_rounds"] == 2


def test_force_renames_a_mismatched_run_aside_instead_of_deleting_it(fake, tmp_path):
    out, _ = run(fake, tmp_path, max_rounds=1)
    before = file_digests(out)
    with pytest.raises(ConfigMismatchError, match="lottery.strategy"):
        run(fake, tmp_path, max_rounds=1, strategy="uniform")
    assert file_digests(out) == before
    spec = tiny_spec(str(tmp_path / "cache"), max_rounds=1, strategy="uniform")
    records = find_ticket(spec, out, force=True, log=lambda _m: None, parts=fake.parts)
    assert len(records) == 2 and RunDirectory(out).read_config()["lottery"]["strategy"] == "uniform"
    aside = [p for p in os.listdir(tmp_path) if p.startswith("run.replaced-")]
    assert len(aside) == 1 and file_digests(str(tmp_path / aside[0])) == before


def test_a_non_empty_folder_without_a_run_is_refused(fake, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigMismatchError, match="holds no pylth run"):
        run(fake, tmp_path)
    assert os.listdir(tmp_path / "run") == ["notes.txt"]
