"""The model kind diffusers-unet2d: configurations, pruning groups in forward order (checked with
forward hooks), the lottery and both commands on it, --init-from a local save_pretrained folder, and
a clear error without diffusers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from pylth.ddpm.models import model_kind, resolve_model
from pylth.ddpm.models.diffusers_unet2d import GOOGLE_DDPM_CIFAR10
from pylth.foundations.io import torch_load
from pylth.lottery import find_ticket
from pylth.pruning import module_groups, prunable_parameters

from diffusers_helpers import THREE_LEVEL_UNET2D, TINY_UNET2D, saved_unet, tiny_config
from test_lottery_helpers import fake, fid_cache, tiny_spec  # noqa: F401  (fixtures)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")
KIND = model_kind("diffusers-unet2d")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "2",
         "--heldout-samples", "8", "--max-rounds", "1"]


def test_cifar10_is_google_ddpm_cifar10_32_with_ho_et_al_s_35_7m_parameters():
    config = KIND.config_for("cifar10", (3, 32, 32))
    assert config == json.loads(json.dumps(config)), "the recorded configuration is JSON"
    hub = dict(block_out_channels=[128, 256, 256, 256], down_block_types=["DownBlock2D", "AttnDownBlock2D",
               "DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
               layers_per_block=2, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
               norm_num_groups=32, attention_head_dim=None, sample_size=32, in_channels=3, out_channels=3)
    assert {k: config[k] for k in hub} == hub and config["dropout"] == GOOGLE_DDPM_CIFAR10["dropout"] == 0.1
    model = KIND.build(config)
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    # Every UNet2DModel argument is recorded, so a later diffusers' defaults cannot change the network.
    assert set(config) >= {"mid_block_type", "add_attention", "resnet_time_scale_shift", "class_embed_type"}


@pytest.mark.parametrize("dataset, shape, params", [("digits", (1, 8, 8), 701_345), ("mnist", (1, 28, 28), None),
                                                     ("folder", (1, 16, 16), None)])
def test_configurations_for_28x28_8x8_and_folders_build_and_predict_noise_shaped_like_the_input(dataset, shape, params):
    config = KIND.config_for(dataset, shape)
    assert config["sample_size"] == shape[-1] and config["in_channels"] == config["out_channels"] == shape[0]
    model = KIND.fresh(config, 0)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params  # the size of pylth's digits U-Net
    x = torch.randn(2, *shape)
    assert KIND.predict(model, x, torch.tensor([0, 999])).shape == x.shape


def test_a_folder_of_images_not_divisible_by_eight_is_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        KIND.config_for("folder", (3, 20, 20))


def _first_call_order(model, groups, x, t) -> list[str]:
    order, handles = [], []
    for name, module in groups:
        handles.append(module.register_forward_pre_hook(
            lambda _m, _inputs, name=name: order.append(name) if name not in order else None))
    try:
        with torch.no_grad():
            KIND.predict(model, x, t)
    finally:
        for h in handles:
            h.remove()
    return order


@pytest.mark.parametrize("config", [TINY_UNET2D, THREE_LEVEL_UNET2D, "digits", "mnist", "cifar10"], ids=str)
def test_pruning_groups_are_the_modules_in_the_order_forward_runs_them(config):
    if isinstance(config, str):
        shape = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[config]
        config = KIND.config_for(config, shape)
    else:
        shape = (config["in_channels"], config["sample_size"], config["sample_size"])
        config = tiny_config(**config)
    model = KIND.fresh(config, 0).eval()
    groups = KIND.pruning_groups(model)
    names = [n for n, _ in groups]
    assert _first_call_order(model, groups, torch.randn(1, *shape), torch.tensor([10])) == names
    assert names[:2] == ["time_embedding", "conv_in"] and names[-1] == "conv_out"
    assert [n for n in names if n.startswith("mid_block")] == \
        ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    # Each down block: its resnets, each followed by its attention when it attends, then its downsampler.
    assert [n for n in names if n.startswith("down_blocks.1.")][:2] == ["down_blocks.1.resnets.0",
                                                                       "down_blocks.1.attentions.0"]
    assert any(".downsamplers.0" in n for n in names) and any(".upsamplers.0" in n for n in names)
    # Every prunable weight (Conv2d and Linear, attention projections included) is in exactly one group.
    module_level = module_groups(model, blocks=groups)
    assert [g for g, _ in module_level] == names
    assert sorted(p for _, ps in module_level for p in ps) == sorted(n for n, _ in prunable_parameters(model))
    assert any(n.endswith("attentions.0.to_q.weight") for n, _ in prunable_parameters(model))


def _diffusers_spec(cache: str, **lottery):
    spec = tiny_spec(cache, **lottery)
    spec.model_kind, spec.model = KIND.name, tiny_config()
    return spec


@pytest.mark.parametrize("strategy", ["layerwise", "uniform", "global", "random"])
def test_the_lottery_runs_on_a_unet2dmodel_with_every_strategy(strategy, fake, tmp_path):  # noqa: F811
    out = str(tmp_path / "run")
    records = find_ticket(_diffusers_spec(str(tmp_path / "cache"), strategy=strategy, increment=0.1), out,
                          log=lambda _m: None, parts=fake.parts)
    names = [n for n, _ in KIND.pruning_groups(KIND.build(tiny_config()))]
    assert len(records) == 3 and 0 < records[1]["sparsity"] < records[2]["sparsity"]
    assert list(records[1]["module_sparsity"]) == names
    previous = None
    for k in (1, 2):
        masks, state = torch_load(f"{out}/round_0{k}/mask.pt"), torch_load(f"{out}/round_0{k}/model.pt")
        assert all(not state[n][~m].any() for n, m in masks.items()), "trained weights are zero where pruned"
        if previous is not None:
            assert all(not (masks[n] & ~previous[n]).any() for n in masks), "masks nest"
        previous = masks
    if strategy == "layerwise":  # p + j q of module j: downstream modules lose more
        sparsity = list(records[1]["module_sparsity"].values())
        assert sparsity[-1] > sparsity[0]


def test_find_ticket_and_train_commands_train_the_diffusers_kind(tmp_path, fid_cache):  # noqa: F811
    from pylth import train as train_cli
    from pylth.find_ticket import main

    out = tmp_path / "run"
    assert main(QUICK + ["--model", "diffusers-unet2d", "--cache-dir", fid_cache, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_kind"] == "diffusers-unet2d" and config["model"] == KIND.config_for("digits", (1, 8, 8))
    assert config["init_from"] is None
    assert [json.loads(line)["round"] for line in (out / "rounds.jsonl").read_text().splitlines()] == [0, 1]
    assert main(QUICK + ["--model", "diffusers-unet2d", "--cache-dir", fid_cache, "--out", str(out)]) == 0, "resumes"

    dense = tmp_path / "dense"  # --fid-samples 0: no FID, no classifier
    assert train_cli.main(["--model", "diffusers-unet2d", "--iterations", "2", "--batch-size", "8", "--fid-samples",
                           "0", "--sample-steps", "2", "--out", str(dense)]) == 0
    assert json.loads((dense / "config.json").read_text())["model_kind"] == "diffusers-unet2d"
    assert torch_load(str(dense / "checkpoint.pt"))["iteration"] == 2


def test_train_with_init_from_starts_from_the_folder_s_weights(tmp_path):
    from pylth import train as train_cli

    saved = saved_unet(str(tmp_path / "pretrained"), seed=3).state_dict()
    out = tmp_path / "dense"
    # One step at a learning rate of 1e-12: Adam moves every weight by about 1e-12, so the checkpoint
    # holds the folder's weights and not a fresh model's.
    assert train_cli.main(["--model", "diffusers-unet2d", "--init-from", str(tmp_path / "pretrained"),
                           "--iterations", "1", "--batch-size", "8", "--lr", "1e-12", "--fid-samples", "0",
                           "--sample-steps", "2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == tiny_config() and config["init_from"]["folder"] == str(tmp_path / "pretrained")
    trained = torch_load(str(out / "checkpoint.pt"))["model"]
    assert set(trained) == set(saved)
    for name, value in saved.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-9)


def test_the_default_run_directory_names_the_model_kind(fake, tmp_path, monkeypatch):  # noqa: F811
    from pylth.find_ticket import main

    monkeypatch.chdir(tmp_path)
    assert main(QUICK + ["--model", "diffusers-unet2d", "--max-rounds", "0"], parts=fake.parts) == 0
    assert os.listdir(tmp_path / "runs") == ["digits-diffusers-unet2d-layerwise-rewind-p0.2-q0.01-i4-s0"]


# -- --init-from ---------------------------------------------------------------------------------------
def test_init_from_reads_the_folder_s_configuration_and_starts_from_its_weights(fake, tmp_path):  # noqa: F811
    saved = saved_unet(str(tmp_path / "pretrained"), seed=7)
    config, record = resolve_model(KIND, "digits", (1, 8, 8), str(tmp_path / "pretrained"))
    assert config == tiny_config() and record["folder"] == str(tmp_path / "pretrained")
    assert len(record["sha256"]) == 64
    spec = _diffusers_spec(str(tmp_path / "cache"), max_rounds=1)
    spec.model, spec.init_from = config, record
    find_ticket(spec, str(tmp_path / "run"), log=lambda _m: None, parts=fake.parts)
    theta0 = fake[0]["state"]  # what round 0 started training from
    assert set(theta0) == set(saved.state_dict())
    assert all(torch.equal(theta0[k], v) for k, v in saved.state_dict().items())


def test_init_from_a_pipeline_folder_uses_its_unet(tmp_path):
    unet = saved_unet(str(tmp_path / "pipe" / "unet"), seed=1)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(str(tmp_path / "pipe"))
    config, record = resolve_model(KIND, "digits", (1, 8, 8), str(tmp_path / "pipe"))
    assert record["folder"] == str(tmp_path / "pipe") and config == tiny_config()
    assert record["sha256"] == resolve_model(KIND, "digits", (1, 8, 8), str(tmp_path / "pipe" / "unet"))[1]["sha256"]


def test_init_from_reads_old_bin_checkpoints_with_the_old_attention_names(tmp_path):
    """google/ddpm-cifar10-32's weights are a .bin with the attention layers named query, key, value
    and proj_attn; diffusers renames them on load, and so pylth starts from the right weights."""
    from safetensors.torch import load_file

    folder = tmp_path / "old"
    saved_unet(str(folder), seed=5)
    weights = folder / "diffusion_pytorch_model.safetensors"
    old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for name, tensor in load_file(str(weights)).items():
        old_name = name
        for new, old in old_names.items():
            old_name = old_name.replace(new, old)
        state[old_name] = tensor
    assert any(".proj_attn." in n for n in state)
    os.remove(weights)
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    loaded = KIND.folder_weights(str(folder))
    expected = saved_unet(str(tmp_path / "again"), seed=5).state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_the_same_command_with_init_from_resumes_and_changed_weights_are_refused(fake, tmp_path, capsys):  # noqa: F811
    from pylth.find_ticket import main

    folder, out = str(tmp_path / "pretrained"), str(tmp_path / "run")
    saved_unet(folder, seed=3)
    argv = QUICK + ["--model", "diffusers-unet2d", "--init-from", folder, "--out", out]
    assert main(argv, parts=fake.parts) == 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["init_from"]
    assert recorded["folder"] == folder
    assert main(argv + ["--max-rounds", "2"], parts=fake.parts) == 0, "the same run, extended"
    moved = str(tmp_path / "moved")
    os.rename(folder, moved)
    assert main(QUICK + ["--model", "diffusers-unet2d", "--init-from", moved, "--out", out, "--max-rounds", "2"],
                parts=fake.parts) == 0, "the folder may move; its files decide"
    saved_unet(moved, seed=4)
    capsys.readouterr()
    assert main(argv[:-4] + ["--init-from", moved, "--out", out], parts=fake.parts) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "init_from.sha256" in err


@pytest.mark.parametrize("problem, message", [
    ("missing", "is not a folder"), ("empty", "holds no diffusers model"), ("no-weights", "holds no weights"),
    ("size", "16x16 images"), ("channels", "maps 3 to 3 channels"), ("conditional", "class-conditional"),
    ("unet-kind", "--model unet cannot"),
])
def test_init_from_problems_are_one_line_errors(problem, message, tmp_path, capsys):
    from pylth.find_ticket import main

    folder = tmp_path / "pretrained"
    if problem == "empty":
        folder.mkdir()
    elif problem == "no-weights":
        saved_unet(str(folder))
        for name in os.listdir(folder):
            if name.startswith("diffusion_pytorch_model"):
                os.remove(folder / name)
    elif problem != "missing":
        overrides = {"size": dict(sample_size=16), "channels": dict(in_channels=3, out_channels=3),
                     "conditional": dict(num_class_embeds=10), "unet-kind": {}}[problem]
        saved_unet(str(folder), **overrides)
    model = "unet" if problem == "unet-kind" else "diffusers-unet2d"
    out = tmp_path / "run"
    assert main(QUICK + ["--model", model, "--init-from", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.find_ticket: error: --init-from") and message in err and "\n" not in err
    assert not out.exists()


# -- without diffusers ---------------------------------------------------------------------------------
def test_pylth_neither_needs_nor_imports_diffusers_and_the_kind_says_how_to_install_it(tmp_path):
    script = (
        "import sys\n"
        "import pylth.find_ticket, pylth.train, pylth.export, pylth.lottery, pylth.sample, pylth.sparse\n"
        "assert 'diffusers' not in sys.modules, 'importing pylth imported diffusers'\n"
        "sys.modules['diffusers'] = None  # import diffusers now raises ImportError, as when it is not installed\n"
        "from pylth.find_ticket import main\n"
        f"sys.exit(main(['--model', 'diffusers-unet2d', '--out', {str(tmp_path / 'run')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "--model diffusers-unet2d needs huggingface diffusers" in proc.stderr
    assert 'pip install ".[diffusers]"' in proc.stderr
    assert not (tmp_path / "run").exists()


def test_an_unknown_unet2dmodel_argument_is_refused():
    from pylth.ddpm.models.diffusers_unet2d import complete_config

    with pytest.raises(ValueError, match="no argument channel_mult"):
        complete_config(dict(TINY_UNET2D, channel_mult=(1, 2)))
    assert isinstance(KIND.build(tiny_config()), nn.Module)
