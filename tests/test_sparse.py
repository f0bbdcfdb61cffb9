"""pylth.sparse: sparsify's models against the dense masked model, the crossover rule and its report,
and ticket files (size, exact round trip, damage)."""
from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn

from pylth.ddpm import build_model
from pylth.foundations.io import UnreadableFileError
from pylth.pruning import apply_masks, compute_masks, prunable_parameters
from pylth.sparse import CONV_MAX_DENSITY, SparseConv2d, SparseLinear, sparsify
from pylth.sparse.convert import _choose
from pylth.tickets import load_sparse, read_sparse, save_sparse

pytestmark = pytest.mark.usefixtures("one_thread")


def masked_unet(sparsity: float, seed: int = 0, **overrides):
    """A small U-Net with non-trivial outputs (the near-zero output inits lifted) and magnitude masks."""
    torch.manual_seed(seed)
    model = build_model("digits", **overrides).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().max() < 1e-3:
                m.weight.mul_(1e4)
    masks = compute_masks(model, "uniform", sparsity)
    apply_masks(model, masks)
    return model, masks


def inputs(batch: int = 5, side: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, side, side, generator=g), torch.randint(0, 1000, (batch,), generator=g)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_a_sparsified_model_computes_what_the_dense_masked_model_computes(sparsity):
    model, masks = masked_unet(sparsity)
    x, t = inputs()
    sparse = sparsify(model, masks, max_density=1.0)  # every layer sparse, whatever its density
    assert all(isinstance(sparse.get_submodule(n.rsplit(".", 1)[0]), (SparseConv2d, SparseLinear)) for n in masks)
    with torch.no_grad():
        want, got = model(x, t), sparse(x, t)
    assert want.abs().max() > 0.01  # not a model that outputs (nearly) nothing
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_layers_above_the_crossover_stay_dense_and_the_report_says_why():
    model, masks = masked_unet(0.9)
    denser = {n: (m | (torch.rand(m.shape) < 0.5)) if n == "head.weight" else m for n, m in masks.items()}
    with torch.no_grad():
        model.head.weight.normal_()  # no zeros: sparsify must mask the layer it keeps dense
    sparse = sparsify(model, denser)
    report = {c.name: c for c in sparse.sparsify_report}
    assert report["head"].density > CONV_MAX_DENSITY and not report["head"].sparse
    assert "crossover" in report["head"].reason and isinstance(sparse.head, nn.Conv2d)
    assert torch.equal(sparse.head.weight, model.head.weight * denser["head.weight"]), "a dense layer is masked"
    assert report["down.0.b1.2"].sparse and isinstance(sparse.down[0].b1[2], SparseConv2d)
    assert report["temb.mlp.0"].kind == "linear" and not report["temb.mlp.0"].sparse  # small: dense is faster
    assert "made sparse" in str(sparse.sparsify_report) and set(sparse.sparsify_report.sparse) & {"down.0.b1.2"}
    apply_masks(model, denser)
    x, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(sparse(x, t), model(x, t), rtol=1e-4, atol=1e-4 * model(x, t).abs().max().item())


def test_sparsify_copies_and_refuses_training():
    model, masks = masked_unet(0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparse = sparsify(model, masks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.head.weight.requires_grad
    assert not sparse.training and not any(p.requires_grad for p in sparse.parameters())
    x, t = inputs()
    with pytest.raises(RuntimeError, match="inference only"):
        sparse.down[0].b1[2](torch.randn(1, 32, 8, 8, requires_grad=True))
    with pytest.raises(ValueError, match="max_density"):
        sparsify(model, masks, max_density=1.5)
    with pytest.raises(ValueError, match="not a parameter"):
        sparsify(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})


def test_the_cuda_default_is_dense_until_measured():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    assert "cuDNN" in _choose(conv, 0.01, None, cuda=True)
    assert _choose(conv, 0.01, None, cuda=False) == "" and _choose(conv, 0.01, 0.5, cuda=True) == ""
    assert "groups" in _choose(nn.Conv2d(8, 8, 3, groups=2), 0.01, None, cuda=False)


def test_a_ticket_file_round_trips_exactly(tmp_path):
    model, masks = masked_unet(0.97)
    path = str(tmp_path / "ticket.safetensors")
    size = save_sparse(path, model, masks)
    assert size == os.path.getsize(path)
    ticket = read_sparse(path)
    assert ticket.kind == "unet" and ticket.config == {**model.config, "ch_mult": list(model.config["ch_mult"]),
                                                       "attn_resolutions": list(model.config["attn_resolutions"])}
    state = model.state_dict()
    assert set(ticket.state) == set(state) and all(torch.equal(ticket.state[k], v) for k, v in state.items())
    assert all(torch.equal(ticket.masks[n], m) for n, m in masks.items()) and set(ticket.masks) == set(masks)
    x, t = inputs()
    with torch.no_grad():
        assert torch.equal(load_sparse(path, dense=True)(x, t), model(x, t))
        assert torch.equal(load_sparse(path)(x, t), sparsify(model, masks)(x, t))


def test_both_position_encodings_are_used_and_read(tmp_path):
    model, masks = masked_unet(0.9)
    masks = {n: m.clone() for n, m in masks.items()}
    masks["head.weight"].zero_()
    masks["head.weight"].view(-1)[:3] = True  # 3 of 288 kept: indices are smaller than a bit mask
    apply_masks(model, masks)
    path = str(tmp_path / "t.safetensors")
    save_sparse(path, model, masks)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
    assert "kept/head.weight/indices" in keys and "kept/down.0.b1.2.weight/bitmask" in keys
    assert torch.equal(read_sparse(path).masks["head.weight"], masks["head.weight"])


def test_the_cifar10_tickets_file_is_small_at_95_percent(tmp_path):
    torch.manual_seed(0)
    model = build_model("cifar10")
    masks = compute_masks(model, "uniform", 0.95)
    apply_masks(model, masks)
    dense = io.BytesIO()
    torch.save(model.state_dict(), dense)
    size = save_sparse(str(tmp_path / "t.safetensors"), model, masks)
    kept = sum(int(m.sum()) for m in masks.values())
    assert size <= dense.tell() / 8, (size, dense.tell())
    assert size < 4 * kept + sum(m.numel() for m in masks.values()) / 8 + 4 * 60_000 + 200_000  # values + bits + rest


def test_a_damaged_or_foreign_ticket_file_names_itself(tmp_path):
    model, masks = masked_unet(0.9)
    path = tmp_path / "t.safetensors"
    save_sparse(str(path), model, masks)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(UnreadableFileError, match="t.safetensors"):
        load_sparse(str(path))
    with pytest.raises(UnreadableFileError, match="missing"):
        read_sparse(str(tmp_path / "absent.safetensors"))
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UnreadableFileError, match="not 'pylth-sparse-ticket'"):
        read_sparse(str(tmp_path / "other.safetensors"))


def test_save_sparse_needs_the_kind_of_a_model_it_does_not_know(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3))
    masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable_parameters(model)}
    with pytest.raises(ValueError, match="kind= and config="):
        save_sparse(str(tmp_path / "t.safetensors"), model, masks)
