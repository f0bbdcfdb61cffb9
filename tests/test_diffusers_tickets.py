"""Tickets found on diffusers' UNet2DModel: each round's ticket.safetensors rebuilds the UNet2DModel
(read_sparse, load_sparse), sparsify runs its convs and linears with the sparse kernels, and python -m
pylth.sample runs a run directory and a ticket file; checked against diffusers' own UNet2DModel."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from pylth.ddpm.models import model_kind
from pylth.foundations.io import torch_load
from pylth.lottery import find_ticket
from pylth.pruning import prunable_parameters
from pylth.sample import main as sample_main
from pylth.sparse import SparseConv2d, SparseLinear
from pylth.tickets import load_sparse, read_sparse, save_sparse

from diffusers_helpers import TINY_UNET2D, tiny_config
from test_lottery_helpers import fake_calls, fid_cache, tiny_spec  # noqa: F401  (fid_cache: a fixture)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")
KIND = model_kind("diffusers-unet2d")
ROUNDS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A find_ticket run on a tiny UNet2DModel, pruned to ~90 % in two rounds (sparse enough that
    sparsify's measured crossover makes its convs sparse)."""
    out = str(tmp_path_factory.mktemp("diffusers-run"))
    spec = tiny_spec(out + "-cache", max_rounds=ROUNDS, strategy="global", prune_ratio=0.7)
    spec.model_kind, spec.model = KIND.name, tiny_config()
    find_ticket(spec, out, log=lambda _m: None, parts=fake_calls(step_size=0.02).parts)
    return out


def _unet2d(run: str, k: int):
    """Round k's trained model, built by diffusers itself (the oracle), and the run's config.json."""
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    model = diffusers.UNet2DModel(**config["model"]).eval()
    model.load_state_dict(torch_load(os.path.join(run, f"round_{k:02d}", "model.pt")), strict=True)
    return model, config


def test_every_round_writes_a_ticket_file_that_names_and_rebuilds_the_unet2dmodel(run):
    with open(os.path.join(run, "rounds.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == ROUNDS + 1 and records[-1]["sparsity"] > 0.85
    for k, record in enumerate(records):
        path = os.path.join(run, f"round_{k:02d}", "ticket.safetensors")
        ticket = read_sparse(path)
        oracle, config = _unet2d(run, k)
        assert ticket.kind == "diffusers-unet2d" and ticket.config == config["model"]
        assert ticket.extra["image_shape"] == [1, 8, 8] and ticket.extra["round"] == k
        masks = torch_load(os.path.join(run, f"round_{k:02d}", "mask.pt"))
        assert set(ticket.masks) == set(masks) and all(torch.equal(ticket.masks[n], m) for n, m in masks.items())
        expected = oracle.state_dict()
        assert set(ticket.state) == set(expected)
        assert all(torch.equal(ticket.state[n], v) for n, v in expected.items()), "bitwise the round's weights"
        assert record["ticket_bytes"] == os.path.getsize(path)
        assert f"round_{k:02d}/ticket.safetensors" in record["files"], "its digest is recorded"
    # The file shrinks with the kept weights.
    assert records[-1]["ticket_bytes"] < 0.5 * records[0]["ticket_bytes"]


def test_the_loaded_ticket_runs_its_layers_sparse_and_predicts_what_diffusers_predicts(run):
    oracle, _ = _unet2d(run, ROUNDS)
    path = os.path.join(run, f"round_{ROUNDS:02d}", "ticket.safetensors")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        expected = oracle(x, t).sample
    assert expected.abs().mean() > 1e-3, "a meaningful output"

    dense = load_sparse(path, dense=True)
    assert isinstance(dense, diffusers.UNet2DModel)
    with torch.no_grad():
        torch.testing.assert_close(KIND.predict(dense, x, t), expected, rtol=0, atol=0)

    everything = load_sparse(path, max_density=1.0)  # every masked Conv2d and Linear on the sparse kernels
    report = everything.sparsify_report
    masked = {n for n, _ in prunable_parameters(oracle)}
    assert len(report) == len(masked) and not report.dense
    assert not [n for n, m in everything.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    kinds = {type(m) for m in everything.modules()}
    assert SparseConv2d in kinds and SparseLinear in kinds, "convs and attention/time-embedding linears"
    with torch.no_grad():
        torch.testing.assert_close(KIND.predict(everything, x, t), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()))

    measured = load_sparse(path)  # the measured crossover: the sparse enough convs only
    assert measured.sparsify_report.sparse and all(c.kind == "conv" for c in measured.sparsify_report if c.sparse)
    assert all(c.reason for c in measured.sparsify_report if not c.sparse), "each dense layer says why"
    with torch.no_grad():
        torch.testing.assert_close(KIND.predict(measured, x, t), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()))


def _npz(path) -> np.ndarray:
    with np.load(path) as f:
        return f["samples"]


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_the_sample_command_runs_the_run_and_its_ticket_file(run, sampler, tmp_path, capsys):
    ticket = os.path.join(run, f"round_{ROUNDS:02d}", "ticket.safetensors")
    args = ["--num", "3", "--batch-size", "2", "--sampler", sampler, "--steps", "4"]
    outputs = {}
    for name, source, extra in (("dense", run, ["--dense"]), ("sparse", run, []), ("file", ticket, []),
                                ("file-dense", ticket, ["--dense"])):
        png, npz = tmp_path / f"{name}.png", tmp_path / f"{name}.npz"
        assert sample_main([source, *args, *extra, "--out", str(png), "--npz", str(npz)]) == 0
        assert png.stat().st_size > 0
        outputs[name] = _npz(npz)
    printed = capsys.readouterr().out
    made_sparse = [int(n) for n in re.findall(r"round \d+: (\d+) of \d+ masked layers sparse", printed)]
    assert len(made_sparse) == 2 and min(made_sparse) > 0, printed
    assert outputs["dense"].shape == (3, 1, 8, 8) and np.isfinite(outputs["dense"]).all()
    assert np.array_equal(outputs["file-dense"], outputs["dense"]), "the ticket file holds the run's round"
    for name in ("sparse", "file"):
        np.testing.assert_allclose(outputs[name], outputs["dense"], rtol=0, atol=1e-4)


def test_save_sparse_recognises_a_unet2dmodel_and_sample_reads_its_file_alone(tmp_path, capsys):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**TINY_UNET2D)
    gen = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.1 for n, p in prunable_parameters(model)}
    path = str(tmp_path / "mine.safetensors")
    save_sparse(path, model, masks)  # no kind= or config=: a UNet2DModel says what it is
    ticket = read_sparse(path)
    assert ticket.kind == "diffusers-unet2d" and ticket.config == tiny_config() and ticket.extra == {}
    with pytest.raises(ValueError, match="kind= and config="):
        save_sparse(path, model, masks, kind="unet")
    # Without a run's facts the image shape comes from the configuration, the rest from pylth's defaults.
    assert sample_main([path, "--num", "2", "--steps", "2", "--out", str(tmp_path / "mine.png")]) == 0
    assert (tmp_path / "mine.png").stat().st_size > 0


def test_the_mixed_experiment_runs_on_a_unet2dmodel_run_and_its_end_points_are_the_rounds(tmp_path, fid_cache):  # noqa: F811
    from pylth.studies.mixed_chain import ORDERS, MixedExperiment

    out = str(tmp_path / "run")
    spec = tiny_spec(fid_cache, strategy="uniform", prune_ratio=0.6, max_rounds=1)
    spec.model_kind, spec.model = KIND.name, tiny_config()
    records = find_ticket(spec, out, log=lambda _m: None)  # real training and FID
    rows = MixedExperiment(out, log=lambda _m: None).run_points([1], [0.0, 1.0], ORDERS, [0])
    by_key = {(r.order, r.switch_point): r.fid for r in rows}
    assert by_key["dense-first", 1.0] == by_key["ticket-first", 0.0] == records[0]["fid"], "all dense: round 0"
    assert by_key["dense-first", 0.0] == by_key["ticket-first", 1.0] == records[1]["fid"], "all ticket: round 1"
