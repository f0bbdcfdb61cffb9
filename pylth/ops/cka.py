"""CKA of many (X, Y) pairs in one native call: checks, Gram matrices, dispatch, pure-torch reference.

The Gram products come from BLAS (torch) or from the native CPU call itself, which gathers them pair by
pair from the nonzeros of mostly-zero matrices and, on the AVX-512 CPU path, computes those of dense
float32 matrices; squared distances, the median bandwidth, the kernel and the HSIC sums are native. csrc/cka.h documents the estimators and the tables the native
calls take; the README's "CKA between tickets" gives the definitions.
"""
from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor

import torch

from pylth.ops.checks import check_same_length, check_tensor, check_tensor_list
from pylth.ops.dispatch import NATIVE, backend, launch, pack_table
from pylth.ops.native import require_native

KERNELS = {"linear": 0, "rbf": 1}
# The native tables (csrc/cka.h), one row per matrix, the xs then the ys. CPU: the matrix's address, its
# dense Gram's (when given), rows, cols, is_double, and where the kernel takes the Gram from: the Gram
# column (a BLAS product), the matrix's nonzeros, or its own dense kernel (float32, AVX-512 path).
# CUDA: the Gram's address and n, followed by each pair's first work unit.
CPU_TABLE_WIDTH, GRAM_COLUMN, GRAM_FROM_COLUMN = 6, 1, 5
GRAM_GIVEN, GRAM_FROM_NONZEROS, GRAM_COMPUTED = 0, 1, 2
CUDA_TABLE_WIDTH = 2
# Below this fraction of nonzeros a CPU Gram is cheaper by gathering each column's nonzeros than by a
# dense GEMM (the sparse work falls with the square of the density; measured in bench/test_bench_cka.py).
# Judged from every 16th row of a matrix (every row under 64 rows): a wrong guess costs only time.
SPARSE_GRAM_MAX_DENSITY = 0.05


def check_cka_inputs(xs, ys, *, unbiased: bool, check_finite: bool = True) -> tuple[list, list]:
    """Validate the pair lists; returns them as lists. Raises ValueError/TypeError naming the argument.

    check_finite=False leaves the NaN/infinity check to the native CPU kernel (it sees them in the
    Gram diagonals at O(n) instead of O(n d) per matrix).
    """
    xs = check_tensor_list(xs, "xs")
    ys = check_tensor_list(ys, "ys")
    check_same_length(xs, "xs", ys, "ys")
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be a bool, got {type(unbiased).__name__}")
    min_rows = 4 if unbiased else 2
    device = xs[0].device
    for name, ts in (("xs", xs), ("ys", ys)):
        for i, t in enumerate(ts):
            check_tensor(t, f"{name}[{i}]", dtypes=(torch.float32, torch.float64), device=device, contiguous=False)
            if t.dim() != 2:
                raise ValueError(f"{name}[{i}] must be 2-D (rows x features), got shape {tuple(t.shape)}")
            if t.shape[1] == 0:
                raise ValueError(f"{name}[{i}] has no features (shape {tuple(t.shape)})")
    if check_finite:  # one device-to-host transfer for all tensors, not one per tensor
        finite = torch.stack([torch.isfinite(t).all() for t in xs + ys]).tolist()
        if not all(finite):
            m = finite.index(False)
            name, i = ("xs", m) if m < len(xs) else ("ys", m - len(xs))
            raise ValueError(f"{name}[{i}] has non-finite values")
    for i, (x, y) in enumerate(zip(xs, ys)):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"xs[{i}] has {x.shape[0]} rows but ys[{i}] has {y.shape[0]}")
        if x.shape[0] < min_rows:
            kind = "unbiased" if unbiased else "biased"
            raise ValueError(f"xs[{i}] has {x.shape[0]} rows; {kind} CKA needs at least {min_rows}")
    return xs, ys


def check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be positive and finite, got {threshold}")
    return float(threshold)


def cka(xs, ys, *, kernel: str = "rbf", threshold: float = 1.0, unbiased: bool = False,
        sparse_gram_max_density: float = SPARSE_GRAM_MAX_DENSITY) -> torch.Tensor:
    """CKA of each pair (xs[i], ys[i]) as a float64 tensor on the inputs' device (NaN where undefined).
    ``sparse_gram_max_density``: the fraction of nonzeros up to which a CPU matrix's Gram is gathered
    from its nonzeros instead of a dense product (the measured crossover; the results agree to rounding)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    threshold = check_threshold(threshold)
    if (isinstance(sparse_gram_max_density, bool) or not isinstance(sparse_gram_max_density, (int, float))
            or not 0.0 <= sparse_gram_max_density <= 1.0):
        raise ValueError(f"sparse_gram_max_density must be a number in [0, 1], got {sparse_gram_max_density!r}")
    device = check_tensor_list(xs, "xs")[0].device
    native = backend("cka", device) == NATIVE  # a missing or stale native module is an error
    # The native kernels see a NaN or infinity in the Gram diagonals, at O(n) instead of O(n d).
    xs, ys = check_cka_inputs(xs, ys, unbiased=unbiased, check_finite=not native)
    if not native:
        return cka_reference(xs, ys, kernel=kernel, threshold=threshold, unbiased=unbiased)
    if device.type == "cuda":
        return _cka_cuda(xs, ys, kernel, threshold, unbiased)
    return _cka_cpu([x.contiguous() for x in xs], [y.contiguous() for y in ys], kernel, threshold, unbiased,
                    sparse_gram_max_density)


# Kernel (and HSIC) entries per CUDA work unit: a pair is split into blocks of whole rows of about
# this size, so that large pairs spread over many multiprocessors.
CUDA_UNIT_ENTRIES = 8192


def _cka_cuda(xs, ys, kernel, threshold, unbiased) -> torch.Tensor:
    """Grams by one batched GEMM per input shape, kept where cuBLAS wrote them; then two native launches."""
    device = xs[0].device
    mats = xs + ys
    pairs = len(xs)
    dtype = _cuda_gram_dtype(mats)
    products, addresses = _cuda_grams(mats, dtype)
    sizes = [m.shape[0] for m in mats]
    first_unit = [0]
    for n in sizes[:pairs]:
        rows = -(-CUDA_UNIT_ENTRIES // n)  # per unit (the kernel recomputes it the same way)
        first_unit.append(first_unit[-1] + -(-n // rows))
    table = pack_table(list(zip(addresses, sizes)), CUDA_TABLE_WIDTH, device, trailer=first_unit)
    units = first_unit[-1]
    workspace = torch.empty(2 * pairs + 8 * units, dtype=torch.float64, device=device)
    flags = torch.zeros(3 * pairs, dtype=torch.int32, device=device)
    out = torch.empty(pairs, dtype=torch.float64, device=device)
    launch("cka", device, table, units, CUDA_UNIT_ENTRIES, dtype == torch.float64, KERNELS[kernel], threshold,
           unbiased, workspace.data_ptr(), flags.data_ptr(), out.data_ptr())
    nonfinite = flags[: 2 * pairs].nonzero().flatten().tolist()  # waits for the kernels
    if nonfinite:
        m = nonfinite[0]
        name, i = ("xs", m) if m < pairs else ("ys", m - pairs)
        raise ValueError(f"{name}[{i}] has non-finite values (or values whose squares overflow)")
    del products, table  # kept alive until the kernels that read them have finished
    return out


def _cuda_gram_dtype(mats) -> torch.dtype:
    """float32 Grams for float32 inputs unless matmuls may use TF32 (too coarse for CKA's 1e-5): float64."""
    if any(m.dtype == torch.float64 for m in mats):
        return torch.float64
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return torch.float64 if tf32 else torch.float32


def _cuda_grams(mats, dtype) -> tuple[list, list]:
    """The Gram M M^T of every matrix, one batched GEMM per (rows, cols); returns the product tensors
    (to keep alive) and each matrix's Gram address."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault(tuple(m.shape), []).append(i)
    products, addresses = [], [0] * len(mats)
    for (n, _), members in groups.items():
        stacked = mats[members[0]].unsqueeze(0) if len(members) == 1 else torch.stack([mats[i] for i in members])
        stacked = stacked.to(dtype)
        product = torch.bmm(stacked, stacked.transpose(1, 2))
        products.append(product)
        for k, i in enumerate(members):
            addresses[i] = product.data_ptr() + k * n * n * product.element_size()
    return products, addresses


def _cpu_table(mats) -> torch.Tensor:
    """The CPU table of contiguous ``mats``, every Gram gathered from the nonzeros (no Gram addresses)."""
    return pack_table([(m.data_ptr(), 0, m.shape[0], m.shape[1], int(m.dtype == torch.float64), GRAM_FROM_NONZEROS)
                       for m in mats], CPU_TABLE_WIDTH)


def _cka_cpu(xs, ys, kernel, threshold, unbiased, sparse_gram_max_density: float) -> torch.Tensor:
    """BLAS Grams for the dense matrices the native call does not compute itself; it gathers the
    mostly-zero ones' Grams (and, on the AVX-512 path, computes the dense float32 ones), pair by pair
    in per-thread memory, and computes every pair's CKA."""
    mats = xs + ys
    table = _cpu_table(mats)
    sparse = _mostly_zero(mats, table, sparse_gram_max_density)
    computes_dense = require_native().cka_cpu_dense_gram()
    sources = [GRAM_FROM_NONZEROS if sparse[i]
               else GRAM_COMPUTED if computes_dense and m.dtype == torch.float32 else GRAM_GIVEN
               for i, m in enumerate(mats)]
    given = [i for i, source in enumerate(sources) if source == GRAM_GIVEN]
    grams = _dense_grams_cpu([mats[i] for i in given])  # alive until the native call returns
    gram_addresses = [0] * len(mats)
    for i, g in zip(given, grams):
        gram_addresses[i] = g.data_ptr()
    table[:, GRAM_COLUMN] = torch.tensor(gram_addresses, dtype=torch.int64)
    table[:, GRAM_FROM_COLUMN] = torch.tensor(sources, dtype=torch.int64)
    out = torch.empty(len(xs), dtype=torch.float64)
    launch("cka", "cpu", table, KERNELS[kernel], threshold, unbiased, out.data_ptr())
    return out


def _mostly_zero(mats, table: torch.Tensor | None = None, max_density: float = SPARSE_GRAM_MAX_DENSITY) -> list:
    """Which contiguous CPU matrices have at most ``max_density`` nonzeros (judged from a sample of rows);
    ``table``: their CPU table when the caller has it already."""
    table = _cpu_table(mats) if table is None else table
    flags = torch.zeros(len(mats), dtype=torch.uint8)
    launch("mostly_zero", "cpu", table, max_density, flags.data_ptr())
    return flags.tolist()


@contextlib.contextmanager
def _single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _dense_grams_cpu(mats) -> list:
    """The Grams M M^T (in M's dtype) of many small matrices: one BLAS thread per matrix, the matrices
    in parallel (threads that split each small GEMM spend their time in barriers, badly so on a busy
    machine)."""
    grams = [None] * len(mats)

    def gram(i):
        grams[i] = mats[i] @ mats[i].T

    order = sorted(range(len(mats)), key=lambda i: mats[i].numel() * mats[i].shape[0], reverse=True)
    with _single_threaded_torch() as threads, ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(gram, order))
    return grams


# ---------------------------------------------------------------------------------------------
# Pure-torch float64 reference: explicit centring matrix, a full sort for the median.

def _median_sq_distance(d2: torch.Tensor) -> float:
    values = torch.sort(d2.flatten()).values
    count = values.numel()
    median = 0.5 * (values[(count - 1) // 2] + values[count // 2]).item()
    if median > 0:
        return median
    positive = values[values > 0]
    if positive.numel() == 0:
        return math.nan
    p = positive.numel()
    return 0.5 * (positive[(p - 1) // 2] + positive[p // 2]).item()


def _kernel_matrix(x: torch.Tensor, kernel: str, threshold: float) -> torch.Tensor | None:
    x = x.to(torch.float64)
    g = x @ x.T
    if kernel == "linear":
        return g
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    d2.fill_diagonal_(0)
    median = _median_sq_distance(d2)
    if math.isnan(median):
        return None
    return torch.exp(-d2 / (2 * threshold**2 * median))


def _hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool) -> float:
    n = k.shape[0]
    if not unbiased:
        h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
        return float(torch.trace(k @ h @ l @ h)) / (n - 1) ** 2
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    value = (torch.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2))
             - 2.0 / (n - 2) * (ones @ k @ l @ ones))
    return float(value) / (n * (n - 3))


def _self_hsic_resolved(k: torch.Tensor, hsic: float, unbiased: bool) -> bool:
    """HSIC(K, K) is a squared norm (>= 0) but is only known to ~n*eps of the magnitude of its terms;
    below that the centred kernel vanishes and CKA is 0/0 (the rule of csrc/cka.h)."""
    n = k.shape[0]
    if unbiased:
        k = k.clone().fill_diagonal_(0)
        rows = k.sum(1)
        magnitude = (float((k * k).sum() + k.sum() ** 2 / ((n - 1) * (n - 2)) + 2.0 / (n - 2) * (rows * rows).sum())
                     / (n * (n - 3)))
    else:
        rows = k.sum(1)
        magnitude = float((k * k).sum() + 2.0 / n * (rows * rows).sum() + k.sum() ** 2 / n**2) / (n - 1) ** 2
    return hsic > 64 * n * 2.220446049250313e-16 * magnitude


def cka_reference(xs, ys, *, kernel: str = "rbf", threshold: float = 1.0, unbiased: bool = False) -> torch.Tensor:
    """The definition, pair by pair in float64 (test oracle and fallback)."""
    values = []
    for x, y in zip(xs, ys):
        k = _kernel_matrix(x, kernel, threshold)
        l = _kernel_matrix(y, kernel, threshold)
        if k is None or l is None:
            values.append(math.nan)
            continue
        kk, ll = _hsic(k, k, unbiased), _hsic(l, l, unbiased)
        defined = _self_hsic_resolved(k, kk, unbiased) and _self_hsic_resolved(l, ll, unbiased)
        values.append(_hsic(k, l, unbiased) / math.sqrt(kk * ll) if defined else math.nan)
    return torch.tensor(values, dtype=torch.float64, device=xs[0].device)
