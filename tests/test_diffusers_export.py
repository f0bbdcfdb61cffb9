"""pylth's U-Net as diffusers' UNet2DModel (same outputs), and python -m pylth.export: tickets of
either model kind as a DDPMPipeline folder that diffusers loads and samples from."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.models import UNet, model_kind
from pylth.ddpm.models.unet_to_diffusers import as_diffusers
from pylth.export import main
from pylth.foundations.io import torch_load
from pylth.lottery import find_ticket

from diffusers_helpers import tiny_config
from test_lottery_helpers import TINY_MODEL, fake_calls, tiny_spec

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

UNET_CONFIGS = {
    "digits": dict(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                   dropout=0.1),
    "three-levels": dict(in_channels=3, image_size=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=2,
                         attn_resolutions=(8,), dropout=0.0, norm_groups=8),
    "attention-everywhere": dict(in_channels=2, image_size=8, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1,
                                 attn_resolutions=(8, 4, 2), dropout=0.0, norm_groups=4),
}


def _random_unet(config: dict, seed: int = 0) -> UNet:
    """A U-Net whose every weight is random: Ho et al.'s init keeps the output layers near zero, and
    an all-but-zero output would hide any mapping error."""
    torch.manual_seed(seed)
    model = UNet(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.ndim > 1 else 0.5)
    return model


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_pylth_s_unet_and_its_unet2dmodel_compute_the_same_noise_prediction(name):
    model = _random_unet(UNET_CONFIGS[name])
    config, state = as_diffusers(model.config, model.state_dict())
    converted = diffusers.UNet2DModel(**config).eval()
    converted.load_state_dict(state, strict=True)  # every tensor has its place, of its shape
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in model.parameters())
    size, channels = model.config["image_size"], model.config["in_channels"]
    x = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 417, 999])
    # Tiny inputs too: the first GroupNorms then see variances near their eps, which must be pylth's.
    for scale in (1.0, 1e-3):
        with torch.no_grad():
            ours, theirs = model(scale * x, t), converted(scale * x, t).sample
        assert ours.abs().mean() > 0.1, "a meaningful output"
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5 * float(ours.abs().max()))


def test_the_cifar10_unet_maps_onto_google_ddpm_cifar10_32_but_for_its_padding_and_eps():
    from pylth.ddpm.models.diffusers_unet2d import GOOGLE_DDPM_CIFAR10

    config = as_diffusers(model_kind("unet").config_for("cifar10", (3, 32, 32)), {})[0]
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "flip_sin_to_cos",
                "freq_shift", "norm_num_groups", "dropout"):
        assert list(config[key]) == list(GOOGLE_DDPM_CIFAR10[key]) if isinstance(config[key], (list, tuple)) \
            else config[key] == GOOGLE_DDPM_CIFAR10[key], key
    assert config["norm_eps"] == 1e-5 and config["downsample_padding"] == 1  # pylth's, not the hub model's


@pytest.mark.parametrize("overrides, message", [(dict(image_size=28, ch_mult=(1, 2, 2, 2)), "zero-pads"),
                                                (dict(ch_mult=(2, 2)), "widens")])
def test_unets_without_a_unet2dmodel_counterpart_are_refused(overrides, message):
    config = UNet(**dict(UNET_CONFIGS["digits"], **overrides)).config
    with pytest.raises(ValueError, match=message):
        as_diffusers(config, {})


# -- python -m pylth.export ----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["unet", "diffusers-unet2d"])
def ticket_run(request, tmp_path_factory):
    """A find_ticket run of two pruning rounds on each model kind."""
    out = str(tmp_path_factory.mktemp(f"run-{request.param}"))
    spec = tiny_spec(out + "-cache", strategy="layerwise", prune_ratio=0.3)
    spec.model_kind = request.param
    spec.model = dict(TINY_MODEL) if request.param == "unet" else tiny_config()
    # Small training steps: the weights stay of a size whose samples are not all clipped.
    find_ticket(spec, out, log=lambda _m: None, parts=fake_calls(step_size=0.02).parts)
    return request.param, out


def _ticket_model(kind_name: str, run: str, k: int):
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    model = model_kind(kind_name).build(config["model"]).eval()
    model.load_state_dict(torch_load(os.path.join(run, f"round_{k:02d}", "model.pt")))
    return model, config


def test_the_exported_pipeline_loads_and_samples_what_pylth_samples_from_the_ticket(ticket_run, tmp_path, capsys):
    kind_name, run = ticket_run
    out = tmp_path / "pipeline"
    assert main([run, "--to", "diffusers", str(out)]) == 0
    assert "round 2" in capsys.readouterr().out, "the last finished round by default"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not any(name.endswith(".bin") for name in os.listdir(out / "unet"))
    about = json.loads((out / "pylth.json").read_text())
    assert about["round"] == 2 and about["model_kind"] == kind_name and about["sparsity"] > 0.4

    pipe = diffusers.DDPMPipeline.from_pretrained(str(out), local_files_only=True)
    model, config = _ticket_model(kind_name, run, 2)
    # The schedule: pylth's betas, to float32.
    schedule = GaussianDiffusion(config["diffusion"]["num_timesteps"], config["diffusion"]["beta_start"],
                                 config["diffusion"]["beta_end"])
    torch.testing.assert_close(pipe.scheduler.betas.double(), schedule.betas, rtol=1e-6, atol=0)
    # The weights: the ticket's, zero where pruned.
    masks = torch_load(os.path.join(run, "round_02", "mask.pt"))
    kind = model_kind(kind_name)
    exported = pipe.unet.state_dict()
    _, mapped_masks = kind.as_diffusers(config["model"], masks)
    assert all(not exported[n][~m].any() and exported[n][m].any() for n, m in mapped_masks.items())
    _, expected = kind.as_diffusers(config["model"], model.state_dict())
    assert all(torch.equal(exported[n], v) for n, v in expected.items())
    # Sampling: DDPMPipeline with 10 steps is pylth's respaced DDPM sampler on the same noise.
    ours = schedule.sample(model, 4, (1, 8, 8), sampler="ddpm", steps=10, seed=5, batch_size=4, progress=False)
    theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(5), num_inference_steps=10,
                  output_type="pt").images
    assert 0.05 < float((ours.abs() < 0.99).float().mean()), "not all clipped"
    torch.testing.assert_close(theirs, (ours / 2 + 0.5).clamp(0, 1), rtol=0, atol=2e-4)


def test_an_earlier_round_is_exported_with_round(ticket_run, tmp_path):
    _, run = ticket_run
    assert main([run, "--round", "0", str(tmp_path / "dense")]) == 0
    assert json.loads((tmp_path / "dense" / "pylth.json").read_text())["sparsity"] == 0.0


@pytest.mark.parametrize("problem, message", [
    ("not-a-run", "holds no find_ticket run"), ("round", "--round must be a finished round"),
    ("out-exists", "exists and is not an empty folder"), ("format", "invalid choice"),
])
def test_export_problems_are_one_line_errors_and_write_nothing(problem, message, ticket_run, tmp_path, capsys):
    _, run = ticket_run
    out = tmp_path / "out"
    argv = [run, str(out)]
    if problem == "not-a-run":
        argv = [str(tmp_path), str(out)]
    elif problem == "round":
        argv += ["--round", "3"]
    elif problem == "out-exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif problem == "format":
        with pytest.raises(SystemExit) as exc:
            main(argv + ["--to", "onnx"])
        assert exc.value.code == 2 and message in capsys.readouterr().err
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.export: error:") and message in err and "\n" not in err
    assert (out / "keep.txt").read_text() == "mine" if problem == "out-exists" else not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.")], "no staging folder left behind"


def test_a_run_made_before_model_kinds_and_init_from_exports(ticket_run, tmp_path):
    """config.json of runs made before --model and --init-from existed lacks both keys."""
    kind_name, run = ticket_run
    if kind_name != "unet":
        pytest.skip("runs made before model kinds were all of pylth's U-Net")
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    config = json.loads((old / "config.json").read_text())
    del config["model_kind"], config["init_from"]
    (old / "config.json").write_text(json.dumps(config))
    assert main([str(old), str(tmp_path / "out")]) == 0
    about = json.loads((tmp_path / "out" / "pylth.json").read_text())
    assert about["model_kind"] == "unet" and about["init_from"] is None


@pytest.mark.parametrize("name", ["model.pt", "mask.pt"])
def test_a_ticket_file_changed_since_its_round_finished_is_not_exported(name, ticket_run, tmp_path, capsys):
    _, run = ticket_run
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    path = damaged / "round_02" / name
    tensors = torch_load(str(path))
    first = next(iter(tensors))
    changed = tensors[first].clone().reshape(-1)
    changed[0] = ~changed[0] if name == "mask.pt" else changed[0] + 1.0
    tensors[first] = changed.reshape(tensors[first].shape)  # still a readable file of the right shapes
    torch.save(tensors, path)
    assert main([str(damaged), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"round_02/{name}" in err and "is damaged" in err and "\n" not in err.strip()
    assert not (tmp_path / "out").exists()
