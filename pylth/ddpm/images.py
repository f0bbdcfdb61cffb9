"""Sample grids as PNG files: what samples.png holds, for pylth.train and every find_ticket round."""
from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F


def grid_png(images, min_side: int = 32) -> bytes:
    """A PNG grid of images in [-1, 1] (N x C x H x W); small images are enlarged (nearest) to be seen."""
    from PIL import Image
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[-1] < min_side:
        images = F.interpolate(images, scale_factor=math.ceil(min_side / images.shape[-1]), mode="nearest")
    grid = make_grid((images + 1) / 2, nrow=int(math.ceil(math.sqrt(len(images)))), padding=2, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
