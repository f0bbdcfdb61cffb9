"""The flags of the data, the model and the diffusion (DataConfig, ModelConfig, DiffusionConfig), and
--model-config's KEY=VALUE text."""
from __future__ import annotations

import dataclasses
import typing

from pylth.ddpm.data import DATASETS
from pylth.ddpm.models import DEFAULT_MODEL, MODELS, model_kind, resolve_model
from pylth.ddpm.models.registry import apply_overrides
from pylth.foundations.hparams import help_field


def parse_overrides(text: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE...]`` as {key: value text}, in the order given; the model kind converts
    the values (``ModelKind.configure``). A malformed pair or a repeated key is a ValueError."""
    overrides: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"model_config {pair.strip()!r} is not KEY=VALUE (pairs are separated by ',')")
        if key in overrides:
            raise ValueError(f"model_config sets {key} twice")
        overrides[key] = value.strip()
    return overrides


@dataclasses.dataclass
class DataConfig:
    dataset: str = dataclasses.field(default="digits", **help_field(
        "data set; folder: the images under --data-root",
        choices=DATASETS))
    data_root: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "folder holding the data set's files (default: $PYLTH_DATA_ROOT or ~/.cache/pylth/data; "
        "fashion-mnist: /usr/share/datasets/fashion-mnist when present)", resumable=True))
    download: bool = dataclasses.field(default=False, **help_field("download the data set into --data-root if missing",
                                                                   resumable=True))
    image_size: typing.Optional[int] = dataclasses.field(default=None, **help_field(
        "resize the images to N x N for training, the held-out loss and the FID reference alike: area "
        "averaging when shrinking, bilinear when enlarging (default: the data set's own size)",
        older_runs=None))  # runs made before --image-size: the data set's own size

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or isinstance(self.image_size, bool)
                                            or self.image_size < 1):
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")


@dataclasses.dataclass
class ModelConfig:
    model: str = dataclasses.field(default=DEFAULT_MODEL, **help_field(
        "model kind: " + "; ".join(f"{k.name}: {k.summary}" for k in MODELS.values()), choices=tuple(MODELS)))
    init_from: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "start from the model saved in this local folder (diffusers' save_pretrained layout, or a pipeline "
        "folder's unet/; read offline) instead of fresh weights; its configuration replaces the data set's "
        "(--model diffusers-unet2d)"))
    model_config: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "KEY=VALUE[,KEY=VALUE...]: overrides of the model kind's configuration for the data set, e.g. "
        "ch=32,ch_mult=1:2:2,num_res_blocks=1,attn_resolutions=7,dropout=0 (a list's items joined by ':'; "
        "an empty list is 'KEY=')"))

    def __post_init__(self):
        model_kind(self.model).check_usable()  # an unknown kind is a ValueError naming the known ones
        if self.model_config is not None:
            parse_overrides(self.model_config)  # a malformed text fails here, before any work

    def resolve(self, dataset: str, image_shape) -> tuple[dict, dict | None]:
        """``(configuration, init_from record)`` of the model for ``dataset``'s images of ``image_shape``:
        the kind's configuration for the data set (or --init-from's saved one) with --model-config's
        overrides applied and checked (``apply_overrides``)."""
        kind = model_kind(self.model)
        config, init_from = resolve_model(kind, dataset, image_shape, self.init_from)
        if self.model_config is None:
            return config, init_from
        if init_from is not None:
            raise ValueError("--model-config cannot change the model that --init-from reads; use one or the other")
        return apply_overrides(kind, config, parse_overrides(self.model_config), image_shape), None


@dataclasses.dataclass
class DiffusionConfig:
    num_timesteps: int = dataclasses.field(default=1000, **help_field("diffusion steps T"))
    beta_start: float = dataclasses.field(default=1e-4, **help_field("first beta of the linear schedule"))
    beta_end: float = dataclasses.field(default=0.02, **help_field("last beta of the linear schedule"))
