"""pylth's U-Net as diffusers' UNet2DModel: the configuration that builds the same network, and the
key mapping of its weights (no diffusers needed for either).

Both follow Ho et al.: the same res blocks (GroupNorm-SiLU-conv, the projected time embedding,
GroupNorm-SiLU-dropout-conv, a 1x1 shortcut), single-head attention, stride-2 3x3 downsampling with
padding 1, nearest upsampling then a 3x3 conv. The differences that the configuration settles:
pylth's GroupNorms use eps 1e-5 (google/ddpm-cifar10-32: 1e-6); its sinusoidal embedding is sin then
cos with frequencies exp(-ln(10000) i / (half - 1)), which is diffusers' flip_sin_to_cos=False,
freq_shift=1; its attention projections are 1x1 convolutions where diffusers' are Linear layers (the
weights are reshaped). A pylth U-Net that zero-pads its inputs inside forward (a side not divisible
by 2**(levels-1)) or whose first level widens the head's channels has no UNet2DModel counterpart and
is refused.
"""
from __future__ import annotations

import torch

# pylth ResBlock / AttnBlock submodule -> diffusers ResnetBlock2D / Attention submodule
RES_BLOCK_KEYS = {"b1.0": "norm1", "b1.2": "conv1", "t.1": "time_emb_proj", "b2.0": "norm2", "b2.3": "conv2",
                  "sc": "conv_shortcut"}
ATTENTION_KEYS = {"n": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "p": "to_out.0"}
PYLTH_GROUPNORM_EPS = 1e-5  # torch's default, which pylth's U-Net keeps


def diffusers_config(config: dict) -> dict:
    """The UNet2DModel arguments that build pylth's U-Net of ``config`` (a ``unet_config`` dict)."""
    size, ch, mult = config["image_size"], config["ch"], tuple(config["ch_mult"])
    factor = 2 ** (len(mult) - 1)
    if size % factor:
        raise ValueError(f"this pylth U-Net zero-pads its {size}x{size} inputs to a multiple of {factor} inside "
                         f"forward; diffusers' UNet2DModel does not, so it has no UNet2DModel counterpart")
    if mult[0] != 1:
        raise ValueError(f"ch_mult starts at {mult[0]}: the first level widens the head's {ch} channels, which "
                         f"UNet2DModel's first block does not")
    attends = [size // 2 ** level in tuple(config["attn_resolutions"]) for level in range(len(mult))]
    return dict(
        sample_size=size, in_channels=config["in_channels"], out_channels=config["in_channels"],
        block_out_channels=[ch * m for m in mult], layers_per_block=config["num_res_blocks"],
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        mid_block_type="UNetMidBlock2D", add_attention=True, attention_head_dim=None,
        downsample_padding=1, downsample_type="conv", upsample_type="conv", resnet_time_scale_shift="default",
        flip_sin_to_cos=False, freq_shift=1, time_embedding_type="positional",
        norm_num_groups=config["norm_groups"], norm_eps=PYLTH_GROUPNORM_EPS, act_fn="silu",
        dropout=config["dropout"], center_input_sample=False, mid_block_scale_factor=1)


def diffusers_state(config: dict, state: dict) -> dict:
    """pylth U-Net weights (``config``'s ``state_dict``) under UNet2DModel's names and shapes."""
    out, used = {}, set()

    def move(src: str, dst: str, linear: bool = False) -> None:
        for suffix in ("weight", "bias"):
            key = f"{src}.{suffix}"
            if key in state:
                tensor = state[key]
                out[f"{dst}.{suffix}"] = tensor.reshape(tensor.shape[:2]) if linear and tensor.ndim == 4 else tensor
                used.add(key)

    def res_block(src: str, dst: str, attention_dst: str | None) -> None:
        for a, b in RES_BLOCK_KEYS.items():
            move(f"{src}.{a}", f"{dst}.{b}")
        if attention_dst is not None:
            for a, b in ATTENTION_KEYS.items():
                move(f"{src}.attn.{a}", f"{attention_dst}.{b}", linear=a != "n")

    diffusers = diffusers_config(config)
    levels, blocks = len(config["ch_mult"]), config["num_res_blocks"]
    move("temb.mlp.0", "time_embedding.linear_1")
    move("temb.mlp.2", "time_embedding.linear_2")
    move("head", "conv_in")
    index = 0  # position in pylth's down list: per level its res blocks, then a downsample
    for level in range(levels):
        attends = diffusers["down_block_types"][level].startswith("Attn")
        for j in range(blocks):
            res_block(f"down.{index}", f"down_blocks.{level}.resnets.{j}",
                      f"down_blocks.{level}.attentions.{j}" if attends else None)
            index += 1
        if level != levels - 1:
            move(f"down.{index}", f"down_blocks.{level}.downsamplers.0.conv")
            index += 1
    res_block("mid.0", "mid_block.resnets.0", "mid_block.attentions.0")
    res_block("mid.1", "mid_block.resnets.1", None)
    index = 0  # pylth's up list: per level, deepest first, its res blocks, then an upsample
    for k in range(levels):
        attends = diffusers["up_block_types"][k].startswith("Attn")
        for j in range(blocks + 1):
            res_block(f"up.{index}", f"up_blocks.{k}.resnets.{j}", f"up_blocks.{k}.attentions.{j}" if attends else None)
            index += 1
        if k != levels - 1:
            move(f"up.{index}.1", f"up_blocks.{k}.upsamplers.0.conv")  # up.i = (nn.Upsample, Conv2d)
            index += 1
    move("tail.0", "conv_norm_out")
    move("tail.2", "conv_out")
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"the U-Net weights hold {len(left)} tensors with no UNet2DModel counterpart "
                         f"(first: {left[0]}); are they of this configuration?")
    return out


def as_diffusers(config: dict, state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(UNet2DModel config, its state_dict)`` of pylth's U-Net ``config`` holding ``state``."""
    return diffusers_config(config), diffusers_state(config, state)
