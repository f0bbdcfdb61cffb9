"""pylth.cka against a float64 numpy implementation of Kornblith et al. 2019 (tests/numpy_cka.py)."""
import math

import numpy as np
import pytest
import torch

import pylth.ops.cka as ops_cka
from numpy_cka import (np_center, np_cka_from_kernels, np_linear_cka_features, np_rbf_cka, np_rbf_kernel,
                       np_sq_distances)
from pylth.cka import linear_cka, rbf_cka, weight_rows
from pylth.ops.dispatch import launch


def random_pairs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3, 4), (7, 11, 2), (13, 1, 9), (64, 40, 33), (33, 128, 65), (2, 4, 3)]
    xs = [torch.randn(n, d, generator=g, dtype=dtype) for n, d, _ in shapes]
    ys = [torch.randn(n, e, generator=g, dtype=dtype) + 0.5 * x[:, :1] for (n, _, e), x in zip(shapes, xs)]
    return xs, ys


# ---- RBF and linear CKA against the oracle ----

@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_rbf_cka_matches_numpy(threshold, unbiased):
    xs, ys = random_pairs()
    if unbiased:  # unbiased needs n >= 4
        xs, ys = xs[:-1], ys[:-1]
    got = rbf_cka(xs, ys, threshold=threshold, unbiased=unbiased)
    assert got.dtype == torch.float64 and got.shape == (len(xs),)
    want = [np_rbf_cka(x.numpy(), y.numpy(), threshold, unbiased) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


def test_rbf_cka_float32_inputs_within_float32_gram_rounding():
    xs, ys = random_pairs(torch.float32, seed=1)
    got = rbf_cka(xs, ys, threshold=0.5)
    want = [np_rbf_cka(x.numpy(), y.numpy(), 0.5, False) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


def test_even_count_median_is_the_mean_of_the_two_middle_distances():
    # Squared distances of x: 0 x4 (diagonal), then 1 4 9 16 36 49 twice each: middle values 4 and 9.
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0], [2.0, 0.5], [1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    got = rbf_cka([x], [y]).item()
    assert got == pytest.approx(np_rbf_cka(x.numpy(), y.numpy(), 1.0, False), abs=1e-12)
    # The lower middle value alone (4 instead of 6.5) would be a different bandwidth and a different CKA.
    lower_median_bandwidth = np_cka_from_kernels(np.exp(-np_sq_distances(x.numpy()) / (2 * 4.0)),
                                                 np_rbf_kernel(y.numpy(), 1.0), False)
    assert abs(got - lower_median_bandwidth) > 1e-4


def test_linear_cka_matches_feature_space_formula_and_unbiased_centring():
    xs, ys = random_pairs(seed=2)
    got = linear_cka(xs, ys)
    np.testing.assert_allclose(got.numpy(), [np_linear_cka_features(x, y) for x, y in zip(xs, ys)], atol=1e-9)
    xs, ys = xs[:-1], ys[:-1]
    got = linear_cka(xs, ys, unbiased=True)
    want = [np_cka_from_kernels(x.numpy() @ x.numpy().T, y.numpy() @ y.numpy().T, True) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


def _large_cases(n, seed):
    """Distinct rows, rows on a small integer grid (many tied distances), and 3/5 repeated rows (a zero
    median: the positives' median is used)."""
    g = torch.Generator().manual_seed(seed)
    distinct = torch.randn(n, 6, generator=g, dtype=torch.float64)
    grid = torch.randint(0, 3, (n, 3), generator=g).double()
    repeated = distinct.clone()
    repeated[: 3 * n // 5] = repeated[0]
    return [distinct, grid, repeated], [grid, repeated, distinct]


@pytest.mark.parametrize("n", [200, 201, 203])  # n*n even: mean of two middle values; odd: one value
def test_median_of_large_matrices_with_ties_and_zero_medians(n):
    # Over 16k distances take the sampled selection (203: a count of distances, 20503, that leaves
    # a tail after the CPU's AVX2 gather in steps of four).
    xs, ys = _large_cases(n, seed=n)
    got = rbf_cka(xs, ys)
    want = [np_rbf_cka(x.numpy(), y.numpy(), 1.0, False) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def sparse_pair(n, d, density, seed, zero_rows=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[torch.rand(n, d, generator=g) > density] = 0
    x[:zero_rows] = 0
    return x


@pytest.mark.parametrize("unbiased", [False, True])
def test_sparse_rows_use_the_sparse_gram_and_the_zero_median_fallback(unbiased):
    # 99 % zeros; in the second pair over half the rows are zero, so the median distance is 0.
    xs = [sparse_pair(31, 300, 0.01, 1), sparse_pair(40, 257, 0.01, 2, zero_rows=30)]
    ys = [sparse_pair(31, 500, 0.01, 3), sparse_pair(40, 129, 0.02, 4, zero_rows=25)]
    assert np.median(np_sq_distances(xs[1].numpy())) == 0
    got = rbf_cka(xs, ys, threshold=0.5, unbiased=unbiased)
    want = [np_rbf_cka(x.numpy(), y.numpy(), 0.5, unbiased) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


def test_mostly_zero_is_judged_from_a_row_sample():
    # 128 rows: every 16th row is looked at, so one whose sampled rows are all zero counts as sparse;
    # under 64 rows every row is looked at.
    dense, sparse = sparse_pair(128, 200, 0.3, 9), sparse_pair(128, 200, 0.01, 10)
    unsampled = sparse_pair(128, 200, 0.3, 11)
    unsampled[::16] = 0
    small = sparse_pair(63, 200, 0.3, 12)
    small[::16] = 0
    mats = [dense, sparse, unsampled, small, sparse.double()]
    assert ops_cka._mostly_zero(mats) == [0, 1, 1, 0, 1]


def odd_sparse_pairs():
    """Pairs for the gathered Gram: 3 rows, column counts off the 16-value blocks, a fully dense
    column, zero rows, float32 beside float64, over 16k distances (the sampled median)."""
    ones_column = sparse_pair(70, 45, 0.02, 21)
    ones_column[:, 7] = 1.0
    xs = [sparse_pair(3, 1152, 0.01, 13), sparse_pair(5, 17, 0.1, 14), sparse_pair(131, 1000, 0.02, 15),
          ones_column, sparse_pair(200, 301, 0.01, 16, zero_rows=7)]
    ys = [sparse_pair(3, 40, 0.2, 17).double(), sparse_pair(5, 33, 0.05, 18), sparse_pair(131, 999, 0.01, 19),
          sparse_pair(70, 1, 0.5, 22), sparse_pair(200, 64, 0.03, 20).double()]
    return xs, ys


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_gathered_gram_matches_numpy_on_odd_shapes(kernel):
    xs, ys = odd_sparse_pairs()
    assert all(ops_cka._mostly_zero(xs + ys, max_density=1.0))
    got = ops_cka.cka(xs, ys, kernel=kernel, threshold=0.5, sparse_gram_max_density=1.0)  # every Gram gathered
    if kernel == "rbf":
        want = [np_rbf_cka(x.numpy(), y.numpy(), 0.5, False) for x, y in zip(xs, ys)]
    else:
        want = [np_linear_cka_features(x.numpy(), y.numpy()) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


def test_each_pair_is_independent_of_the_others_in_the_batch():
    # Per-thread buffers are reused from pair to pair (gathered and BLAS Grams, different sizes, the
    # order of the schedule): a pair computed among others equals the pair computed alone, bit for bit.
    xs, ys = odd_sparse_pairs()
    dense_xs, dense_ys = random_pairs(seed=23)
    xs, ys = xs + dense_xs, ys + dense_ys
    together = rbf_cka(xs, ys)
    alone = torch.cat([rbf_cka([x], [y]) for x, y in zip(xs, ys)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("sparse", [False, True])
def test_the_first_non_finite_matrix_is_named(sparse):
    # xs before ys, then by index, whichever thread finds them and whether a Gram is gathered or BLAS.
    make = (lambda seed: sparse_pair(66, 80, 0.01, seed)) if sparse else (lambda seed: sparse_pair(66, 80, 1.0, seed))
    xs, ys = [make(s) for s in range(4)], [make(s + 4) for s in range(4)]
    xs[3][5, 5], ys[0][60, 1] = math.nan, math.inf
    assert all(ops_cka._mostly_zero(xs + ys)) == sparse
    with pytest.raises(ValueError, match=r"xs\[3\] has non-finite"):
        rbf_cka(xs, ys)
    xs[3][5, 5] = 0.0
    ys[2][0, 79] = -math.inf
    with pytest.raises(ValueError, match=r"ys\[0\] has non-finite"):
        rbf_cka(xs, ys)


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_sparse_and_dense_gram_paths_agree(kernel):
    xs = [sparse_pair(50, 301, 0.3, 5), sparse_pair(17, 64, 0.04, 6)]
    ys = [sparse_pair(50, 77, 0.1, 7), sparse_pair(17, 90, 0.5, 8)]
    dense = ops_cka.cka(xs, ys, kernel=kernel, sparse_gram_max_density=0.0)
    sparse = ops_cka.cka(xs, ys, kernel=kernel, sparse_gram_max_density=1.0)
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), atol=1e-6)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, True, "0.5"])
def test_a_bad_sparse_gram_density_names_the_argument(value):
    xs, ys = [sparse_pair(8, 5, 0.5, 1)], [sparse_pair(8, 6, 0.5, 2)]
    with pytest.raises(ValueError, match="sparse_gram_max_density must be a number in"):
        ops_cka.cka(xs, ys, sparse_gram_max_density=value)


def test_identical_inputs_give_one_and_rbf_is_scale_invariant():
    xs, _ = random_pairs(seed=3)
    assert torch.allclose(rbf_cka(xs, xs), torch.ones(len(xs), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rbf_cka(xs, [3 * x for x in xs]), torch.ones(len(xs), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(linear_cka(xs, xs), torch.ones(len(xs), dtype=torch.float64), atol=1e-12)


def test_degenerate_pair_is_nan_and_leaves_the_others_alone():
    xs, ys = random_pairs(seed=4)
    alone = rbf_cka(xs, ys)
    identical_rows = torch.ones(9, 6)  # every squared distance 0: no bandwidth
    got = rbf_cka(xs[:2] + [identical_rows] + xs[2:], ys[:2] + [torch.randn(9, 3)] + ys[2:])
    assert math.isnan(got[2].item())
    keep = torch.cat([got[:2], got[3:]])
    assert not torch.isnan(keep).any()
    assert torch.equal(keep, alone)
    assert math.isnan(linear_cka([torch.zeros(5, 2)], [torch.randn(5, 2)]).item())


def _one_distinct_row(n, seed):
    x = np.zeros((n, 3))
    x[-1] = np.random.default_rng(seed).standard_normal(3)
    return x


@pytest.mark.parametrize("seed", range(8))
def test_a_side_whose_centred_kernel_vanishes_has_no_cka(seed):
    # n-1 identical rows and one other (a nearly dead layer): the RBF kernel off the diagonal is
    # a_i + a_j, so its U-centred matrix is 0 (the numpy oracle's norm is rounding noise) and the
    # unbiased CKA is 0/0. Likewise linear CKA of constant nonzero rows, biased or not.
    rng = np.random.default_rng(100 + seed)
    n = 5 + seed % 4
    x = _one_distinct_row(n, seed)
    k = np_rbf_kernel(x, 1.0)
    assert np.linalg.norm(np_center(k, True)) <= 1e-12 * np.linalg.norm(k)
    y = rng.standard_normal((n, 2))
    xs, ys = [torch.tensor(x), torch.randn(n, 4, dtype=torch.float64)], [torch.tensor(y), torch.tensor(y)]
    for got in (rbf_cka(xs, ys, unbiased=True), ops_cka.cka_reference(xs, ys, unbiased=True)):
        assert math.isnan(got[0].item()) and not math.isnan(got[1].item())
    constant = torch.tensor(np.tile(rng.standard_normal(4), (n, 1)))
    for unbiased in (False, True):
        for got in (linear_cka([constant], [torch.tensor(y)], unbiased=unbiased),
                    ops_cka.cka_reference([constant], [torch.tensor(y)], kernel="linear", unbiased=unbiased)):
            assert math.isnan(got.item())


def test_reference_matches_numpy():
    xs, ys = random_pairs(seed=5)
    xs.append(torch.ones(4, 3, dtype=torch.float64))
    ys.append(torch.randn(4, 2, dtype=torch.float64))
    got = ops_cka.cka_reference(xs, ys, kernel="rbf", threshold=0.5)
    want = [np_rbf_cka(x.numpy(), y.numpy(), 0.5, False) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


def test_weight_rows():
    conv = torch.randn(8, 3, 3, 5)
    assert torch.equal(weight_rows(conv), conv.reshape(8, 45))
    linear = torch.randn(4, 7)
    assert torch.equal(weight_rows(linear), linear)
    with pytest.raises(ValueError, match="weight"):
        weight_rows(torch.randn(5))
    with pytest.raises(TypeError, match="weight"):
        weight_rows([[1.0]])


@pytest.mark.parametrize(
    "xs, ys, kwargs, error, match",
    [
        ([], [], {}, ValueError, "xs"),
        ([torch.randn(4, 2)], [], {}, ValueError, "ys"),
        ([torch.randn(4, 2)], [torch.randn(5, 2)], {}, ValueError, "rows"),
        ([torch.randn(4)], [torch.randn(4)], {}, ValueError, r"xs\[0\]"),
        ([torch.ones(4, 2, dtype=torch.int64)], [torch.randn(4, 2)], {}, TypeError, r"xs\[0\]"),
        (torch.randn(4, 2), [torch.randn(4, 2)], {}, TypeError, "xs"),
        ([torch.randn(4, 2)], [np.ones((4, 2))], {}, TypeError, r"ys\[0\]"),
        ([torch.randn(3, 2)], [torch.randn(3, 2)], {"unbiased": True}, ValueError, "at least 4"),
        ([torch.randn(1, 2)], [torch.randn(1, 2)], {}, ValueError, "at least 2"),
        ([torch.randn(4, 0)], [torch.randn(4, 2)], {}, ValueError, "features"),
        ([torch.full((4, 2), math.nan)], [torch.randn(4, 2)], {}, ValueError, "non-finite"),
        ([torch.randn(4, 2)], [torch.randn(4, 2)], {"threshold": 0.0}, ValueError, "threshold"),
        ([torch.randn(4, 2)], [torch.randn(4, 2)], {"threshold": math.nan}, ValueError, "threshold"),
        ([torch.randn(4, 2)], [torch.randn(4, 2)], {"threshold": "1"}, TypeError, "threshold"),
        ([torch.randn(4, 2)], [torch.randn(4, 2)], {"unbiased": 1}, TypeError, "unbiased"),
    ],
)
def test_bad_input_names_the_argument(xs, ys, kwargs, error, match):
    with pytest.raises(error, match=match):
        rbf_cka(xs, ys, **kwargs)


def test_non_finite_values_are_named_on_every_path():
    xs, ys = random_pairs(seed=7)
    ys[1] = ys[1].clone()
    ys[1][2, 0] = math.inf
    with pytest.raises(ValueError, match=r"ys\[1\] has non-finite"):  # native: seen in the Gram diagonal
        rbf_cka(xs, ys)
    with pytest.raises(ValueError, match=r"ys\[1\] has non-finite"):  # Python check (CUDA and fallback)
        ops_cka.check_cka_inputs(xs, ys, unbiased=False, check_finite=True)


@pytest.mark.cuda
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_cuda_matches_cpu(kernel, unbiased):
    xs, ys = random_pairs(seed=6)
    xs, ys = xs[:-1], ys[:-1]
    xs += [sparse_pair(40, 257, 0.01, 2, zero_rows=30).double(), torch.ones(9, 4, dtype=torch.float64)]
    ys += [sparse_pair(40, 129, 0.02, 4, zero_rows=25).double(), torch.randn(9, 2, dtype=torch.float64)]
    cpu = ops_cka.cka(xs, ys, kernel=kernel, threshold=0.5, unbiased=unbiased)
    gpu = ops_cka.cka([x.cuda() for x in xs], [y.cuda() for y in ys], kernel=kernel, threshold=0.5,
                      unbiased=unbiased)
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-9, equal_nan=True)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_tensors_off_the_current_device():
    xs, ys = random_pairs(seed=8)
    cpu = ops_cka.cka(xs, ys)
    with torch.cuda.device(0):
        gpu = ops_cka.cka([x.to("cuda:1") for x in xs], [y.to("cuda:1") for y in ys])
    assert gpu.device == torch.device("cuda:1")
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("unbiased", [False, True])
# 100 rows: the upper triangle is sorted whole; 200/201/700: a sampled bracket, 700 with many units
# per pair; 1300: the bracket overflows shared memory and the radix select decides.
@pytest.mark.parametrize("n", [100, 200, 201, 700, 1300])
def test_cuda_median_paths_match_numpy(n, unbiased):
    xs, ys = _large_cases(n, seed=n)
    got = rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys], threshold=0.5, unbiased=unbiased).cpu()
    want = [np_rbf_cka(x.numpy(), y.numpy(), 0.5, unbiased) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    assert torch.equal(got, rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys], threshold=0.5,
                                    unbiased=unbiased).cpu()), "the same inputs gave another result"


@pytest.mark.cuda
def test_cuda_float32_inputs_and_tf32_matmuls():
    g = torch.Generator().manual_seed(12)
    xs = [torch.randn(n, d, generator=g) for n, d in ((256, 512), (64, 2304), (3, 40))]
    ys = [torch.randn(n, d, generator=g) + 0.3 * x[:, :1] for x, (n, d) in zip(xs, ((256, 128), (64, 9), (3, 7)))]
    want = [np_rbf_cka(x.numpy(), y.numpy(), 1.0, False) for x, y in zip(xs, ys)]
    float32_grams = rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys]).cpu()
    np.testing.assert_allclose(float32_grams.numpy(), want, rtol=0, atol=1e-5)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # pylth must then form the Grams in float64
    try:
        exact_grams = rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys]).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    np.testing.assert_allclose(exact_grams.numpy(), want, rtol=0, atol=1e-10)


@pytest.mark.cuda
def test_cuda_non_finite_and_degenerate_pairs():
    xs, ys = random_pairs(seed=9)
    ys[1] = ys[1].clone()
    ys[1][2, 0] = math.nan
    with pytest.raises(ValueError, match=r"ys\[1\] has non-finite"):
        rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys])
    xs, ys = random_pairs(seed=4)
    alone = rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys]).cpu()
    xs.insert(2, torch.ones(9, 6, dtype=torch.float64))  # every squared distance 0: no bandwidth
    ys.insert(2, torch.randn(9, 3, dtype=torch.float64))
    got = rbf_cka([x.cuda() for x in xs], [y.cuda() for y in ys]).cpu()
    assert math.isnan(got[2].item())
    assert torch.equal(torch.cat([got[:2], got[3:]]), alone)


# ---- every CPU path (csrc/cpu_dispatch.h) against the numpy CKA ----

def path_pairs():
    """Dense float32 pairs (whose Grams the AVX-512 path computes itself: row counts off its 12-row
    tiles and 32-column panels, depths off 16 and past its 256-deep blocks), dense float64 (BLAS), and
    mostly-zero float32 and float64 pairs (the nonzero scan: column counts off the vector widths). From
    129 rows on, the median is selected through a sampled bracket. Returns xs, ys and the tolerance of
    each pair (float32 Grams round at ~1e-7 of the squared norms)."""
    g = torch.Generator().manual_seed(29)
    randn = lambda n, d, dtype=torch.float32: torch.randn(n, d, generator=g, dtype=dtype)  # noqa: E731
    xs = [randn(3, 1), randn(13, 17), randn(40, 300), randn(33, 513), randn(130, 45), randn(25, 20, torch.float64),
          sparse_pair(150, 1000, 0.01, 30), sparse_pair(70, 33, 0.02, 31).double()]
    ys = [randn(3, 2), randn(13, 16), randn(40, 256), randn(33, 31), randn(130, 64), randn(25, 7, torch.float64),
          sparse_pair(150, 17, 0.04, 32), sparse_pair(70, 129, 0.01, 33)]
    for x, y in zip(xs[:5], ys[:5]):  # related sides, so that the CKAs are not all near 0
        y[:, : min(x.shape[1], y.shape[1])] += x[:, : min(x.shape[1], y.shape[1])]
    return xs, ys, [1e-5] * 5 + [1e-9] * 3


@pytest.mark.parametrize("unbiased", [False, True])
def test_every_cpu_path_matches_numpy(cpu_isa_path, unbiased):
    xs, ys, tolerance = path_pairs()
    if unbiased:
        xs, ys, tolerance = xs[1:], ys[1:], tolerance[1:]  # 4 rows at least
    assert ops_cka._mostly_zero(xs + ys) == [0] * (len(xs) - 2) + [1, 1] + [0] * (len(ys) - 2) + [1, 1]
    got = rbf_cka(xs, ys, threshold=0.7, unbiased=unbiased).numpy()
    want = [np_rbf_cka(x.numpy(), y.numpy(), 0.7, unbiased) for x, y in zip(xs, ys)]
    assert np.all(np.abs(got - want) <= tolerance), (got - want, tolerance)
    got = linear_cka(xs, ys, unbiased=unbiased).numpy()
    want = [np_cka_from_kernels(x.double().numpy() @ x.double().numpy().T, y.double().numpy() @ y.double().numpy().T,
                                unbiased) for x, y in zip(xs, ys)]
    assert np.all(np.abs(got - want) <= tolerance), (got - want, tolerance)


@pytest.mark.parametrize("sparse", [False, True])
def test_every_cpu_path_names_the_first_non_finite_matrix(cpu_isa_path, sparse):
    make = (lambda seed: sparse_pair(66, 97, 0.01 if sparse else 1.0, seed))
    xs, ys = [make(s) for s in range(3)], [make(s + 3) for s in range(3)]
    xs[2][65, 96] = math.nan  # the last row's last column: a tail lane of every vector loop
    ys[1][0, 0] = math.inf
    with pytest.raises(ValueError, match=r"xs\[2\] has non-finite"):
        rbf_cka(xs, ys)
    xs[2][65, 96] = 0.0
    with pytest.raises(ValueError, match=r"ys\[1\] has non-finite"):
        rbf_cka(xs, ys)


def test_only_the_avx512_path_computes_dense_float32_grams_and_the_kernel_checks_it(cpu_isa_path):
    computes = ops_cka.require_native().cka_cpu_dense_gram()
    assert computes == (cpu_isa_path == "avx512")
    x = torch.randn(10, 7)
    for matrix in (x, x.double()):
        table = ops_cka._cpu_table([matrix, matrix])
        table[:, ops_cka.GRAM_FROM_COLUMN] = ops_cka.GRAM_COMPUTED
        out = torch.empty(1, dtype=torch.float64)
        if computes and matrix.dtype == torch.float32:
            launch("cka", "cpu", table, 1, 1.0, False, out.data_ptr())
            assert out.item() == pytest.approx(1.0)
        else:
            with pytest.raises(ValueError, match="asks for a dense Gram"):
                launch("cka", "cpu", table, 1, 1.0, False, out.data_ptr())
