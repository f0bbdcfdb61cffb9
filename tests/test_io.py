import os
import pickle
import stat

import pytest
import torch

from pylth.io import atomic_torch_save, atomic_write_json, torch_load


def test_atomic_writes_round_trip_and_leave_no_temp_files(tmp_path):
    atomic_torch_save({"w": torch.arange(3.0)}, str(tmp_path / "sub" / "a.pt"))
    atomic_write_json({"x": 1}, str(tmp_path / "b.json"))
    assert torch.equal(torch_load(str(tmp_path / "sub" / "a.pt"))["w"], torch.arange(3.0))
    assert sorted(os.listdir(tmp_path)) == ["b.json", "sub"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "c.pt")
    atomic_torch_save({"old": torch.ones(2)}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda: 0}, path)  # pickling fails half-way through the write
    assert torch.equal(torch_load(path)["old"], torch.ones(2))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json({}, str(tmp_path / "d.json"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "d.json").st_mode) == 0o644


def test_torch_load_refuses_pickled_code(tmp_path):
    path = str(tmp_path / "e.pt")
    torch.save({"f": os.getcwd}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch_load(path)
