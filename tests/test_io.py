import hashlib
import os
import pickle
import stat

import pytest
import torch

from pylth.foundations.io import (UnreadableFileError, atomic_torch_save, atomic_write_json, digest_path,
                                  digest_problem, ensure_file_writable, remove_digest, remove_file,
                                  remove_stale_temp_files, sha256_file, torch_load)


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


def flip_a_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) * 2 // 3] ^= 0x5A  # inside tensor data: torch.load would not notice
    open(path, "wb").write(bytes(data))


def test_a_digest_is_written_with_the_file_and_checked_when_it_is_read(tmp_path):
    path = str(tmp_path / "w.pt")
    atomic_torch_save({"w": torch.arange(1000.0)}, path, digest=True)
    assert open(digest_path(path)).read() == sha256_file(path) + "\n"
    assert digest_problem(path) is None and torch.equal(torch_load(path)["w"], torch.arange(1000.0))
    flip_a_byte(path)
    assert torch.load(path, weights_only=True)["w"].shape == (1000,), "torch.load does not notice"
    with pytest.raises(UnreadableFileError, match=f"^{path} is damaged: its SHA-256 differs from the one written with "
                                                  "it \\(.w.pt.sha256\\). Delete it.$"):
        torch_load(path, remedy="Delete it.")
    remove_digest(path)  # a file from before digests: loaded unchecked
    assert torch_load(path)["w"].shape == (1000,)
    atomic_torch_save({"w": torch.ones(2)}, path, digest=True)
    remove_file(path)
    assert os.listdir(tmp_path) == []


def test_a_crash_between_the_digest_and_the_rename_leaves_a_file_whose_digest_is_listed(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    atomic_torch_save({"old": torch.ones(3)}, path, digest=True)
    old = sha256_file(path)

    def crash(*_args):
        raise KeyboardInterrupt  # killed after the sidecar listed both digests, before the rename

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", lambda src, dst: crash() if dst == path else os.rename(src, dst))
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"new": torch.zeros(3)}, path, digest=True)
    listed = open(digest_path(path)).read().split()
    assert len(listed) == 2 and listed[0] == old and digest_problem(path) is None
    atomic_torch_save({"new": torch.zeros(3)}, path, digest=True)
    assert open(digest_path(path)).read().split() == [sha256_file(path)]


def test_stale_temp_files_of_the_named_files_are_removed(tmp_path):
    names = [".a.pt.x1.tmp", "..a.pt.sha256.x2.tmp", ".b.png.x3.tmp", ".c.json.x4.tmp", "d.tmp", ".a.pt.sha256"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(str(tmp_path), ["a.pt", "b.png"])
    assert sorted(os.path.basename(p) for p in removed) == ["..a.pt.sha256.x2.tmp", ".a.pt.x1.tmp", ".b.png.x3.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".a.pt.sha256", ".c.json.x4.tmp", "d.tmp"]
    assert [os.path.basename(p) for p in remove_stale_temp_files(str(tmp_path))] == [".c.json.x4.tmp"]


def test_ensure_file_writable_names_the_flag(tmp_path):
    ensure_file_writable(str(tmp_path / "x.png"), "--out")
    with pytest.raises(ValueError, match=f"^--out {tmp_path} is a folder"):
        ensure_file_writable(str(tmp_path), "--out")
    with pytest.raises(ValueError, match=f"^--npz {tmp_path}/no/x.npz: the folder {tmp_path}/no does not exist$"):
        ensure_file_writable(str(tmp_path / "no" / "x.npz"), "--npz")
