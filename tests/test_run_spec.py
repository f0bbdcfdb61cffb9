"""RunSpec.from_json, the one reader of a run's config.json: the texts pylth's commands write today and
wrote before (each version that added a setting), read back and upgraded in one place; a damaged
file named; which settings may change on resume, from the fields' metadata."""
from __future__ import annotations

import json

import pytest
import torch

from pylth.foundations.devices import resolve_device
from pylth.foundations.run_dir import DamagedRunError
from pylth.lottery import RunSpec
from pylth.lottery.spec import config_differences, resumable_keys, resume_hint, with_implicit_settings

# config.json of `python -m pylth.find_ticket` on digits with its defaults (pylth 0.1 at the time of
# issue 24), as written: the JSON of RunSpec.to_json().
FIND_TICKET = """{
  "data": {"dataset": "digits", "data_root": null, "download": false, "image_size": null},
  "model": {"in_channels": 1, "image_size": 8, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
            "attn_resolutions": [4], "dropout": 0.1, "norm_groups": 32},
  "image_shape": [1, 8, 8],
  "train": {"iterations": 300, "batch_size": 64, "lr": 0.001, "warmup": 30, "grad_clip": 1.0, "ema_decay": 0.99,
            "num_workers": 0, "bf16": false, "seed": 0, "device": "cpu", "checkpoint_every": 100,
            "sparse_training": "auto"},
  "diffusion": {"num_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02},
  "evaluation": {"fid_samples": 256, "sampler": "ddim", "sample_steps": 20, "eta": 0.0, "sample_batch_size": 256,
                 "fid_features": "classifier", "inception_path": null, "cache_dir": null},
  "lottery": {"strategy": "layerwise", "prune_ratio": 0.2, "increment": 0.01, "cap": 0.95, "target_sparsity": 0.9,
              "max_rounds": 25, "rewind_fraction": 0.05, "reset": "rewind", "heldout_samples": 256},
  "model_kind": "unet",
  "init_from": null,
  "rewind_iteration": 15
}"""

# config.json of `python -m pylth.train --iterations 1 --fid-samples 0` on digits before issue 24 (its
# evaluation settings under "eval"), and as it writes it now (under "evaluation", find_ticket's name).
TRAIN_BEFORE = """{
  "data": {"dataset": "digits", "data_root": null, "download": false, "image_size": null},
  "train": {"iterations": 1, "batch_size": 128, "lr": 0.0005, "warmup": 100, "grad_clip": 1.0, "ema_decay": 0.9999,
            "num_workers": 0, "bf16": false, "seed": 0, "device": "cpu", "checkpoint_every": 1000,
            "sparse_training": "auto"},
  "diffusion": {"num_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02},
  "eval": {"fid_samples": 0, "sampler": "ddim", "sample_steps": 100, "eta": 0.0, "sample_batch_size": 256,
           "fid_features": "auto", "inception_path": null, "cache_dir": null},
  "model_kind": "unet",
  "model": {"in_channels": 1, "image_size": 8, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
            "attn_resolutions": [4], "dropout": 0.1, "norm_groups": 32},
  "init_from": null
}"""
TRAIN_NOW = TRAIN_BEFORE.replace('"eval":', '"evaluation":')


def without(text: str, *keys: str) -> dict:
    """The config of ``text`` without the dotted ``keys``: what a pylth from before those settings wrote."""
    config = json.loads(text)
    for key in keys:
        *section, name = key.split(".")
        del (config[section[0]] if section else config)[name]
    return config


# What each older version of find_ticket left out, from the first run directories on (pylth's history:
# --fid-features and model kinds came on 2026-12-01, --init-from the same day, --sparse-training on
# 12-02, --image-size on 12-06).
FIRST_RUNS = ("model_kind", "init_from", "evaluation.fid_features", "train.sparse_training", "data.image_size")
BEFORE_INIT_FROM = ("init_from", "train.sparse_training", "data.image_size")
BEFORE_SPARSE_TRAINING = ("train.sparse_training", "data.image_size")
BEFORE_IMAGE_SIZE = ("data.image_size",)
# The values an older run ran with (today's defaults differ for sparse_training and fid_features).
OLDER_RUNS = {"model_kind": "unet", "init_from": None, "evaluation.fid_features": "classifier",
              "train.sparse_training": "off", "data.image_size": None}


def as_json(spec: RunSpec) -> dict:
    return json.loads(json.dumps(spec.to_json()))


def test_today_s_find_ticket_config_json_reads_back_to_the_same_text():
    config = json.loads(FIND_TICKET)
    spec = RunSpec.from_json(config)
    assert spec.image_shape == (1, 8, 8) and spec.train.sparse_training == "auto" and spec.model_kind == "unet"
    assert spec.evaluation.fid_features == "classifier" and spec.lottery.reset == "rewind"
    assert as_json(spec) == config


@pytest.mark.parametrize("lacks", [FIRST_RUNS, BEFORE_INIT_FROM, BEFORE_SPARSE_TRAINING, BEFORE_IMAGE_SIZE],
                         ids=["first-runs", "before-init-from", "before-sparse-training", "before-image-size"])
def test_an_older_run_s_config_json_reads_as_the_run_it_was(lacks):
    old = without(FIND_TICKET, *lacks)
    records = [{"round": 0, "fid_features": "classifier"}]
    upgraded = json.loads(FIND_TICKET)
    for key in lacks:
        *section, name = key.split(".")
        (upgraded[section[0]] if section else upgraded)[name] = OLDER_RUNS[key]
    assert as_json(RunSpec.from_json(old, records)) == upgraded
    assert with_implicit_settings(old, records) == {k: v for k, v in upgraded.items() if k in old}, \
        "sections only: top-level settings come from RunSpec's fields"


def test_an_older_run_keeps_the_features_its_rounds_used_and_without_rounds_guesses_them_from_its_path():
    old = without(FIND_TICKET, *FIRST_RUNS)
    assert RunSpec.from_json(old, [{"round": 0, "fid_features": "inception"}]).evaluation.fid_features == "inception"
    assert RunSpec.from_json(old).evaluation.fid_features == "classifier"
    old["evaluation"]["inception_path"] = "/weights/inception-2015-12-05.pt"
    assert RunSpec.from_json(old).evaluation.fid_features == "inception"


def test_a_run_made_on_a_gpu_is_read_on_a_machine_without_one():
    config = json.loads(FIND_TICKET)
    config["train"]["device"] = "cuda:0"
    spec = RunSpec.from_json(config)
    assert spec.train.device == "cuda:0" and as_json(spec) == config
    if not torch.cuda.is_available():  # training there still says what is missing
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(spec.train.device)


@pytest.mark.parametrize("text, lacks", [(TRAIN_BEFORE, "image_shape, evaluation, lottery"),
                                         (TRAIN_NOW, "image_shape, lottery")], ids=["before", "now"])
def test_a_train_run_s_config_json_is_no_find_ticket_run(text, lacks):
    with pytest.raises(DamagedRunError, match=f"^run/config.json is damaged \\(it lacks {lacks}\\)"):
        RunSpec.from_json(json.loads(text), path="run/config.json")


def test_train_writes_find_ticket_s_names_for_what_both_record():
    train, ticket = json.loads(TRAIN_NOW), json.loads(FIND_TICKET)
    assert set(train) <= set(ticket)
    assert all(set(train[k]) == set(ticket[k]) for k in train if isinstance(train[k], dict) and k != "model")


@pytest.mark.parametrize("change, problem", [
    (lambda c: c.pop("train"), "it lacks train"),
    (lambda c: c["evaluation"].pop("sampler"), "it lacks evaluation.sampler"),
    (lambda c: c.update(model=None, image_shape=None), "it lacks model, image_shape"),
    (lambda c: c["train"].update(momentum=0.9), "it holds settings this pylth does not know: train.momentum"),
    (lambda c: c["train"].update(iterations=0), "iterations must be a positive int, got 0"),
    (lambda c: c["data"].update(dataset="imagenet"), "dataset must be one of"),
    (lambda c: c.update(rewind_iteration=14), "its rewind_iteration 14 is not the 15 its settings give"),
])
def test_a_damaged_config_json_is_refused_naming_the_file_and_what_is_wrong(change, problem):
    config = json.loads(FIND_TICKET)
    change(config)
    with pytest.raises(DamagedRunError) as info:
        RunSpec.from_json(config, path="run/config.json")
    assert info.value.problem.startswith("run/config.json is damaged (") and problem in info.value.problem
    assert "restore it from a copy" in info.value.remedy


def test_what_may_change_on_resume_comes_from_the_fields():
    assert resumable_keys() == {  # the list resume.py spelled out before issue 24
        "data.data_root", "data.download", "evaluation.inception_path", "evaluation.cache_dir",
        "lottery.max_rounds", "lottery.target_sparsity", "train.device", "train.num_workers",
        "train.checkpoint_every", "init_from.folder"}
    old, new = json.loads(FIND_TICKET), json.loads(FIND_TICKET)
    new["train"].update(device="cuda", checkpoint_every=7, lr=0.002)
    new["lottery"]["max_rounds"] = 30
    assert config_differences(old, new) == ["train.lr: 0.001 -> 0.002"]


def test_the_resume_hint_names_the_flags_an_older_run_ran_with():
    old = as_json(RunSpec.from_json(without(FIND_TICKET, *FIRST_RUNS), [{"round": 0, "fid_features": "inception"}]))
    new = json.loads(FIND_TICKET)
    assert resume_hint(old, new) == " (to resume it as it ran, add --sparse-training off --fid-features inception)"
    assert resume_hint(new, new) == ""
