"""Loaders on small files written here in the real formats (IDX, CIFAR pickles, PNG folders)."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from pylth.ddpm.data import DATASETS, dataset_info, load_dataset


def write_idx(path, array, gz):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_set(folder, prefix, n, gz, rng):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, gz)
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, gz)
    return images, labels


@pytest.mark.parametrize("name,gz", [("mnist", False), ("fashion-mnist", True)])
def test_idx_loader_reads_images_and_labels(tmp_path, name, gz):
    rng = np.random.default_rng(0)
    images, labels = make_idx_set(tmp_path, "train", 7, gz, rng)
    test_images, _ = make_idx_set(tmp_path, "t10k", 3, gz, rng)
    ds = load_dataset(name, str(tmp_path))
    assert len(ds) == 7
    x, y = ds[4]
    assert x.shape == (1, 28, 28) and y == int(labels[4])
    torch.testing.assert_close(x[0], torch.from_numpy(images[4]).float() / 127.5 - 1.0)
    assert len(load_dataset(name, str(tmp_path), train=False)) == 3
    assert load_dataset(name, str(tmp_path), train=False).images[2].numpy()[0].tolist() == test_images[2].tolist()


def test_idx_in_torchvision_layout_is_found(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    make_idx_set(raw, "train", 2, True, np.random.default_rng(1))
    assert len(load_dataset("fashion-mnist", str(tmp_path))) == 2


def test_missing_and_corrupt_idx_files_name_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", str(tmp_path))
    assert "train-images-idx3-ubyte" in str(err.value) and str(tmp_path) in str(err.value)
    make_idx_set(tmp_path, "train", 4, False, np.random.default_rng(0))
    with open(tmp_path / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", str(tmp_path))
    assert "train-images-idx3-ubyte" in str(err.value) and str(tmp_path) in str(err.value)


def write_cifar_batch(path, n, label_key, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key: labels, b"batch_label": b"x"}, f)
    return data, labels


def test_cifar10_reads_five_train_batches_and_flips_only_when_training(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [write_cifar_batch(folder / f"data_batch_{i}", 2, b"labels", rng) for i in range(1, 6)]
    write_cifar_batch(folder / "test_batch", 3, b"labels", rng)
    ds = load_dataset("cifar10", str(tmp_path))
    assert len(ds) == 10 and ds.hflip
    data, labels = batches[2]
    expected = torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 127.5 - 1.0
    torch.manual_seed(0)
    seen = [ds[5][0] for _ in range(20)]
    assert all(torch.equal(x, expected) or torch.equal(x, expected.flip(-1)) for x in seen)
    assert any(torch.equal(x, expected.flip(-1)) for x in seen) and any(torch.equal(x, expected) for x in seen)
    assert ds[5][1] == labels[1]
    test = load_dataset("cifar10", str(tmp_path), train=False)
    assert len(test) == 3 and not test.hflip


def test_loader_batches_equal_the_items_one_by_one_flips_included():
    from torch.utils.data import DataLoader

    from pylth.ddpm.data import ImageDataset

    rng = np.random.default_rng(4)
    images = torch.from_numpy(rng.integers(0, 256, size=(40, 3, 6, 6), dtype=np.uint8))
    ds = ImageDataset(images, torch.from_numpy(rng.integers(0, 10, size=40)), 10, hflip=True)
    order = [int(i) for i in rng.permutation(40)[:32]]
    torch.manual_seed(1)
    one_by_one = [ds[i] for i in order]
    torch.manual_seed(1)
    (x, y), = DataLoader(ds, batch_sampler=[order], generator=torch.Generator())  # no draw from the global RNG
    assert y.tolist() == [label for _, label in one_by_one] == ds.labels[order].tolist()
    torch.testing.assert_close(x, torch.stack([item for item, _ in one_by_one]), rtol=0, atol=0)
    plain = images[order].float() / 127.5 - 1.0
    flipped = [bool(torch.equal(x[k], plain[k].flip(-1))) for k in range(32)]
    assert any(flipped) and not all(flipped)
    assert all(flipped[k] or torch.equal(x[k], plain[k]) for k in range(32))


def test_cifar100_uses_fine_labels_and_reports_missing_batches(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _, labels = write_cifar_batch(folder / "train", 4, b"fine_labels", np.random.default_rng(2))
    ds = load_dataset("cifar100", str(tmp_path))
    assert [ds[i][1] for i in range(4)] == labels and ds.num_classes == 100
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar100", str(tmp_path), train=False)
    assert "test" in str(err.value) and "cifar-100-python" in str(err.value)
    (folder / "train").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="corrupt cifar100 batch file train"):
        load_dataset("cifar100", str(tmp_path))


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset("folder", str(tmp_path))
    assert len(ds) == 4 and [ds[i][1] for i in range(4)] == [0, 0, 1, 1]
    assert ds[0][0].shape == (3, 16, 16)
    info = dataset_info("folder", str(tmp_path))
    assert info["image_shape"] == (3, 16, 16) and info["model_overrides"]["image_size"] == 16
    assert dataset_info("folder", str(tmp_path / "absent"), dataset=ds) == info  # the loaded set, not re-read
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(ValueError, match="odd.png"):
        load_dataset("folder", str(tmp_path))


def test_digits_is_bundled_and_split_without_overlap():
    train, test = load_dataset("digits"), load_dataset("digits", train=False)
    assert len(train) + len(test) == 1797 and len(test) == 360
    x, y = train[0]
    assert x.shape == (1, 8, 8) and -1.0 <= x.min() and x.max() <= 1.0 and 0 <= y < 10
    assert dataset_info("digits") == dict(image_shape=(1, 8, 8), num_classes=10, preset="digits")


def test_unknown_dataset_and_folder_without_root():
    assert "cifar10" in DATASETS
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="root"):
        load_dataset("folder")


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "folder"])
def test_each_data_set_names_a_preset_for_its_image_shape(name):
    from pylth.ddpm import PRESETS

    info = dataset_info(name)
    preset = PRESETS[info["preset"]]
    assert info["image_shape"] == (preset["in_channels"], preset["image_size"], preset["image_size"])
