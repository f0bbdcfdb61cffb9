"""The commands run from the repository root, as the README says, where ``python -m`` imports the
source folder ``pylth/`` and the installed native module ``_pylth``; a source tree that does not
match the installed build is a one-line error that says what to run, before any work."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import pylth
from pylth.ddpm.data import load_dataset
from pylth.evaluation.classifier import load_or_train_classifier
from pylth.ops.native import source_hash

from test_lottery_helpers import fid_cache  # noqa: F401  (fixture)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_TICKET = ["--iterations", "4", "--batch-size", "8", "--fid-samples", "4", "--sample-steps", "1",
                "--heldout-samples", "8", "--max-rounds", "1"]


def run_module(cwd, *args, env=None, timeout=300):
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, *args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tree_matches_installed_build():
    """These tests need the checkout the installed package was built from."""
    if pylth.build_info().get("source_hash") != source_hash(REPO_ROOT):
        pytest.fail(f"{REPO_ROOT}/csrc changed since the installed build: run `pip install .` there first")


def test_the_repository_root_imports_the_source_folder_with_the_installed_native_module(
        tree_matches_installed_build):
    proc = run_module(REPO_ROOT, "-c", "import pylth; print(pylth.__file__); print(pylth.build_info()['available'])")
    assert proc.returncode == 0, proc.stderr
    location, available = proc.stdout.split()
    assert location == os.path.join(REPO_ROOT, "pylth", "__init__.py") and available == "True"


def test_find_ticket_runs_from_the_repository_root(tmp_path, fid_cache, tree_matches_installed_build):  # noqa: F811
    load_or_train_classifier("digits", load_dataset("digits"), fid_cache, "cpu")  # the quick classifier
    out = tmp_path / "run"
    proc = run_module(REPO_ROOT, "-m", "pylth.find_ticket", *QUICK_TICKET, "--cache-dir", fid_cache,
                      "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "rounds.jsonl") as f:
        assert [line.count('"round"') for line in f] == [1, 1]  # round 0 and round 1 finished


def test_train_runs_from_the_repository_root(tmp_path, tree_matches_installed_build):
    proc = run_module(REPO_ROOT, "-m", "pylth.train", "--iterations", "2", "--batch-size", "8", "--fid-samples",
                      "0", "--sample-steps", "1", "--out", str(tmp_path / "dense"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dense" / "checkpoint.pt").is_file()


def copy_of_the_source_tree(tmp_path):
    copy = tmp_path / "checkout"
    shutil.copytree(os.path.join(REPO_ROOT, "pylth"), copy / "pylth",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(REPO_ROOT, "csrc"), copy / "csrc")
    shutil.copy(os.path.join(REPO_ROOT, "CMakeLists.txt"), copy / "CMakeLists.txt")
    return copy


COMMANDS = [
    ["pylth.find_ticket", "--out", "{tmp}/run"],
    ["pylth.train", "--iterations", "2", "--out", "{tmp}/run"],
    ["pylth.cka", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/run"],
    ["pylth.sample", "{tmp}/a", "--out", "{tmp}/run"],
    ["pylth.mixed", "{tmp}/run"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_source_tree_newer_than_the_build_is_one_line_before_any_work(tmp_path, command,
                                                                        tree_matches_installed_build):
    checkout = copy_of_the_source_tree(tmp_path)
    with open(checkout / "csrc" / "adam.cpp", "a") as f:
        f.write("// an edit made after the last pip install\n")
    proc = run_module(checkout, "-m", *(a.format(tmp=tmp_path) for a in command))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "built from other sources" in proc.stderr and f"run `pip install .` in {checkout}" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_source_tree_of_another_version_is_refused(tmp_path, tree_matches_installed_build):
    checkout = copy_of_the_source_tree(tmp_path)
    init = checkout / "pylth" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{pylth.__version__}"', '__version__ = "9.9.9"'))
    proc = run_module(checkout, "-m", "pylth.find_ticket", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"built for pylth {pylth.__version__}" in proc.stderr and "is pylth 9.9.9" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_native_module_is_one_line_and_pylth_still_imports(tmp_path):
    script = ("import sys, runpy; sys.modules['_pylth'] = None; import pylth; "
              "assert not pylth.build_info()['available']; "
              "sys.argv = ['find_ticket', '--out', sys.argv[1]]; runpy.run_module('pylth.find_ticket', run_name='__main__')")
    proc = run_module(tmp_path, "-c", script, str(tmp_path / "run"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "native module _pylth is not installed" in proc.stderr and "pip install ." in proc.stderr
    assert not (tmp_path / "run").exists()


def test_pylth_debug_adds_the_traceback(tmp_path):
    proc = run_module(tmp_path, "-m", "pylth.find_ticket", "--prune-ratio", "2", "--out", str(tmp_path / "run"),
                      env=dict(os.environ, PYLTH_DEBUG="1"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "--prune-ratio" in proc.stderr
