"""Environment variables are read in one place, by the commands (pylth.foundations.environment through
pylth.cli.run_command), and passed down: the library below reads none of them."""
from __future__ import annotations

import datetime

import pytest

from pylth import train as train_cli
from pylth.cli import run_command
from pylth.ddpm.data import default_root
from pylth.evaluation.features import resolve_fid_features
from pylth.foundations.environment import (DEFAULT_CACHE_DIR, DEFAULT_DATA_ROOT, DEFAULT_DIST_TIMEOUT,
                                           DIST_TIMEOUT_ENV, Environment)


def test_an_empty_environment_gives_the_defaults():
    assert Environment.from_environ({}) == Environment()
    empty = Environment()
    assert empty.cache_dir == DEFAULT_CACHE_DIR and empty.data_root is None and empty.inception_path is None
    assert not empty.debug and (empty.world_size, empty.local_rank) == (1, 0)
    assert empty.dist_timeout == DEFAULT_DIST_TIMEOUT == datetime.timedelta(seconds=1800)


def test_every_variable_is_read():
    environ = {"PYLTH_CACHE_DIR": "/c", "PYLTH_DATA_ROOT": "/d", "PYLTH_INCEPTION_PATH": "/w/inception-2015-12-05.pt",
               "PYLTH_DEBUG": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "3", DIST_TIMEOUT_ENV: "2.5", "UNRELATED": "x"}
    assert Environment.from_environ(environ) == Environment(
        cache_dir="/c", data_root="/d", inception_path="/w/inception-2015-12-05.pt", debug=True, world_size=4,
        local_rank=3, dist_timeout=datetime.timedelta(seconds=2.5))
    assert not Environment.from_environ({"PYLTH_DEBUG": "0"}).debug
    assert Environment.from_environ({"PYLTH_CACHE_DIR": "", "PYLTH_DATA_ROOT": ""}) == Environment(), "empty: unset"


@pytest.mark.parametrize("name, value", [("WORLD_SIZE", "two"), ("WORLD_SIZE", "0"), ("LOCAL_RANK", "-1"),
                                         (DIST_TIMEOUT_ENV, "soon"), (DIST_TIMEOUT_ENV, "0"), (DIST_TIMEOUT_ENV, "-5")])
def test_a_bad_value_is_refused_naming_its_variable(name, value):
    with pytest.raises(ValueError, match=f"^\\${name} must be"):
        Environment.from_environ({name: value})


def test_a_command_gets_the_environment_and_a_bad_variable_is_one_line(capsys):
    seen = []
    assert run_command("prog", seen.append, needs_native=False, environ={"PYLTH_CACHE_DIR": "/c"}) == 0
    assert seen == [Environment(cache_dir="/c")]
    assert run_command("prog", seen.append, needs_native=False, environ={DIST_TIMEOUT_ENV: "soon"}) == 2
    assert len(seen) == 1, "the body does not run"
    assert capsys.readouterr().err == f"prog: error: ${DIST_TIMEOUT_ENV} must be a number of seconds, got 'soon'\n"


def test_the_library_reads_no_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("PYLTH_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("PYLTH_INCEPTION_PATH", str(tmp_path / "inception-2015-12-05.pt"))
    assert default_root("mnist") == DEFAULT_DATA_ROOT
    assert resolve_fid_features("digits") == "classifier", "no Inception path given: auto is the classifier"


def test_the_command_passes_the_data_root_of_the_environment_down(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PYLTH_DATA_ROOT", str(tmp_path / "env-data"))
    assert train_cli.main(["--dataset", "mnist", "--iterations", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "env-data") in err and "train-images-idx3-ubyte" in err
