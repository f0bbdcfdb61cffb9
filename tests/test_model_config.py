"""--model-config KEY=VALUE,...: overrides of a model kind's configuration, converted, checked and
proven buildable before any work, recorded in config.json and in the default run directory's name."""
from __future__ import annotations

import json
import os
import re

import pytest

from pylth.ddpm.config import parse_overrides
from pylth.ddpm.models import UNet, model_kind
from pylth.ddpm.models.registry import apply_overrides
from pylth.find_ticket import main
from test_lottery_helpers import fake  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "0"]


def test_values_take_the_type_of_the_setting_they_replace():
    unet = model_kind("unet")
    base = unet.config_for("mnist", (1, 28, 28))
    config = apply_overrides(unet, base, parse_overrides("ch=32,ch_mult=1:2:2,num_res_blocks=1,attn_resolutions=7,"
                                                         "dropout=0"), (1, 28, 28))
    assert config == dict(base, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0)
    model = UNet(**config)
    assert sum(p.numel() for p in model.parameters()) == 1_112_801  # the study's 1.1 M-parameter U-Net
    assert apply_overrides(unet, base, {"attn_resolutions": ""}, (1, 28, 28))["attn_resolutions"] == ()


@pytest.mark.parametrize("text, message", [
    ("ch=32,ch=16", "twice"),
    ("ch", "not KEY=VALUE"),
    ("=3", "not KEY=VALUE"),
])
def test_malformed_text_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides(text)


@pytest.mark.parametrize("text, message", [
    ("width=3", "no setting 'width'"),
    ("image_size=16", "the data set decides it"),
    ("ch=3x", "ch must be an integer"),
    ("dropout=high", "dropout must be a number"),
    ("ch_mult=1:two", "ch_mult must be an integer"),
    ("ch=30", "divisible by norm_groups"),  # GroupNorm groups that do not divide a width
    ("attn_resolutions=3", "never reached"),  # 8x8 with two levels: 8 and 4
    ("dropout=1.5", r"dropout must be in \[0, 1\)"),
])
def test_bad_overrides_are_one_line_naming_the_flag_and_nothing_is_written(tmp_path, capsys, text, message):
    out = tmp_path / "run"
    assert main(QUICK + ["--model-config", text, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.find_ticket: error: --model-config") and "\n" not in err
    assert re.search(message, err)
    assert not out.exists()


def test_the_run_records_the_network_and_names_its_folder_after_the_changes(fake, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    assert main(QUICK + ["--model-config", "ch=16,norm_groups=16,num_res_blocks=2,dropout=0"], parts=fake.parts) == 0
    (name,) = os.listdir(tmp_path / "runs")
    assert name == "digits-ch16-nrb2-dropout0-ng16-layerwise-rewind-p0.2-q0.01-i4-s0"
    config = json.loads((tmp_path / "runs" / name / "config.json").read_text())
    assert config["model"]["ch"] == 16 and config["model"]["num_res_blocks"] == 2 and config["model"]["dropout"] == 0


def test_diffusers_settings_are_overridden_by_the_same_rule():
    pytest.importorskip("diffusers")
    kind = model_kind("diffusers-unet2d")
    base = kind.config_for("digits", (1, 8, 8))
    config = apply_overrides(kind, base, {"block_out_channels": "32:32", "norm_num_groups": "16"}, (1, 8, 8))
    assert config["block_out_channels"] == [32, 32] and config["norm_num_groups"] == 16
    with pytest.raises(ValueError, match="the data set decides it"):
        apply_overrides(kind, base, {"sample_size": "16"}, (1, 8, 8))
    with pytest.raises(ValueError, match="cannot be built"):
        apply_overrides(kind, base, {"norm_num_groups": "7"}, (1, 8, 8))
