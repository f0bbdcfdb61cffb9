"""pylth's Fréchet distance against its closed form on diagonal covariances and against clean-fid's."""
import warnings

import numpy as np
import pytest

from pylth.evaluation.fid import frechet_distance


def _covariance(rng, n, d, constant_feature=False):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    if constant_feature:
        x[:, 0] = 3.0  # a dead unit: its row and column of the covariance are 0
    return x.mean(0), np.cov(x, rowvar=False)


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(9), rng.standard_normal(9)
    a, b = rng.uniform(0.1, 4.0, 9), rng.uniform(0.1, 4.0, 9)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("constant_feature", [False, True])
def test_matches_clean_fid_on_full_covariances(constant_feature):
    from cleanfid.fid import frechet_distance as clean_fid_frechet

    rng = np.random.default_rng(1)
    mu1, s1 = _covariance(rng, 200, 16, constant_feature)
    mu2, s2 = _covariance(rng, 200, 16, constant_feature)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours) and ours > 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = float(clean_fid_frechet(mu1, s1, mu2, s2))
    except TypeError as exc:  # a scipy without sqrtm's disp=: the reason pylth has its own
        pytest.skip(f"clean-fid's frechet_distance does not run with this scipy: {exc}")
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-8)


def test_identical_statistics_give_zero():
    mu, sigma = _covariance(np.random.default_rng(2), 100, 12)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_singular_covariances_stay_finite():
    rng = np.random.default_rng(3)
    mu1, s1 = _covariance(rng, 50, 8, constant_feature=True)
    s1[:, 1] = s1[1, :] = 0.0
    d = frechet_distance(mu1, s1, mu1 + 1.0, np.zeros((8, 8)))
    assert np.isfinite(d) and d == pytest.approx(8.0 + np.trace(s1), rel=1e-3)


def test_bad_shapes_and_non_covariances_raise():
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[-1.0, 0.0], [0.0, -4.0]]))
