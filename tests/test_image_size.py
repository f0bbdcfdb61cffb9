"""--image-size: a data set's images resized (area averaging down, bilinear up), checked against PIL,
OpenCV and torch's own resizing, and carried through the model, the run's config and the FID caches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pylth.ddpm.data import dataset_info, dataset_key, load_dataset, resize_images
from pylth.find_ticket import main
from test_lottery_helpers import fake  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "0"]


def _images(n=6, side=28, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, side, side), dtype=np.uint8))


def test_halving_is_the_mean_of_each_2x2_block_as_pil_box_and_torch_area_give_it():
    from PIL import Image

    x = _images()
    ours = resize_images(x, 14)
    blocks = x.double().reshape(6, 1, 14, 2, 14, 2).mean(dim=(3, 5))
    assert torch.equal(ours, blocks.round().to(torch.uint8))  # numpy-free exact check: round of the block mean
    assert torch.equal(ours, F.interpolate(x.float(), size=14, mode="area").round().to(torch.uint8))
    pil = np.stack([np.asarray(Image.fromarray(im[0].numpy()).resize((14, 14), Image.BOX))[None] for im in x])
    assert np.abs(ours.numpy().astype(int) - pil).max() <= 1  # PIL rounds between its two passes


@pytest.mark.parametrize("size", [9, 10, 27])
def test_shrinking_by_a_fraction_weighs_pixels_by_their_overlap_as_opencv_inter_area(size):
    cv2 = pytest.importorskip("cv2")
    x = _images()
    expected = np.stack([cv2.resize(im[0].numpy(), (size, size), interpolation=cv2.INTER_AREA)[None] for im in x])
    assert np.abs(resize_images(x, size).numpy().astype(int) - expected).max() <= 1


@pytest.mark.parametrize("size", [40, 56])
def test_enlarging_is_bilinear_with_half_pixel_centres_as_torch_and_pil(size):
    from PIL import Image

    x = _images()
    ours = resize_images(x, size).numpy().astype(int)
    torch_bilinear = F.interpolate(x.double(), size=size, mode="bilinear", align_corners=False).round().numpy()
    pil = np.stack([np.asarray(Image.fromarray(im[0].numpy()).resize((size, size), Image.BILINEAR))[None] for im in x])
    assert np.abs(ours - torch_bilinear).max() <= 1 and np.abs(ours - pil).max() <= 1
    assert resize_images(x, 28) is x  # the native size: untouched


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "14"])
def test_a_bad_size_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=bad)


def test_a_resized_data_set_changes_shape_and_cache_key_but_keeps_labels():
    native, resized = load_dataset("digits"), load_dataset("digits", image_size=16)
    assert resized.images.shape[1:] == (1, 16, 16) and torch.equal(resized.labels, native.labels)
    assert resized[0][0].shape == (1, 16, 16) and resized.native_size == 8 and native.native_size is None
    assert dataset_key("digits", resized).startswith("digits-16px-") and "px" not in dataset_key("digits", native)
    assert dataset_info("digits", image_size=16)["image_shape"] == (1, 16, 16)


def test_find_ticket_records_the_size_and_builds_the_model_for_it(fake, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(QUICK + ["--image-size", "16", "--out", str(out)], parts=fake.parts) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["image_size"] == 16 and config["image_shape"] == [1, 16, 16]
    assert config["model"]["image_size"] == 16
    # the digits preset attends at 4x4, level 1 of 8x8: at 16x16 that level is 8x8
    assert config["model"]["attn_resolutions"] == [8]


def test_a_bad_image_size_flag_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(QUICK + ["--image-size", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m pylth.find_ticket: error: --image-size") and "\n" not in err
    assert not out.exists()
