import hashlib
import os
import pickle
import stat

import pytest
import torch

from pylth.io import UnreadableFileError, atomic_torch_save, atomic_write_json, sha256_file, torch_load


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


def test_torch_load_refuses_pickled_code_naming_the_file(tmp_path):
    path = str(tmp_path / "e.pt")
    torch.save({"f": os.getcwd}, path)
    with pytest.raises(UnreadableFileError, match=f"cannot read {path} .*weights_only") as info:
        torch_load(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_torch_load_names_a_damaged_or_missing_file_and_says_what_to_do(tmp_path):
    path = str(tmp_path / "f.pt")
    atomic_torch_save({"w": torch.arange(1000.0)}, path)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match=f"^cannot read {path} \\(PytorchStreamReader failed reading zip "
                                                  "archive: failed finding central directory\\): it is damaged or is "
                                                  "not a file pylth wrote. Delete it.$"):
        torch_load(path, remedy="Delete it.")
    with pytest.raises(UnreadableFileError, match=f"^{tmp_path}/none.pt is missing.$"):
        torch_load(str(tmp_path / "none.pt"))


def test_sha256_file_is_hashlibs_digest_of_the_bytes(tmp_path):
    path = tmp_path / "g.bin"
    data = bytes(range(256)) * 5000  # several read chunks
    path.write_bytes(data)
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
