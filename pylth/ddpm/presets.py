"""The one table of per-data-set defaults: the images' shape and classes, pylth's U-Net for the data
set, and the flag defaults of ``python -m pylth.train`` and ``python -m pylth.find_ticket`` that
differ from the dataclass defaults (which are Ho et al.'s training)."""
from __future__ import annotations

from dataclasses import dataclass, field

# Ho et al. 2020, CIFAR-10 (and the same network for CIFAR-100 and folders of images).
_CIFAR_UNET = dict(in_channels=3, image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                   attn_resolutions=(16,), dropout=0.1)
# 28x28 needs no padding with three levels (28 -> 14 -> 7); attention at 14x14.
_MNIST_UNET = dict(in_channels=1, image_size=28, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2,
                   attn_resolutions=(14,), dropout=0.1)
# scikit-learn's 8x8 digits: small enough to train in minutes on two CPU cores.
_DIGITS_UNET = dict(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    dropout=0.1)

# Algorithm 1 as the paper ran it: Ho et al.'s training every round, FID on 50k DDPM samples.
_PAPER_ROUNDS = dict(iterations=800_000, warmup=5000, ema_decay=0.9999, batch_size=128, checkpoint_every=5000,
                     fid_samples=50_000, sampler="ddpm", sample_steps=1000)


@dataclass(frozen=True)
class DatasetPreset:
    image_shape: tuple | None  # (C, H, W); None: read from the files (folder)
    num_classes: int | None
    unet: dict  # pylth's U-Net for it (a folder's: resized to its channels and side)
    train_flags: dict = field(default_factory=dict)  # python -m pylth.train's defaults over the dataclasses'
    ticket_flags: dict = field(default_factory=dict)  # python -m pylth.find_ticket's, over train_flags


DATASET_PRESETS: dict[str, DatasetPreset] = {
    # The offline demo: runs last a few hundred steps (Ho et al.'s 5000-step warm-up would cover all of
    # them), and find_ticket without arguments reaches 90 % sparsity in minutes on two CPU cores.
    "digits": DatasetPreset((1, 8, 8), 10, _DIGITS_UNET, train_flags=dict(lr=5e-4, warmup=100),
                            ticket_flags=dict(iterations=300, lr=1e-3, warmup=30, ema_decay=0.99, batch_size=64,
                                              checkpoint_every=100, fid_samples=256, sampler="ddim",
                                              sample_steps=20, target_sparsity=0.9)),
    "mnist": DatasetPreset((1, 28, 28), 10, _MNIST_UNET,
                           ticket_flags=dict(_PAPER_ROUNDS, iterations=100_000, fid_samples=10_000)),
    "fashion-mnist": DatasetPreset((1, 28, 28), 10, _MNIST_UNET,
                                   ticket_flags=dict(_PAPER_ROUNDS, iterations=100_000, fid_samples=10_000)),
    "cifar10": DatasetPreset((3, 32, 32), 10, _CIFAR_UNET, ticket_flags=_PAPER_ROUNDS),
    "cifar100": DatasetPreset((3, 32, 32), 100, _CIFAR_UNET, ticket_flags=_PAPER_ROUNDS),
    "folder": DatasetPreset(None, None, _CIFAR_UNET, ticket_flags=_PAPER_ROUNDS),
}
FOLDER_UNET_PRESET = "cifar10"  # the named U-Net preset a folder's network is resized from


def flag_defaults(dataset: str, command: str) -> dict:
    """The flag defaults of ``command`` ("train" or "find_ticket") for ``dataset`` (an unknown name:
    digits', so that --help still works before argparse rejects the name)."""
    preset = DATASET_PRESETS.get(dataset, DATASET_PRESETS["digits"])
    if command == "train":
        return dict(preset.train_flags)
    if command == "find_ticket":
        return {**preset.train_flags, **preset.ticket_flags}
    raise ValueError(f"command must be train or find_ticket, got {command!r}")
