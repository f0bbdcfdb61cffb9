"""The DDPM of Ho et al. 2020: U-Net (``build_model``), diffusion and samplers
(``GaussianDiffusion``), offline data sets (``pylth.ddpm.data``), the masked trainer
(``pylth.ddpm.trainer``) and FID/KID (``pylth.ddpm.fid``)."""
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.models import PRESETS, build_model
from pylth.ddpm.unet import UNet

__all__ = ["GaussianDiffusion", "PRESETS", "UNet", "build_model"]
