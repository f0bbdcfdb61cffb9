"""The model kind "diffusers-unet2d": huggingface diffusers' UNet2DModel, built from a configuration
(never downloaded) or read from a local ``save_pretrained`` folder (``--init-from``, offline).

diffusers is an optional extra and is imported only when this kind is used, so pylth imports without
it; choosing the kind without diffusers is a one-line error naming the extra to install.
"""
from __future__ import annotations

import inspect
import json
import os
import sys

from pylth.ddpm.models.dropout import swap_dropouts
from pylth.ddpm.models.registry import ModelKind, SavedModel, register

INSTALL_HINT = 'pip install ".[diffusers]"'
CONFIG_FILE = "config.json"
WEIGHTS_PREFIX = "diffusion_pytorch_model"  # .safetensors, .bin, or shards with an index

# google/ddpm-cifar10-32: Ho et al.'s CIFAR-10 U-Net in diffusers' layout (35,746,307 parameters; the
# asymmetric padding of the original TensorFlow downsampling, GroupNorm eps 1e-6). The hub's config
# predates UNet2DModel's dropout field; Ho et al. trained it with dropout 0.1, as this does.
GOOGLE_DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    norm_num_groups=32, act_fn="silu", center_input_sample=False, time_embedding_type="positional",
    mid_block_scale_factor=1, dropout=0.1)
# 28x28 (28 -> 14 -> 7), attention at 14x14: pylth's MNIST U-Net in the same conventions.
MNIST_UNET2D = dict(GOOGLE_DDPM_CIFAR10, sample_size=28, in_channels=1, out_channels=1,
                    block_out_channels=(64, 128, 128),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
# 8x8 digits, attention at 4x4, one res block per level: trains in minutes on two CPU cores.
DIGITS_UNET2D = dict(GOOGLE_DDPM_CIFAR10, sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                     layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))
CONFIGS = {"digits": DIGITS_UNET2D, "mnist": MNIST_UNET2D, "fashion-mnist": MNIST_UNET2D,
           "cifar10": GOOGLE_DDPM_CIFAR10, "cifar100": GOOGLE_DDPM_CIFAR10, "folder": GOOGLE_DDPM_CIFAR10}


def import_diffusers():
    """The diffusers module, or a ValueError saying how to install it."""
    try:
        import diffusers
    except ImportError as exc:
        raise ValueError(f"model diffusers-unet2d needs huggingface diffusers ({exc}); install it with "
                         f"{INSTALL_HINT}") from None
    return diffusers


def check_usable() -> None:
    import_diffusers()


def complete_config(config: dict) -> dict:
    """``config`` with every other UNet2DModel argument at its default, as JSON sees it: what a run
    records is then exactly what is built, whatever the defaults of a later diffusers."""
    signature = inspect.signature(import_diffusers().UNet2DModel.__init__)
    defaults = {name: p.default for name, p in signature.parameters.items()
                if name != "self" and p.default is not inspect.Parameter.empty}
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"UNet2DModel has no argument {', '.join(unknown)}")
    return json.loads(json.dumps({**defaults, **config}))


def check_config(config: dict, image_shape) -> None:
    """What pylth can train: an unconditional noise predictor for square images of ``image_shape``."""
    channels, height, width = (int(s) for s in image_shape)
    if height != width:
        raise ValueError(f"diffusers-unet2d here needs square images, got {height}x{width}")
    size = config["sample_size"]
    if size != height:
        raise ValueError(f"the UNet2DModel is for {size}x{size} images (sample_size), the data set's are "
                         f"{height}x{width}")
    if config["in_channels"] != channels or config["out_channels"] != channels:
        raise ValueError(f"the UNet2DModel maps {config['in_channels']} to {config['out_channels']} channels; "
                         f"a noise predictor for these images maps {channels} to {channels}")
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if height % factor:
        raise ValueError(f"UNet2DModel with {len(config['block_out_channels'])} levels needs a side divisible "
                         f"by {factor}, got {height}")
    if config["time_embedding_type"] != "positional":
        raise ValueError(f"time_embedding_type {config['time_embedding_type']!r} is not a DDPM noise predictor's "
                         f"(pylth trains the positional embedding)")
    if config["class_embed_type"] is not None or config["num_class_embeds"] is not None:
        raise ValueError("the UNet2DModel is class-conditional; pylth trains unconditional DDPMs")


def config_for_dataset(dataset: str, image_shape) -> dict:
    """The UNet2DModel for ``dataset``: google/ddpm-cifar10-32's for 32x32 (and folders, resized to
    their side and channels), smaller ones for 28x28 and 8x8."""
    if dataset not in CONFIGS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(CONFIGS)}")
    channels, side = int(image_shape[0]), int(image_shape[-1])
    return configure(dict(CONFIGS[dataset], sample_size=side, in_channels=channels, out_channels=channels),
                     image_shape)


def configure(config: dict, image_shape) -> dict:
    """``config`` completed (every UNet2DModel argument) and checked against the images."""
    config = complete_config(config)
    check_config(config, image_shape)
    return config


def build(config: dict):
    """The UNet2DModel, its nn.Dropout layers keyed (KeyedDropout: the trainer keys their masks by step
    and global row, so one process trains as N do); its state_dict is diffusers' own."""
    return swap_dropouts(import_diffusers().UNet2DModel(**config))


def predict(model, x, t):
    return model(x, t, return_dict=False)[0]


def pruning_groups(model) -> list:
    """The UNet2DModel's modules in the order its forward runs them: the time embedding (computed
    first), conv_in, then per down block each resnet with the attention after it and the
    downsampler, the mid block's resnet, attention, resnet, the up blocks likewise, conv_out."""
    groups = [("time_embedding", model.time_embedding)]
    if model.class_embedding is not None:
        groups.append(("class_embedding", model.class_embedding))
    groups.append(("conv_in", model.conv_in))
    for i, block in enumerate(model.down_blocks):
        groups += _block_groups(f"down_blocks.{i}", block)
    if model.mid_block is not None:
        groups += _mid_block_groups(model.mid_block)
    for i, block in enumerate(model.up_blocks):
        groups += _block_groups(f"up_blocks.{i}", block)
    return groups + [("conv_out", model.conv_out)]


def _block_groups(prefix: str, block) -> list:
    """A down or up block: resnet j then attention j (when the block attends), ..., then its resampler."""
    attentions = list(getattr(block, "attentions", None) or [])
    groups = []
    for j, resnet in enumerate(block.resnets):
        groups.append((f"{prefix}.resnets.{j}", resnet))
        if j < len(attentions):
            groups.append((f"{prefix}.attentions.{j}", attentions[j]))
    for name in ("downsamplers", "upsamplers"):
        groups += [(f"{prefix}.{name}.{j}", m) for j, m in enumerate(getattr(block, name, None) or [])]
    return groups


def _mid_block_groups(block) -> list:
    """resnet 0, then attention j and resnet j + 1 (attention None: add_attention=False)."""
    groups = [("mid_block.resnets.0", block.resnets[0])]
    for j, resnet in enumerate(block.resnets[1:]):
        if block.attentions[j] is not None:
            groups.append((f"mid_block.attentions.{j}", block.attentions[j]))
        groups.append((f"mid_block.resnets.{j + 1}", resnet))
    return groups


def model_folder(folder: str) -> str:
    """The folder that holds the UNet2DModel of ``folder``: itself (``save_pretrained``'s layout of a
    model) or, for a pipeline folder, its ``unet/``."""
    if not os.path.isdir(folder):
        raise ValueError(f"--init-from {folder} is not a folder")
    path = folder if os.path.isfile(os.path.join(folder, CONFIG_FILE)) else os.path.join(folder, "unet")
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise ValueError(f"--init-from {folder} holds no diffusers model ({CONFIG_FILE} or unet/{CONFIG_FILE}, "
                         f"as save_pretrained writes them)")
    return path


def read_folder(folder: str, image_shape) -> SavedModel:
    """The UNet2DModel saved in ``folder`` (see ``model_folder``), its configuration checked against
    ``image_shape``. Reads local files only."""
    path = model_folder(folder)
    unet_class = import_diffusers().UNet2DModel
    try:
        saved = unet_class.load_config(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--init-from {path}/{CONFIG_FILE} cannot be read: {exc}") from None
    if saved.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"--init-from {path} holds a {saved['_class_name']}, not a UNet2DModel")
    init, _unused, _hidden = unet_class.extract_init_dict(saved)
    config = complete_config(dict(init))
    try:
        check_config(config, image_shape)
    except ValueError as exc:
        raise ValueError(f"--init-from {path}: {exc}") from None
    weights = sorted(n for n in os.listdir(path) if n.startswith(WEIGHTS_PREFIX))
    if not weights:
        raise ValueError(f"--init-from {path} holds no weights ({WEIGHTS_PREFIX}.safetensors or .bin)")
    return SavedModel(folder=path, config=config, files=(CONFIG_FILE, *weights))


def config_of(model) -> dict | None:
    """The complete configuration of a UNet2DModel (None for other models). Looks only when diffusers
    is already imported: a model cannot be a UNet2DModel otherwise."""
    diffusers = sys.modules.get("diffusers")
    if diffusers is None or not isinstance(model, diffusers.UNet2DModel):
        return None
    init, _unused, _hidden = diffusers.UNet2DModel.extract_init_dict(dict(model.config))
    return complete_config(dict(init))


def folder_weights(folder: str) -> dict:
    """The state_dict of the UNet2DModel saved in ``folder`` (see ``model_folder``), loaded offline by
    diffusers (which also renames the attention weights of folders saved by old versions)."""
    model = import_diffusers().UNet2DModel.from_pretrained(model_folder(folder), local_files_only=True)
    return model.state_dict()


register(ModelKind(
    name="diffusers-unet2d",
    summary="huggingface diffusers' UNet2DModel (google/ddpm-cifar10-32's configuration at 32x32; needs "
            f'{INSTALL_HINT})',
    config_for=config_for_dataset,
    build=build,
    pruning_groups=pruning_groups,
    predict=predict,
    check_usable=check_usable,
    read_folder=read_folder,
    folder_weights=folder_weights,
    as_diffusers=lambda config, state: (config, state),
    image_shape=lambda config: (config["in_channels"], config["sample_size"], config["sample_size"]),
    config_of=config_of,
    configure=configure,
    fixed_by_data=("sample_size", "in_channels", "out_channels"),
))
