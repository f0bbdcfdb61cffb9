"""Shared pieces of the diffusers tests: tiny UNet2DModel configurations and a local save_pretrained folder."""
from __future__ import annotations

import torch

# 8x8, one channel, every kind of group: two levels, attention in the second (so the up path starts
# with an attending block), a downsampler and an upsampler, the mid block's attention.
TINY_UNET2D = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                   norm_num_groups=4, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1)
# Three levels, two res blocks, attention in the middle level: downsamplers on both sides of it.
THREE_LEVEL_UNET2D = dict(TINY_UNET2D, block_out_channels=(8, 16, 16), layers_per_block=2,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def tiny_config(**overrides) -> dict:
    from pylth.ddpm.models.diffusers_unet2d import complete_config

    return complete_config(dict(TINY_UNET2D, **overrides))


def saved_unet(folder: str, seed: int = 0, **overrides):
    """A UNet2DModel of TINY_UNET2D with seeded random weights, saved to ``folder`` by save_pretrained."""
    import diffusers

    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**dict(TINY_UNET2D, **overrides))
    model.save_pretrained(folder)
    return model
