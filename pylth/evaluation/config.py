"""How every model of a run is scored: FID's sample count, sampler and features (EvalConfig)."""
from __future__ import annotations

import dataclasses
import typing

from pylth.ddpm.samplers import SAMPLERS
from pylth.evaluation.features import FID_FEATURES, resolve_fid_features
from pylth.foundations import distributed as D
from pylth.foundations.environment import Environment
from pylth.foundations.hparams import help_field


def features_of_older_runs(evaluation: dict, records) -> str:
    """The FID features of a run made before --fid-features: its rounds name the features they used;
    without a finished round, Inception where a weights file was given, else the classifier."""
    used = records[0].get("fid_features") if records else None
    return used or ("inception" if evaluation.get("inception_path") else "classifier")


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
        "are found, except on digits without --inception-path", choices=FID_FEATURES,
        older_runs=features_of_older_runs))
    inception_path: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "clean-fid's local inception-2015-12-05.pt (or its folder) for Inception FID, instead of the "
        "bundled weights; default $PYLTH_INCEPTION_PATH", resumable=True))
    cache_dir: typing.Optional[str] = dataclasses.field(default=None, **help_field(
        "cache for FID reference statistics and classifiers (default $PYLTH_CACHE_DIR or ~/.cache/pylth)",
        resumable=True))

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

    def resolved(self, dataset: str, environment: Environment = Environment()) -> "EvalConfig":
        """This configuration with fid_features "auto" made concrete for ``dataset`` (what a run
        records in config.json, so that it keeps its features when resumed), the Inception weights
        looked for at ``inception_path`` or the environment's; a FileNotFoundError when inception is
        asked for and no weights are installed. Under torch.distributed rank 0 decides and every rank
        gets its answer, so that all extract the same features."""
        kind = None
        with D.fail_together("choosing the FID features"):
            if D.is_main():
                kind = resolve_fid_features(dataset, self.fid_features,
                                            self.inception_path or environment.inception_path)
        return dataclasses.replace(self, fid_features=D.broadcast_object(kind))
