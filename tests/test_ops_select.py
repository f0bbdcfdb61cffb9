"""Magnitude selection against a numpy stable-argsort oracle, on the native kernel and the reference."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pylth.ops.dispatch import pack_table
from pylth.ops.native import native as _C
from pylth.ops.select import magnitude_select, magnitude_select_global, reference_select


def numpy_oracle(weights, ratios, masks, global_mode=False):
    """Prune floor(r*n_active+0.5) active entries of smallest |w|, ties to the lower flat index."""
    flat = [np.abs(w.numpy().reshape(-1)) for w in weights]
    active = [np.ones(f.shape, bool) if m is None else m.numpy().reshape(-1) for f, m in zip(flat, masks)]
    if global_mode:
        flat, active, ratios = [np.concatenate(flat)], [np.concatenate(active)], ratios[:1]
    kept = []
    for f, a, r in zip(flat, active, ratios):
        idx = np.flatnonzero(a)
        k = math.floor(r * idx.size + 0.5)
        order = np.argsort(f[idx], kind="stable")
        out = a.copy()
        out[idx[order[:k]]] = False
        kept.append(out)
    if global_mode:
        kept = np.split(kept[0], np.cumsum([w.numel() for w in weights])[:-1])
    return [torch.from_numpy(k.reshape(w.shape)) for k, w in zip(kept, weights)]


def random_case(seed, count=6, max_size=30000, ties=False, density=0.5):
    gen = torch.Generator().manual_seed(seed)
    weights, masks, ratios = [], [], []
    for _ in range(count):
        n = int(torch.randint(1, max_size, (1,), generator=gen))
        w = torch.randn(n, generator=gen)
        if ties:  # few distinct magnitudes, both signs, signed zeros
            w = torch.randint(-3, 4, (n,), generator=gen).float() * 0.5
            w[torch.rand(n, generator=gen) < 0.2] = -0.0
        weights.append(w)
        masks.append(torch.rand(n, generator=gen) < density)
        ratios.append(float(torch.rand(1, generator=gen)))
    return weights, masks, ratios


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == torch.bool and g.shape == w.shape
        assert torch.equal(g, w)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_layerwise_matches_numpy(seed, ties):
    weights, masks, ratios = random_case(seed, ties=ties, density=[0.5, 0.05, 1.0][seed % 3])
    want = numpy_oracle(weights, ratios, masks)
    assert_same(magnitude_select(weights, ratios, masks), want)
    assert_same(reference_select(weights, ratios, masks, False), want)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_global_matches_numpy(seed, ties):
    weights, masks, ratios = random_case(100 + seed, ties=ties)
    want = numpy_oracle(weights, ratios, masks, global_mode=True)
    assert_same(magnitude_select_global(weights, ratios[0], masks), want)
    assert_same(reference_select(weights, ratios[:1], masks, True), want)


def test_large_tensors_hit_the_sampled_bracket_and_stay_exact():
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(300_000, generator=gen), torch.randn(70, 3000, generator=gen) * 1e-3]
    weights[1][::7] = 0.0  # a block of ties right at small magnitudes
    masks = [torch.rand(w.shape, generator=gen) < 0.7 for w in weights]
    for ratios in ([0.3, 0.02], [0.999, 0.5], [0.0001, 0.97]):
        assert_same(magnitude_select(weights, ratios, masks), numpy_oracle(weights, ratios, masks))
    assert_same(magnitude_select_global(weights, 0.4, masks), numpy_oracle(weights, [0.4], masks, True))


def test_all_equal_magnitudes_prune_the_first_k_active():
    w = torch.full((10_000,), 2.0)
    w[::2] = -2.0
    (kept,) = magnitude_select([w], [0.25])
    assert torch.equal(kept, torch.arange(10_000) >= 2500)


def test_signed_zero_ranks_as_zero():
    w = torch.tensor([0.0, -0.0, 1.0, -0.0, 0.0, -1e-30])
    (kept,) = magnitude_select([w], [0.5])
    assert kept.tolist() == [False, False, True, False, True, True]


def test_no_mask_means_all_active_and_shapes_are_kept():
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(8, 4, 3, 3, generator=gen), torch.randn(5, 7, generator=gen)]
    got = magnitude_select(weights, [0.3, 0.6])
    assert_same(got, numpy_oracle(weights, [0.3, 0.6], [None, None]))
    assert [int(g.sum()) for g in got] == [288 - 86, 35 - 21]


def test_edge_cases_nothing_active_ratios_0_and_1_size_1_and_empty():
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(5000, generator=gen), torch.randn(1), torch.randn(1), torch.randn(0),
               torch.randn(6000, generator=gen), torch.randn(6000, generator=gen)]
    masks = [torch.zeros(5000, dtype=torch.bool), torch.ones(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool),
             torch.ones(0, dtype=torch.bool), torch.rand(6000, generator=gen) < 0.5, torch.rand(6000, generator=gen) < 0.5]
    ratios = [0.5, 0.5, 0.49, 0.7, 0.0, 1.0]
    got = magnitude_select(weights, ratios, masks)
    assert_same(got, numpy_oracle(weights, ratios, masks))
    assert not got[0].any() and not got[1].any() and got[2].all() and got[3].numel() == 0
    assert torch.equal(got[4], masks[4]) and not got[5].any()
    for r in (0.0, 1.0):
        assert_same(magnitude_select_global(weights, r, masks), numpy_oracle(weights, [r], masks, True))


def test_deterministic_and_inputs_untouched():
    weights, masks, ratios = random_case(11, ties=True)
    copies = [w.clone() for w in weights], [m.clone() for m in masks]
    first = magnitude_select(weights, ratios, masks)
    assert_same(magnitude_select(weights, ratios, masks), first)
    assert all(torch.equal(a, b) for a, b in zip(weights, copies[0]))
    assert all(torch.equal(a, b) for a, b in zip(masks, copies[1]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_names_the_tensor(bad):
    weights = [torch.randn(100), torch.randn(20_000)]
    weights[1][12_345] = bad
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        magnitude_select(weights, [0.1, 0.1])
    with pytest.raises(ValueError, match="down.0.conv"):
        magnitude_select_global(weights, 0.1, names=["head", "down.0.conv"])
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        reference_select(weights, [0.1, 0.1], [None, None], False)


def test_bad_arguments_raise_naming_the_argument():
    w = [torch.randn(4, 4)]
    with pytest.raises(TypeError, match="weights"):
        magnitude_select(torch.randn(3), [0.1])
    with pytest.raises(ValueError, match="weights"):
        magnitude_select([], [])
    with pytest.raises(TypeError, match=r"weights\[0\]"):
        magnitude_select([torch.randn(4, dtype=torch.float64)], [0.1])
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        magnitude_select([torch.randn(4, 4).t()], [0.1])
    with pytest.raises(ValueError, match="ratios"):
        magnitude_select(w, [0.1, 0.2])
    with pytest.raises(ValueError, match="ratios"):
        magnitude_select(w, [1.5])
    with pytest.raises(ValueError, match="ratios"):
        magnitude_select(w, [float("nan")])
    with pytest.raises(TypeError, match="ratios"):
        magnitude_select(w, ["0.1"])
    with pytest.raises(ValueError, match="ratio"):
        magnitude_select_global(w, -0.1)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        magnitude_select(w, [0.1], [torch.ones(4, dtype=torch.bool)])
    with pytest.raises(TypeError, match=r"masks\[0\]"):
        magnitude_select(w, [0.1], [torch.ones(4, 4, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="masks"):
        magnitude_select(w, [0.1], [torch.ones(4, 4, dtype=torch.bool)] * 2)
    with pytest.raises(TypeError, match="names"):
        magnitude_select(w, [0.1], names=5)
    with pytest.raises(ValueError, match="names"):
        magnitude_select(w, [0.1], names=["a", "b"])


_OUT_OF_MEMORY_SCRIPT = """
import resource, sys
import torch
from pylth.ops.select import magnitude_select, magnitude_select_global

def vm_data_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))

select = magnitude_select_global if sys.argv[1] == "global" else magnitude_select
ratio = 0.5 if sys.argv[1] == "global" else [0.5]
select([torch.ones(3)], ratio)  # start the OpenMP threads before the limit
weights = [torch.full((8_000_000,), 0.5)]  # all ties: every active entry is a candidate (8 bytes each)
resource.setrlimit(resource.RLIMIT_DATA, (vm_data_bytes() + 40 * 2**20, resource.RLIM_INFINITY))
try:
    select(weights, ratio)
    print("completed")
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc are Linux's")
@pytest.mark.parametrize("mode", ["segments", "global"])
def test_out_of_memory_inside_the_kernel_raises_instead_of_aborting(mode, tmp_path):
    # std::bad_alloc thrown inside an OpenMP region calls std::terminate unless caught there.
    run = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY_SCRIPT, mode], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "MemoryError"


@pytest.mark.cuda
def test_cuda_matches_cpu_bit_for_bit():
    for seed, ties in [(0, False), (1, True), (2, False)]:
        weights, masks, ratios = random_case(200 + seed, count=9, max_size=400_000, ties=ties)
        want = magnitude_select(weights, ratios, masks)
        got = magnitude_select([w.cuda() for w in weights], ratios, [m.cuda() for m in masks])
        assert_same([g.cpu() for g in got], want)
        want = magnitude_select_global(weights, ratios[0], masks)
        got = magnitude_select_global([w.cuda() for w in weights], ratios[0], [m.cuda() for m in masks])
        assert_same([g.cpu() for g in got], want)
    weights = [torch.randn(1000, device="cuda"), torch.randn(3, device="cuda")]
    weights[1][1] = float("nan")
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        magnitude_select(weights, [0.5, 0.5])


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_tensors_off_the_current_device():
    weights, masks, ratios = random_case(210, count=3, max_size=50_000)
    want = magnitude_select(weights, ratios, masks)
    with torch.cuda.device(0):
        got = magnitude_select([w.to("cuda:1") for w in weights], ratios, [m.to("cuda:1") for m in masks])
    assert all(g.device == torch.device("cuda:1") for g in got)
    assert_same([g.cpu() for g in got], want)


def _select_cpu(rows, ratios, global_mode=False, use_bracket=True, width=4):
    table = pack_table(rows, width)
    ratios = torch.tensor(ratios, dtype=torch.float64)
    return _C.select_cpu(table.data_ptr(), table.shape[0], width, ratios.data_ptr(), global_mode, use_bracket, 1)


def _rows(weights, masks, outs):
    return [(w.data_ptr(), m.data_ptr(), o.data_ptr(), w.numel()) for w, m, o in zip(weights, masks, outs)]


@pytest.mark.parametrize("ties", [False, True])
def test_radix_select_path_alone_matches_numpy(ties):
    """The exact fallback (taken when a sampled bracket misses) on its own, via the native entry point."""
    weights, masks, ratios = random_case(300, ties=ties)
    outs = [torch.empty_like(m) for m in masks]
    assert _select_cpu(_rows(weights, masks, outs), ratios, use_bracket=False) == -1
    assert_same(outs, numpy_oracle(weights, ratios, masks))
    assert _select_cpu(_rows(weights, masks, outs), ratios[:1], global_mode=True, use_bracket=False) == -1
    assert_same(outs, numpy_oracle(weights, ratios, masks, global_mode=True))


def test_native_entry_point_raises_instead_of_aborting():
    w, out = torch.randn(5), torch.empty(5, dtype=torch.bool)
    good = (w.data_ptr(), 0, out.data_ptr(), 5)
    with pytest.raises(ValueError, match="select_cpu: the table must have 4 columns, got 3"):
        _select_cpu([good[:3]], [0.5], width=3)
    with pytest.raises(ValueError, match="null table"):
        _C.select_cpu(0, 2, 4, 0, False, True, 1)
    with pytest.raises(ValueError, match="null ratios"):
        table = pack_table([good], 4)
        _C.select_cpu(table.data_ptr(), 1, 4, 0, False, True, 1)
    with pytest.raises(ValueError, match="null weight or output address in row 1"):
        _select_cpu([good, (0, 0, out.data_ptr(), 5)], [0.5, 0.5])
    with pytest.raises(ValueError, match="null weight or output address in row 0"):
        _select_cpu([(w.data_ptr(), 0, 0, 5)], [0.5], global_mode=True)
    with pytest.raises(ValueError, match="size out of range in row 0"):
        _select_cpu([good[:3] + (-1,)], [0.5])
    with pytest.raises(ValueError, match=r"ratios must lie in \[0, 1\]"):
        _select_cpu([good], [1.5])
    with pytest.raises(ValueError, match="num_threads"):
        table, ratios = pack_table([good], 4), torch.tensor([0.5], dtype=torch.float64)
        _C.select_cpu(table.data_ptr(), 1, 4, ratios.data_ptr(), False, True, 0)
    w[3] = float("inf")
    assert _select_cpu([(0, 0, 0, 0), good], [0.5, 0.5]) == 1  # an empty segment needs no addresses


# ---- every CPU path (csrc/cpu_dispatch.h) against numpy's stable argsort ----

# Around the vector widths (16 keys, the AVX-512 pass's 64-entry step) and the portable pass's 256-entry
# blocks; 4096 and up take the sampled bracket.
PATH_SIZES = [1, 2, 15, 16, 17, 63, 64, 65, 127, 129, 255, 256, 257, 4095, 4097, 20_001, 70_001]


def path_case(seed, ties):
    gen = torch.Generator().manual_seed(seed)
    weights, masks, ratios = [], [], []
    for i, n in enumerate(PATH_SIZES):
        w = torch.randn(n, generator=gen)
        if ties:
            w = torch.randint(-2, 3, (n,), generator=gen).float() * 0.25
            w[torch.rand(n, generator=gen) < 0.1] = -0.0
        weights.append(w)
        masks.append(torch.rand(n, generator=gen) < [0.5, 0.03, 1.0][i % 3])
        ratios.append(float(torch.rand(1, generator=gen)))
    return weights, masks, ratios


@pytest.mark.parametrize("ties", [False, True])
def test_every_cpu_path_matches_numpy_on_tails_masks_and_ties(cpu_isa_path, ties):
    weights, masks, ratios = path_case(40 + ties, ties)
    assert_same(magnitude_select(weights, ratios, masks), numpy_oracle(weights, ratios, masks))
    assert_same(magnitude_select(weights, ratios), numpy_oracle(weights, ratios, [None] * len(weights)))
    for ratio in (0.3, 0.97):
        assert_same(magnitude_select_global(weights, ratio, masks), numpy_oracle(weights, [ratio], masks, True))
    # The exact fallback alone (the pass that collects exactly the threshold's ties).
    outs = [torch.empty_like(m) for m in masks]
    assert _select_cpu(_rows(weights, masks, outs), ratios, use_bracket=False) == -1
    assert_same(outs, numpy_oracle(weights, ratios, masks))


@pytest.mark.parametrize("where", [0, 63, 64, 70_000])  # first lane, end of a 64-entry step, a tail lane
@pytest.mark.parametrize("active", [True, False])
def test_every_cpu_path_finds_a_non_finite_weight_anywhere(cpu_isa_path, where, active):
    weights = [torch.randn(300), torch.randn(70_001)]
    masks = [torch.ones(300, dtype=torch.bool), torch.rand(70_001) < 0.5]
    weights[1][where] = float("nan") if where % 2 else float("inf")
    masks[1][where] = active  # pruned entries are checked too
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        magnitude_select(weights, [0.2, 0.2], masks)
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        magnitude_select_global(weights, 0.2, masks)
