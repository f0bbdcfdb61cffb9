"""The DDPM of Ho et al. 2020: model kinds and pylth's U-Net (``pylth.ddpm.models``), the noise
schedule with its training loss (``GaussianDiffusion``), samplers (``pylth.ddpm.samplers``), offline
data sets (``pylth.ddpm.data``) and the masked trainer (``pylth.ddpm.trainer``). How a model is
scored (FID/KID, the held-out loss) is ``pylth.evaluation``."""
from pylth.ddpm.diffusion import GaussianDiffusion
from pylth.ddpm.models import PRESETS, UNet, build_model

__all__ = ["GaussianDiffusion", "PRESETS", "UNet", "build_model"]
