"""FID/KID: a set against itself is ~0, against shifted data clearly > 0; the classifier path is
cached and labelled; Inception is used only from a local file."""
import os

import numpy as np
import pytest

from pylth.ddpm import GaussianDiffusion, build_model
from pylth.ddpm.data import load_dataset
from pylth.evaluation.config import EvalConfig
from pylth.evaluation.features import batched_features, feature_extractor
from pylth.evaluation.fid import FidEvaluator, fid_from_features, kid_from_features


pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_fid(a, b):
    """The Fréchet distance written out with scipy, as an outside oracle for clean-fid's."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_fid_and_kid_of_a_set_against_itself_and_a_shifted_copy():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 8))
    assert abs(fid_from_features(feats, feats)) < 1e-6
    assert abs(kid_from_features(feats, feats)) < 0.05
    shifted = feats + 1.0
    assert fid_from_features(feats, shifted) == pytest.approx(8.0, rel=1e-6)  # |mean shift|^2
    assert kid_from_features(feats, shifted) > 0.5
    other = rng.normal(size=(300, 8)) * 1.5
    assert fid_from_features(feats, other) == pytest.approx(numpy_fid(feats, other), rel=1e-6)


def test_batched_features_match_one_batch_and_show_their_progress(capsys):
    class Halves:  # a stand-in extractor: the mean of each image's halves, and how many calls it got
        dim, calls = 2, 0

        def __call__(self, images):
            self.calls += 1
            flat = images.reshape(len(images), -1)
            return np.stack([flat[:, :2].mean(1), flat[:, 2:].mean(1)], axis=1).astype(np.float32)

    images = np.random.default_rng(0).normal(size=(10, 1, 2, 2)).astype(np.float32)
    extract = Halves()
    feats = batched_features(extract, images, 4, progress=True, desc="features under test")
    np.testing.assert_array_equal(feats, Halves()(images))
    assert extract.calls == 3  # 4 + 4 + 2
    err = capsys.readouterr().err
    assert "features under test" in err and "/10 " in err  # a bar over the 10 images (cleared when done)
    assert batched_features(Halves(), images[:0], 4).shape == (0, 2)
    assert capsys.readouterr().err == ""  # no bar unless asked


def test_classifier_fid_of_data_vs_itself_is_small_and_vs_shifted_data_large(tmp_path):
    digits = load_dataset("digits")
    extract = feature_extractor("digits", digits, cache_dir=str(tmp_path), classifier_steps=60)
    assert extract.kind == "classifier"
    real = digits.images[:300].float() / 127.5 - 1.0
    same = extract(real)
    held = extract(load_dataset("digits", train=False).images[:300].float() / 127.5 - 1.0)
    shifted = extract((real + 0.8).clamp(-1, 1))
    assert fid_from_features(same, same) < 1e-6
    assert fid_from_features(same, shifted) > 10 * fid_from_features(same, held)
    assert [f.name.split("-")[0] for f in tmp_path.iterdir()] == ["classifier"]


def test_the_fid_evaluator_labels_its_features_and_caches_reference_statistics(tmp_path):
    digits = load_dataset("digits")
    model = build_model("digits", ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
    config = EvalConfig(fid_samples=20, sampler="ddim", sample_steps=2, sample_batch_size=64, cache_dir=str(tmp_path))

    def evaluator(config):
        return FidEvaluator(config, "digits", digits, "cpu", GaussianDiffusion(), classifier_steps=30, progress=False)

    result = evaluator(config).score(model, seed=0)
    assert set(result) == {"fid", "kid", "fid_features", "fid_weights", "num_samples"}
    assert result["fid_features"] == "classifier" and result["num_samples"] == 20 and result["fid"] > 0
    assert result["fid_weights"].startswith("classifier:digits:sha1=")
    assert sorted(f.name.split("-")[0] for f in tmp_path.iterdir()) == ["classifier", "ref"]
    again = evaluator(config).score(model, seed=0)  # a new evaluator: classifier and statistics from the cache
    assert again["fid"] == pytest.approx(result["fid"])
    with pytest.raises(ValueError, match="num_samples"):
        evaluator(EvalConfig(fid_samples=0, cache_dir=str(tmp_path)))


def test_inception_needs_a_local_file_and_never_downloads(tmp_path):
    missing = str(tmp_path / "missing" / "inception-2015-12-05.pt")
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        feature_extractor("digits", load_dataset("digits"), cache_dir=str(tmp_path), inception_path=missing)
    assert not os.path.exists(tmp_path / "missing")
