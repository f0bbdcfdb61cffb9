"""The flags of the data, the model and the diffusion (DataConfig, ModelConfig, DiffusionConfig), and
--model-config's KEY=VALUE text."""
from __future__ import annotations

import dataclasses
import typing

from pylth.ddpm.data import DATASETS
from pylth.ddpm.models import DEFAULT_MODEL, MODELS, model_kind, resolve_model
from pylth.ddpm.models.registry import apply_overrides
from pylth.ddpm.samplers import SAMPLERS
from pylth.foundations.hparams import help_field

FID_FEATURES = ("auto", "inception", "classifier")


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
        "fashion-mnist: /usr/share/datasets/fashion-mnist when present)"))
    download: bool = dataclasses.field(default=False, **help_field("download the data set into --data-root if missing"))
    image_size: typing.Optional[int] = dataclasses.field(default=None, **help_field(
        "resize the images to N x N for training, the held-out loss and the FID reference alike: area "
        "averaging when shrinking, bilinear when enlarging (default: the data set's own size)"))

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


@dataclasses.dataclass
class EvalConfig:
    fid_samples: int = dataclasses.field(default=500, **help_field(
        "samples for FID/KID, in all over every process (0: skip FID in pylth.train; find_ticket "
        "records FID every round and needs >= 2)"))
    sampler: str = dataclasses.field(default="ddim", **help_field("sampler for FID and samples.png",
                                                                  choices=tuple(SAMPLERS)))
    sample_steps: typing.Optional[int] = dataclasses.field(default=100, **help_field(
        "denoising steps of the sampler (ddpm with T steps is Ho et al.'s ancestral sampler)"))
    eta: float = dataclasses.field(default=0.0, **help_field("DDIM eta (0: deterministic)"))
    sample_batch_size: int = dataclasses.field(default=256, **help_field(
        "images per sampling batch; FID samples come in blocks of this size, each with its own seed, "
        "shared out across processes (so the samples depend on it, not on the number of processes)"))
    fid_features: str = dataclasses.field(default="auto", **help_field(
        "features for FID: inception (Inception-v3: the weights of pylth[inception], or --inception-path), "
        "classifier (a small CNN trained on the data set's labels), or auto: inception where the weights "
        "are found, except on digits without --inception-path", choices=FID_FEATURES))
    inception_path: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "clean-fid's local inception-2015-12-05.pt (or its folder) for Inception FID, instead of the "
        "bundled weights; default $PYLTH_INCEPTION_PATH"))
    cache_dir: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "cache for FID reference statistics and classifiers (default $PYLTH_CACHE_DIR or ~/.cache/pylth)"))

    def __post_init__(self):
        if not isinstance(self.fid_samples, int) or self.fid_samples < 0 or self.fid_samples == 1:
            raise ValueError(f"fid_samples must be 0 or an int >= 2, got {self.fid_samples!r}")
        if self.sample_steps is not None and (not isinstance(self.sample_steps, int) or self.sample_steps < 1):
            raise ValueError(f"sample_steps must be a positive int, got {self.sample_steps!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)):
            raise TypeError(f"eta must be a number, got {self.eta!r}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")
        if not isinstance(self.sample_batch_size, int) or self.sample_batch_size < 1:
            raise ValueError(f"sample_batch_size must be a positive int, got {self.sample_batch_size!r}")
        if self.fid_features not in FID_FEATURES:
            raise ValueError(f"fid_features must be one of {', '.join(FID_FEATURES)}, got {self.fid_features!r}")

    def resolved(self, dataset: str) -> "EvalConfig":
        """This configuration with fid_features "auto" made concrete for ``dataset`` (what a run
        records in config.json, so that it keeps its features when resumed); a FileNotFoundError
        when inception is asked for and no weights are installed. Under torch.distributed rank 0
        decides and every rank gets its answer, so that all extract the same features."""
        from pylth.foundations import distributed as D
        from pylth.ddpm.fid import resolve_fid_features  # scipy and clean-fid: only when needed

        kind = None
        with D.fail_together("choosing the FID features"):
            if D.is_main():
                kind = resolve_fid_features(dataset, self.fid_features, self.inception_path)
        return dataclasses.replace(self, fid_features=D.broadcast_object(kind))
