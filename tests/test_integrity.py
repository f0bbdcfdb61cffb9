"""Integrity: every finished round records the SHA-256 of its files; resume, load_round_start and the
read-only commands check them. A damaged or missing file of each kind, or an unreadable line of
rounds.jsonl, is one line that names the file and says what to do, with exit 2 and nothing written."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import pytest

from pylth import train as train_cli
from pylth.cka.__main__ import main as cka_main
from pylth.ddpm import GaussianDiffusion
from pylth.ddpm.trainer import TrainConfig, train
from pylth.find_ticket import main
from pylth.foundations.io import UnreadableFileError, atomic_torch_save, torch_load
from pylth.foundations.run_dir import DamagedRunError
from pylth.lottery import LotteryParts, load_round_start
from pylth.lottery.run_reader import load_trained
from pylth.sample import main as sample_main

from test_lottery_helpers import fake, fake_calls, file_digests, small_digits_unet, stopped_in  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
         "--heldout-samples", "8", "--max-rounds", "1"]
PROG = "python -m pylth.find_ticket: error: "


@pytest.fixture
def finished(fake, tmp_path):  # noqa: F811
    """A run with rounds 0 and 1 finished (stand-in training and FID), and its command line."""
    out = tmp_path / "run"
    argv = QUICK + ["--out", str(out)]
    assert main(argv, parts=fake.parts) == 0
    return out, argv, fake.parts


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def records(out):
    with open(out / "rounds.jsonl") as f:
        return [json.loads(line) for line in f]


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def flip_a_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) * 2 // 3] ^= 0x5A  # inside the tensor data of a .pt file: torch.load would not notice
    open(path, "wb").write(bytes(data))


def test_each_round_records_the_digest_of_every_file_it_wrote(finished):
    out, _, _ = finished
    r0, r1 = records(out)
    assert set(r0["files"]) == {"round_00/mask.pt", "round_00/model.pt", "round_00/samples.png",
                                "round_00/ticket.safetensors", "rewind.pt"}
    assert set(r1["files"]) == {"round_01/mask.pt", "round_01/model.pt", "round_01/samples.png",
                                "round_01/ticket.safetensors"}
    for rel, digest in {**r0["files"], **r1["files"]}.items():
        assert digest == sha256(out / rel), rel


FINISHED_DAMAGE = [
    ("round_01/mask.pt", truncate, "is damaged"),
    ("round_01/mask.pt", flip_a_byte, "is damaged"),
    ("round_01/model.pt", flip_a_byte, "is damaged"),
    ("round_01/model.pt", os.remove, "is missing"),
    ("round_01/samples.png", truncate, "is damaged"),
    ("round_01/ticket.safetensors", flip_a_byte, "is damaged"),
    ("round_00/model.pt", truncate, "is damaged"),
    ("rewind.pt", flip_a_byte, "is damaged"),
]


@pytest.mark.parametrize("name, damage, problem", FINISHED_DAMAGE,
                         ids=[f"{n}-{d.__name__}" for n, d, _ in FINISHED_DAMAGE])
def test_a_damaged_file_of_a_finished_round_stops_the_resume_with_one_line_and_nothing_written(
        finished, capsys, name, damage, problem):
    out, argv, parts = finished
    damage(out / name)
    before = file_digests(str(out))
    capsys.readouterr()
    assert main(argv[:-4] + ["--max-rounds", "2", "--out", str(out)], parts=parts) == 2
    err = capsys.readouterr().err
    k = int(name[6:8]) if name.startswith("round_") else 0
    assert err.count("\n") == 1 and err.startswith(f"{PROG}{out / name} (a file of finished round {k}) {problem}")
    assert "Nothing was changed: restore it from a copy" in err
    assert ("--force" in err) if k == 0 else (f"redo rounds {k} onwards" in err)
    assert file_digests(str(out)) == before


def test_init_pt_of_reset_init_is_recorded_and_checked(fake, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "init-run"
    argv = QUICK + ["--reset", "init", "--out", str(out)]
    assert main(argv, parts=fake.parts) == 0
    assert records(out)[0]["files"]["init.pt"] == sha256(out / "init.pt")
    flip_a_byte(out / "init.pt")
    before = file_digests(str(out))
    capsys.readouterr()
    assert main(argv, parts=fake.parts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}{out / 'init.pt'} (a file of finished round 0) is damaged")
    assert file_digests(str(out)) == before
    with pytest.raises(DamagedRunError, match="init.pt"):
        load_round_start(str(out), 1)


def test_the_redo_recipe_of_the_message_works(finished, capsys):
    out, argv, parts = finished
    flip_a_byte(out / "round_01" / "mask.pt")
    shutil.move(str(out / "round_01"), str(out.parent / "round_01.damaged"))  # what the message says
    with open(out / "rounds.jsonl") as f:
        first = f.readline()
    (out / "rounds.jsonl").write_text(first)
    assert main(argv, parts=parts) == 0
    assert [r["round"] for r in records(out)] == [0, 1] and os.path.isfile(out / "round_01" / "model.pt")


@pytest.mark.parametrize("damage, line, problem", [
    (lambda text: text[:-40] + "\n", 2, "is not valid JSON"),
    (lambda text: text + "{]\n", 3, "is not valid JSON"),
    (lambda text: text.replace('"round": 1', '"round": 5'), 2, "holds round 5, expected 1"),
    (lambda text: "[1, 2]\n" + text, 1, "is not a JSON object"),
])
def test_an_unreadable_line_of_rounds_jsonl_names_the_file_and_the_line(finished, capsys, damage, line, problem):
    out, argv, parts = finished
    path = out / "rounds.jsonl"
    path.write_text(damage(path.read_text()))
    before = file_digests(str(out))
    assert main(argv, parts=parts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}{path} is damaged: line {line} {problem}")
    assert ("--force" in err) if line == 1 else (f"cut it to its first {'line' if line == 2 else '2 lines'}" in err)
    assert file_digests(str(out)) == before


def test_a_damaged_config_json_names_it(finished, capsys):
    out, argv, parts = finished
    (out / "config.json").write_text('{"data": {"dataset": "dig')
    before = file_digests(str(out))
    assert main(argv, parts=parts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}{out / 'config.json'} is damaged (not valid JSON")
    assert file_digests(str(out)) == before


def test_force_moves_a_damaged_run_aside_and_starts_over(finished, capsys):
    out, argv, parts = finished
    truncate(out / "rewind.pt")
    assert main(argv + ["--force"], parts=parts) == 0
    assert "cannot be resumed" in capsys.readouterr().out
    moved = [p for p in os.listdir(out.parent) if p.startswith("run.replaced-")]
    assert len(moved) == 1 and len(records(out)) == 2


def test_a_damaged_mask_of_the_unfinished_round_names_it_and_deleting_it_recovers(finished, capsys):
    out, argv, parts = finished
    (out / "round_02").mkdir()
    (out / "round_02" / "mask.pt").write_bytes(b"half a mask")
    before = file_digests(str(out))
    longer = argv[:-4] + ["--max-rounds", "2", "--out", str(out)]
    assert main(longer, parts=parts) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}cannot read {out / 'round_02' / 'mask.pt'} (")
    assert err.strip().endswith("It was left as it is: round 2 has not finished; delete it to prune round 2 again")
    after = file_digests(str(out))
    assert after.pop("config.json") != before.pop("config.json"), "config.json records the new --max-rounds"
    assert after == before
    os.remove(out / "round_02" / "mask.pt")
    assert main(longer, parts=parts) == 0 and len(records(out)) == 3


def test_load_round_start_and_load_trained_check_the_files_they_read(finished):
    out, _, _ = finished
    model, masks = load_round_start(str(out), 1)
    flip_a_byte(out / "round_01" / "mask.pt")
    with pytest.raises(DamagedRunError, match=f"^{out / 'round_01' / 'mask.pt'} \\(a file of finished round 1\\) "
                                              "is damaged"):
        load_round_start(str(out), 1)
    with pytest.raises(DamagedRunError, match="round_01/mask.pt"):
        load_trained(str(out), 1)
    os.remove(out / "rewind.pt")
    with pytest.raises(DamagedRunError, match=f"^{out / 'rewind.pt'} \\(a file of finished round 0\\) is missing"):
        load_round_start(str(out), 0)


def test_runs_recorded_before_digests_still_load(finished):
    out, _, _ = finished
    path = out / "rounds.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "files"}) + "\n" for r in records(out)))
    load_round_start(str(out), 1)


def test_read_only_commands_refuse_a_damaged_run_with_one_line(finished, tmp_path, capsys):
    out, _, _ = finished
    flip_a_byte(out / "round_01" / "model.pt")
    for command, argv in ((cka_main, [str(out), str(out), "--out", str(tmp_path / "cka")]),
                          (sample_main, [str(out), "--num", "2", "--steps", "1", "--out", str(tmp_path / "s.png")])):
        assert command(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"{out / 'round_01' / 'model.pt'} (a file of finished round 1) is damaged" in err
    assert not (tmp_path / "cka").exists() and not (tmp_path / "s.png").exists()


# -- training checkpoints -------------------------------------------------------------------------
def test_a_damaged_training_checkpoint_names_it_and_is_left_alone(tmp_path, digits):
    model = small_digits_unet(0)
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"model": model.state_dict()}, str(path))
    truncate(path)
    before = path.read_bytes()
    with pytest.raises(UnreadableFileError, match=f"^cannot read {path} \\(PytorchStreamReader .*\\): it is damaged "
                                                  "or is not a file pylth wrote. It was left as it is: delete it to "
                                                  "redo the training it holds from its start$"):
        train(model, GaussianDiffusion(), digits, TrainConfig(iterations=2, batch_size=8),
              checkpoint_path=str(path))
    assert path.read_bytes() == before
    atomic_torch_save({"model": model.state_dict()}, str(path))  # readable, but no training checkpoint
    with pytest.raises(ValueError, match=f"^checkpoint {path} does not fit this training run"):
        train(model, GaussianDiffusion(), digits, TrainConfig(iterations=2, batch_size=8),
              checkpoint_path=str(path))


def test_the_train_command_refuses_a_damaged_checkpoint_with_one_line(tmp_path, capsys):
    out = tmp_path / "dense"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 64)
    assert train_cli.main(["--iterations", "2", "--batch-size", "8", "--fid-samples", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m pylth.train: error: cannot read {out / 'checkpoint.pt'}")
    assert (out / "checkpoint.pt").read_bytes() == b"\x00" * 64


# -- the unfinished round: files carry a digest written with them ----------------------------------
def sidecars(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, n), folder) for root, _, names in os.walk(folder)
                  for n in names if n.endswith(".sha256"))


def test_a_damaged_mask_of_the_unfinished_round_is_refused_before_any_work(fake, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = QUICK + ["--out", str(out)]
    assert main(argv, parts=stopped_in(fake.parts, 1)) == 130  # stopped in round 1, its masks written
    assert sidecars(out) == ["round_01/.mask.pt.sha256"] and len(records(out)) == 1
    flip_a_byte(out / "round_01" / "mask.pt")  # the case: a pruned weight turned kept, loads fine
    before, calls = file_digests(str(out)), len(fake)
    capsys.readouterr()
    assert main(argv, parts=fake.parts) == 2
    err = capsys.readouterr().err
    mask = out / "round_01" / "mask.pt"
    assert err == (f"{PROG}{mask} (a file of unfinished round 1) is damaged: its SHA-256 differs from the one written "
                   "with it (.mask.pt.sha256). Nothing was changed: delete round_01 (the whole folder) to redo round 1 "
                   "from its start: its masks are computed again from round 0's model.pt\n")
    assert file_digests(str(out)) == before and len(fake) == calls, "refused before any training"
    shutil.rmtree(out / "round_01")  # what the message says
    assert main(argv, parts=fake.parts) == 0
    straight = tmp_path / "straight"
    assert main(QUICK + ["--out", str(straight)], parts=fake_calls().parts) == 0
    assert mask.read_bytes() == (straight / "round_01" / "mask.pt").read_bytes()
    assert sidecars(out) == [], "a finished round's digests are in rounds.jsonl"


def test_a_damaged_checkpoint_of_the_unfinished_round_is_refused_and_deleting_it_redoes_the_round(
        fake, tmp_path, capsys):  # noqa: F811
    real = dataclasses.replace(fake.parts, train=LotteryParts().train)  # real training, stand-in FID
    out, argv = tmp_path / "run", QUICK + ["--checkpoint-every", "2"]
    assert main(argv + ["--out", str(out)], parts=stopped_in(real, 1, at_iteration=3)) == 130
    checkpoint = out / "round_01" / "checkpoint.pt"
    assert torch_load(str(checkpoint))["iteration"] == 2
    assert sidecars(out) == ["round_01/.checkpoint.pt.sha256", "round_01/.mask.pt.sha256"]
    flip_a_byte(checkpoint)
    before = file_digests(str(out))
    capsys.readouterr()
    assert main(argv + ["--out", str(out)], parts=real) == 2
    err = capsys.readouterr().err
    assert err == (f"{PROG}{checkpoint} (a file of unfinished round 1) is damaged: its SHA-256 differs from the one "
                   "written with it (.checkpoint.pt.sha256). Nothing was changed: delete it to redo round 1's "
                   "training from its start\n")
    assert file_digests(str(out)) == before
    os.remove(checkpoint)
    assert main(argv + ["--out", str(out)], parts=real) == 0
    assert main(argv + ["--out", str(tmp_path / "straight")], parts=real) == 0
    for name in ("round_01/model.pt", "round_01/mask.pt", "rewind.pt"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_a_damaged_rewind_pt_before_round_0_is_finished_is_refused(fake, tmp_path, capsys):  # noqa: F811
    out, argv = tmp_path / "run", QUICK + ["--out", str(tmp_path / "run")]
    assert main(argv, parts=stopped_in(fake.parts, 0)) == 130  # theta_tau (tau = 0) and the masks written
    assert sidecars(out) == [".rewind.pt.sha256", "round_00/.mask.pt.sha256"]
    flip_a_byte(out / "rewind.pt")
    before = file_digests(str(out))
    capsys.readouterr()
    assert main(argv, parts=fake.parts) == 2
    err = capsys.readouterr().err
    assert err == (f"{PROG}{out / 'rewind.pt'} (a file of unfinished round 0) is damaged: its SHA-256 differs from the "
                   "one written with it (.rewind.pt.sha256). Nothing was changed: delete it to redo round 0's training "
                   "as far as the rewind point, which writes it again\n")
    assert file_digests(str(out)) == before
    os.remove(out / "rewind.pt")
    assert main(argv, parts=fake.parts) == 0 and len(records(out)) == 2


def test_runs_stopped_before_unfinished_rounds_had_digests_still_resume(fake, tmp_path):  # noqa: F811
    out, argv = tmp_path / "run", QUICK + ["--out", str(tmp_path / "run")]
    assert main(argv, parts=stopped_in(fake.parts, 1)) == 130
    for name in sidecars(out):  # as today's main left them
        os.remove(out / name)
    assert main(argv, parts=fake.parts) == 0 and len(records(out)) == 2


def test_a_file_damaged_between_its_write_and_the_commit_is_not_recorded(fake, tmp_path, capsys):  # noqa: F811
    out, argv = tmp_path / "run", QUICK + ["--out", str(tmp_path / "run")]
    class Damaging(fake.parts.fid_evaluator):
        def score(self, *args, **kwargs):  # round 1 is evaluated after its masks were written and used
            if (out / "round_01" / "mask.pt").exists():
                flip_a_byte(out / "round_01" / "mask.pt")
            return super().score(*args, **kwargs)

    assert main(argv, parts=dataclasses.replace(fake.parts, fid_evaluator=Damaging)) == 2
    assert f"{out / 'round_01' / 'mask.pt'} (a file of unfinished round 1) is damaged" in capsys.readouterr().err
    assert len(records(out)) == 1, "round 1 was not committed"
