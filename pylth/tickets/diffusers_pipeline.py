"""A UNet2DModel and pylth's noise schedule as a diffusers DDPMPipeline folder.

The folder is what ``DDPMPipeline.from_pretrained(folder)`` loads: ``model_index.json``, ``unet/``
(config and safetensors weights) and ``scheduler/`` (a DDPMScheduler with pylth's linear betas,
Ho et al.'s posterior variance and x0 clipped to [-1, 1], as pylth's DDPM sampler does).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from pylth.ddpm.models.diffusers_unet2d import import_diffusers

PYLTH_FILE = "pylth.json"  # where the exported ticket came from; diffusers ignores it


def ddpm_scheduler_config(num_timesteps: int, beta_start: float, beta_end: float) -> dict:
    """DDPMScheduler arguments for pylth's schedule and its DDPM sampler."""
    return dict(num_train_timesteps=int(num_timesteps), beta_start=float(beta_start), beta_end=float(beta_end),
                beta_schedule="linear", variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0,
                prediction_type="epsilon", timestep_spacing="linspace")


def _ordinary_permissions(folder: str) -> None:
    """Folders 0777 and files 0666 less the umask: mkdtemp's folder (and the weights file the
    serializer writes) are private to the user otherwise."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def save_ddpm_pipeline(unet_config: dict, unet_state: dict[str, torch.Tensor], scheduler_config: dict, out: str,
                       about: dict | None = None) -> str:
    """Write the DDPMPipeline of a UNet2DModel (``unet_config`` holding ``unet_state``) and a
    DDPMScheduler (``scheduler_config``) to the new folder ``out``, with ``about`` in pylth.json.
    The folder appears whole or not at all (written beside it, then renamed); returns its path."""
    diffusers = import_diffusers()
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"OUT {out} exists and is not an empty folder; choose another or remove it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    unet = diffusers.UNet2DModel(**unet_config)
    unet.load_state_dict(unet_state, strict=True)
    pipeline = diffusers.DDPMPipeline(unet=unet.eval(), scheduler=diffusers.DDPMScheduler(**scheduler_config))
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        with open(os.path.join(staging, PYLTH_FILE), "w", encoding="utf-8") as f:
            json.dump(about or {}, f, indent=2)
        _ordinary_permissions(staging)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
