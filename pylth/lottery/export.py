"""Exporting a ticket: a finished round's trained, masked EMA weights as a diffusers DDPMPipeline."""
from __future__ import annotations

import pickle

import torch

from pylth import __version__
from pylth.ddpm.models import model_kind
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.run_reader import finished_run
from pylth.tickets.diffusers_pipeline import ddpm_scheduler_config, save_ddpm_pipeline

FORMATS = ("diffusers",)


def _tensors(run: RunDirectory, records: list[dict], path: str) -> dict[str, torch.Tensor]:
    """A finished round's file of name -> tensor, checked first against its digest in rounds.jsonl."""
    run.verify(records, [path])  # a changed or missing file is a DamagedRunError naming it
    try:
        obj = run.load(path)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} must hold a dict of name -> tensor")
    return obj


def export_ticket(run_dir: str, out: str, round: int | None = None, to: str = "diffusers") -> dict:
    """Write round ``round`` (default: the last finished one) of the find_ticket run ``run_dir`` to the
    new folder ``out`` as a DDPMPipeline: the round's trained EMA weights (exactly zero where pruned)
    in safetensors, and a DDPMScheduler with the run's betas. Works for every model kind that has a
    UNet2DModel form (pylth's U-Net is converted). Returns what pylth.json in ``out`` records."""
    if to not in FORMATS:
        raise ValueError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    run = RunDirectory(run_dir)
    spec, records = finished_run(run)
    if round is None:
        round = len(records) - 1
    if not isinstance(round, int) or isinstance(round, bool) or not 0 <= round < len(records):
        raise ValueError(f"--round must be a finished round of {run.path} (0..{len(records) - 1}), got {round!r}")
    kind = model_kind(spec.model_kind)
    if kind.as_diffusers is None:
        raise ValueError(f"model kind {kind.name} has no diffusers UNet2DModel form and cannot be exported")
    model_path, mask_path = run.round_file(round, "model.pt"), run.round_file(round, "mask.pt")
    state, masks = _tensors(run, records, model_path), _tensors(run, records, mask_path)
    for name, mask in masks.items():
        if name not in state or state[name].shape != mask.shape or bool(state[name][~mask].any()):
            raise ValueError(f"{model_path} does not hold the ticket of {mask_path} ({name!r} is missing, "
                             f"shaped otherwise or nonzero where pruned)")
    unet_config, unet_state = kind.as_diffusers(spec.model, state)
    diffusion, record = spec.diffusion, records[round]
    about = dict(exported_by=f"pylth {__version__}", run=run.path, round=round, model_kind=kind.name,
                 sparsity=record["sparsity"], active_weights=record.get("active_weights"),
                 fid=record.get("fid"), fid_features=record.get("fid_features"), fid_samples=record.get("fid_samples"),
                 sampler=spec.evaluation.sampler, sample_steps=spec.evaluation.sample_steps,
                 reset=spec.lottery.reset, init_from=spec.init_from)
    scheduler = ddpm_scheduler_config(diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end)
    about["out"] = save_ddpm_pipeline(unet_config, unet_state, scheduler, out, about)
    return about
