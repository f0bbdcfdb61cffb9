"""A full disk (ENOSPC, injected through pylth.foundations.io's FileSystem seam: tests/fake_disk.py): the write that
fails is one line naming the file, the space it needs and the space free, exit 2; the old file stays,
no temp file is left, and the same command resumes once there is space."""
from __future__ import annotations

import os
import re

import pytest
import torch

from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.trainer import TrainConfig, train
from pylth.find_ticket import main
from pylth.foundations.io import DiskFullError, atomic_torch_save, atomic_write_bytes, torch_load, using_file_system

from fake_disk import FullDisk, used_bytes
from test_lottery_helpers import fake_calls, small_digits_unet

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1"]


def temp_files(folder) -> list[str]:
    return [n for _, _, names in os.walk(folder) for n in names if n.endswith(".tmp")]


def test_a_full_disk_names_the_file_and_the_space_and_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "w.pt")
    atomic_torch_save({"w": torch.zeros(1000)}, path, digest=True)
    sidecar = (tmp_path / ".w.pt.sha256").read_text()
    big = {"w": torch.ones(250_000)}  # 1 MB of tensor data
    with using_file_system(FullDisk(str(tmp_path), 600_000)):
        with pytest.raises(DiskFullError) as info:
            atomic_torch_save(big, path, digest=True)
    free = 600_000 - used_bytes(str(tmp_path))
    assert str(info.value) == (f"no space left on the device to write {path}: it needs about 1.0 MB and "
                               f"{free / 1e6:.1f} MB is free. Free at least {(1_004_608 - free) / 1e6:.1f} MB there "
                               "(or move the folder to a larger disk) and rerun the same command: what was written "
                               "before is intact")
    assert info.value.errno == 28 and info.value.filename == path
    assert torch.equal(torch_load(path)["w"], torch.zeros(1000)) and (tmp_path / ".w.pt.sha256").read_text() == sidecar
    assert temp_files(tmp_path) == []


def test_a_disk_full_of_bytes_is_the_same_error(tmp_path):
    with using_file_system(FullDisk(str(tmp_path), 100)):
        with pytest.raises(DiskFullError, match=f"^no space left on the device to write {tmp_path / 'b.png'}: it needs "
                                                "about 0.5 kB and 0.1 kB is free"):
            atomic_write_bytes(b"x" * 500, str(tmp_path / "b.png"))
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_leaves_the_last_one_and_training_resumes_exactly(tmp_path, digits):
    config = TrainConfig(iterations=4, batch_size=8, warmup=2, checkpoint_every=1, seed=3)
    straight = train(small_digits_unet(0), GaussianDiffusion(), digits, config)
    path = str(tmp_path / "checkpoint.pt")
    size = 0

    def measure(iteration, _model):
        nonlocal size
        if iteration == 2:
            size = os.path.getsize(path)

    train(small_digits_unet(0), GaussianDiffusion(), digits, TrainConfig(**{**config.__dict__, "iterations": 2}),
          checkpoint_path=path, on_iteration=measure)
    os.remove(path)
    os.remove(tmp_path / ".checkpoint.pt.sha256")
    # Room for one checkpoint, not for the next beside it (the old one stays until the new one is whole).
    with using_file_system(FullDisk(str(tmp_path), int(size * 1.5))):
        with pytest.raises(DiskFullError, match=f"^no space left on the device to write {re.escape(path)}: it needs "
                                                "about "):
            train(small_digits_unet(0), GaussianDiffusion(), digits, config, checkpoint_path=path)
    assert torch_load(path)["iteration"] == 1 and temp_files(tmp_path) == []
    resumed = train(small_digits_unet(0), GaussianDiffusion(), digits, config, checkpoint_path=path)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_find_ticket_on_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, capsys):
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert main(QUICK + ["--out", str(straight)], parts=fake_calls().parts) == 0
    rewind = os.path.getsize(straight / "rewind.pt")
    # Room for round 0's masks and theta_tau, not for its model.pt.
    capacity = os.path.getsize(straight / "round_00" / "mask.pt") + rewind + 200_000
    capsys.readouterr()
    with using_file_system(FullDisk(str(tmp_path / "run"), capacity)):
        assert main(QUICK + ["--out", str(out)], parts=fake_calls().parts) == 2
    err = capsys.readouterr().err
    model = out / "round_00" / "model.pt"
    assert err.count("\n") == 1 and re.match(f"python -m pylth.find_ticket: error: no space left on the device to "
                                             f"write {re.escape(str(model))}: it needs about 2.[89] MB and 0.2 MB is "
                                             "free. Free at least 2.[67] MB there", err), err
    assert "rerun the same command" in err and "Traceback" not in err
    assert temp_files(out) == [] and not model.exists()
    assert main(QUICK + ["--out", str(out)], parts=fake_calls().parts) == 0
    for name in ("rewind.pt", "round_00/model.pt", "round_01/mask.pt", "round_01/model.pt"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
