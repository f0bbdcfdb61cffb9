"""Model kinds, registered by name (``MODELS``). A kind is one file in this folder that calls
``register``: how to configure the model for a data set, build it, group its prunable weights into
modules in forward order, and call it for a noise prediction. ``--model NAME`` picks one; a run
records the kind and its configuration, and everything that builds or loads a model goes through
``model_kind(name)``."""
from pylth.ddpm.models.registry import (MODELS, ModelKind, SavedModel, call_model, kind_of, model_kind, register,
                                        resolve_model)
from pylth.ddpm.models.unet import PRESETS, UNet, build_model  # registers "unet"
from pylth.ddpm.models import diffusers_unet2d  # noqa: F401  registers "diffusers-unet2d" (imports diffusers lazily)

DEFAULT_MODEL = "unet"

__all__ = ["DEFAULT_MODEL", "MODELS", "ModelKind", "PRESETS", "SavedModel", "UNet", "build_model", "call_model",
           "kind_of", "model_kind", "register", "resolve_model"]
