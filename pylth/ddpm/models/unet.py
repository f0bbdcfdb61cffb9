"""The DDPM U-Net of Ho et al. 2020: plain Conv2d, GroupNorm, sinusoidal time embedding + MLP,
residual blocks with dropout and self-attention at chosen resolutions.

Submodules are registered in forward order, so ``named_parameters()`` lists weights upstream first
(the order Algorithm 1 prunes in). Parameter names follow bench/ddpm_cifar10_param_shapes.json.
Inputs whose side is not a multiple of 2**(levels-1) (e.g. 28x28 with four levels) are zero-padded
up to the next multiple inside ``forward`` and the prediction is cropped back, so callers see their
own size; attention resolutions refer to the padded sizes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pylth.ddpm.models.dropout import KeyedDropout
from pylth.ddpm.models.registry import ModelKind, register
from pylth.ddpm.models.unet_to_diffusers import as_diffusers
from pylth.ddpm.presets import DATASET_PRESETS


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sin/cos embedding of integer timesteps (a fixed table, not a parameter)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeEmbedding(nn.Module):
    def __init__(self, ch: int, tdim: int):
        super().__init__()
        self.ch = ch
        self.mlp = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.ch))


class Downsample(nn.Conv2d):
    def __init__(self, ch: int):
        super().__init__(ch, ch, 3, stride=2, padding=1)


class Upsample(nn.Sequential):
    def __init__(self, ch: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with a residual connection."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.n = nn.GroupNorm(groups, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.p = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.n(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.p(out.transpose(2, 3).reshape(b, c, h, w))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, plus the projected time embedding, GroupNorm-SiLU-Dropout-Conv, a 1x1
    shortcut when the channel count changes, then optional attention. The dropout is keyed (the
    trainer keys its masks by step and global row: the same in one process as in N)."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, attn: bool, groups: int):
        super().__init__()
        self.b1 = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.t = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.b2 = nn.Sequential(nn.GroupNorm(groups, out_ch), nn.SiLU(), KeyedDropout(dropout),
                                nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.sc = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch, groups) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.b1(x) + self.t(temb)[:, :, None, None]
        h = self.b2(h) + self.sc(x)
        return self.attn(h)


def unet_config(in_channels: int = 3, image_size: int = 32, ch: int = 128, ch_mult=(1, 2, 2, 2),
                num_res_blocks: int = 2, attn_resolutions=(16,), dropout: float = 0.1, norm_groups: int = 32) -> dict:
    """The U-Net's constructor arguments, checked and complete (what a run records), without building it."""
    ch_mult, attn_resolutions = tuple(int(m) for m in ch_mult), tuple(int(r) for r in attn_resolutions)
    for name, value in (("in_channels", in_channels), ("image_size", image_size), ("ch", ch),
                        ("num_res_blocks", num_res_blocks), ("norm_groups", norm_groups)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not ch_mult or min(ch_mult) <= 0:
        raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {ch_mult!r}")
    if any((ch * m) % norm_groups for m in ch_mult):
        raise ValueError(f"ch * each ch_mult must be divisible by norm_groups={norm_groups}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    reached = level_sizes(image_size, len(ch_mult))
    missed = [r for r in attn_resolutions if r not in reached]
    if missed:
        raise ValueError(f"attn_resolutions {missed} are never reached: at {image_size}x{image_size} with "
                         f"{len(ch_mult)} levels the feature maps are {', '.join(f'{r}x{r}' for r in reached)}")
    return dict(in_channels=in_channels, image_size=image_size, ch=ch, ch_mult=ch_mult,
                num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                norm_groups=norm_groups)


def level_sizes(image_size: int, levels: int) -> list[int]:
    """The feature-map sides of each level: the image padded up to a multiple of 2**(levels-1), halved."""
    factor = 2 ** (levels - 1)
    padded = -(-image_size // factor) * factor
    return [padded >> level for level in range(levels)]


class UNet(nn.Module):
    """Noise-prediction U-Net: ``forward(x, t)`` maps images [B, C, H, W] and timesteps [B] to noise."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, ch: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16,), dropout: float = 0.1, norm_groups: int = 32):
        super().__init__()
        self.config = unet_config(in_channels=in_channels, image_size=image_size, ch=ch, ch_mult=ch_mult,
                                  num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                                  dropout=dropout, norm_groups=norm_groups)
        ch_mult, attn_resolutions = self.config["ch_mult"], self.config["attn_resolutions"]
        self.padded_size = level_sizes(image_size, len(ch_mult))[0]
        tdim = 4 * ch
        block = lambda i, o, res: ResBlock(i, o, tdim, dropout, res in attn_resolutions, norm_groups)  # noqa: E731

        self.temb = TimeEmbedding(ch, tdim)
        self.head = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs, cur, res = [ch], ch, self.padded_size
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(cur, ch * mult, res))
                cur = ch * mult
                skip_chs.append(cur)
            if level != len(ch_mult) - 1:
                self.down.append(Downsample(cur))
                skip_chs.append(cur)
                res //= 2
        # Ho et al.: the first middle block always attends, the second never does.
        self.mid = nn.ModuleList([ResBlock(cur, cur, tdim, dropout, True, norm_groups),
                                  ResBlock(cur, cur, tdim, dropout, False, norm_groups)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(cur + skip_chs.pop(), ch * mult, res))
                cur = ch * mult
            if level != 0:
                self.up.append(Upsample(cur))
                res *= 2
        self.tail = nn.Sequential(nn.GroupNorm(norm_groups, cur), nn.SiLU(), nn.Conv2d(cur, in_channels, 3, padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        # Ho et al.: Xavier-uniform everywhere, zero biases, and (near-)zero output layers of each
        # residual branch so every block starts close to the identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.xavier_uniform_(m.b2[-1].weight, gain=1e-5)
            if isinstance(m, AttnBlock):
                nn.init.xavier_uniform_(m.p.weight, gain=1e-5)
        nn.init.xavier_uniform_(self.tail[-1].weight, gain=1e-5)

    def pruning_groups(self) -> list[tuple[str, nn.Module]]:
        """The U-Net's blocks in forward order: time-embedding MLP, head conv, each down block
        (a res block with its attention, or a downsample), the middle blocks, each up block, the
        output head. Every parameter belongs to exactly one group."""
        groups = [("temb", self.temb), ("head", self.head)]
        groups += [(f"down.{i}", m) for i, m in enumerate(self.down)]
        groups += [(f"mid.{i}", m) for i, m in enumerate(self.mid)]
        groups += [(f"up.{i}", m) for i, m in enumerate(self.up)]
        return groups + [("tail", self.tail)]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"] or x.shape[-2:] != (size, size):
            raise ValueError(f"x must have shape [B, {self.config['in_channels']}, S, S], got {tuple(x.shape)}")
        if not isinstance(t, torch.Tensor) or t.shape != x.shape[:1]:
            raise ValueError(f"t must be a tensor of shape ({x.shape[0]},), one timestep per image, "
                             f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        pad = self.padded_size - size if size == self.config["image_size"] else 0
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        temb = self.temb(t)
        h = self.head(x)
        skips = [h]
        for m in self.down:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h)
            skips.append(h)
        for m in self.mid:
            h = m(h, temb)
        for m in self.up:
            h = m(torch.cat([h, skips.pop()], dim=1), temb) if isinstance(m, ResBlock) else m(h)
        h = self.tail(h)
        return h[..., :size, :size] if pad else h


def build_model(name: str, **overrides) -> UNet:
    """The U-Net preset ``name`` (one of PRESETS), with constructor arguments overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return UNet(**{**PRESETS[name], **overrides})


def config_for_dataset(dataset: str, image_shape) -> dict:
    """pylth's U-Net for ``dataset``: its preset, sized to ``image_shape``'s channels and side."""
    if dataset not in DATASET_PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_PRESETS)}")
    channels, height, width = (int(s) for s in image_shape)
    if height != width:
        raise ValueError(f"pylth's U-Net needs square images, got {height}x{width}")
    preset = DATASET_PRESETS[dataset].unet
    return unet_config(**{**preset, "in_channels": channels, "image_size": height,
                          "attn_resolutions": _attention_at(preset, height)})


def _attention_at(preset: dict, side: int) -> tuple:
    """The preset's attention resolutions for images of ``side``: each one this side's network never
    reaches (e.g. 14 of the 28x28 preset at 14x14, where the maps are 16, 8, 4) moves to the size of
    the level it had at the preset's own side, so that a resized network attends at the same depth."""
    levels = len(preset["ch_mult"])
    native, here = level_sizes(preset["image_size"], levels), level_sizes(side, levels)
    return tuple(r if r in here else here[native.index(r)] for r in preset["attn_resolutions"])


# The U-Net presets by name: one per named data set (a folder takes cifar10's, resized).
PRESETS: dict[str, dict] = {name: dict(p.unet) for name, p in DATASET_PRESETS.items() if p.image_shape is not None}

register(ModelKind(
    name="unet",
    summary="pylth's DDPM U-Net (Ho et al. 2020; the paper's CIFAR-10 network at 32x32)",
    config_for=config_for_dataset,
    build=lambda config: UNet(**config),
    pruning_groups=lambda model: model.pruning_groups(),
    as_diffusers=as_diffusers,
    image_shape=lambda config: (config["in_channels"], config["image_size"], config["image_size"]),
    config_of=lambda model: dict(model.config) if isinstance(model, UNet) else None,
    configure=lambda config, image_shape: unet_config(**config),
    fixed_by_data=("in_channels", "image_size"),
))
