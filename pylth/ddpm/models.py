"""Named U-Net presets: ``build_model("cifar10")`` is Ho et al.'s 35,746,307-parameter CIFAR-10 model."""
from __future__ import annotations

from pylth.ddpm.unet import UNet

# Ho et al. 2020, CIFAR-10 (and the same network for CIFAR-100).
_CIFAR = dict(in_channels=3, image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
              dropout=0.1)
# 28x28 needs no padding with three levels (28 -> 14 -> 7); attention at 14x14.
_MNIST = dict(in_channels=1, image_size=28, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,),
              dropout=0.1)

PRESETS: dict[str, dict] = {
    "cifar10": dict(_CIFAR),
    "cifar100": dict(_CIFAR),
    "mnist": dict(_MNIST),
    "fashion-mnist": dict(_MNIST),
    # scikit-learn's 8x8 digits: small enough to train in minutes on two CPU cores.
    "digits": dict(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                   attn_resolutions=(4,), dropout=0.1),
}


def build_model(name: str, **overrides) -> UNet:
    """The U-Net preset ``name`` (one of PRESETS), with constructor arguments overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return UNet(**{**PRESETS[name], **overrides})
