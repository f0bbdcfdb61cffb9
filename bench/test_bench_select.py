"""pylth's exact magnitude selection beside what a user writes today, on the DDPM CIFAR-10 shapes.

Workload: the 113 conv/linear weights (>= 2-D shapes) of bench/ddpm_cifar10_param_shapes.json,
50 %-dense random masks, layerwise ratios min(0.95, 0.2 + 0.01 * j) for tensor j (global: 0.2).
Baselines: per tensor ``w.abs()[mask]`` + ``torch.kthvalue`` + compare; global: ``torch.kthvalue``
over the concatenation. On the CPU, pylth runs once per CPU path (bench/conftest.py) beside the same
baselines. The speed-ups (baseline time / pylth time, min and median over rounds) are printed after
the module; compare only numbers from one run.

    python -m pytest bench/test_bench_select.py --benchmark-only [--cpu-isa avx512,avx2]
"""
import pytest
import torch

from pylth.ops.select import magnitude_select, magnitude_select_global
from ratios import cpu_model, min_and_median, print_after_module

GLOBAL_RATIO = 0.2
_times = {}  # (device, case) -> (min, median) seconds


def workload(shapes, device):
    """The weights, their 50 %-dense masks and the layerwise ratios (bench/gpu_timings.py times the same)."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen).to(device) for s in shapes]
    masks = [(torch.rand(s, generator=gen) < 0.5).to(device) for s in shapes]
    ratios = [min(0.95, 0.2 + 0.01 * j) for j in range(len(shapes))]
    return weights, masks, ratios


@pytest.fixture(scope="module")
def cpu_workload(ddpm_weight_shapes):
    return workload(ddpm_weight_shapes, "cpu")


@pytest.fixture(scope="module")
def cuda_workload(ddpm_weight_shapes):
    return workload(ddpm_weight_shapes, "cuda")


def loop_kthvalue(weights, masks, ratios):
    out = []
    for w, m, r in zip(weights, masks, ratios):
        active = w.abs()[m]
        k = int(r * active.numel() + 0.5)
        if k == 0:
            out.append(m.clone())
            continue
        threshold = torch.kthvalue(active, k).values
        out.append(m & (w.abs() > threshold))
    return out


def global_kthvalue(weights, masks, ratio):
    active = torch.cat([w.abs()[m] for w, m in zip(weights, masks)])
    k = int(ratio * active.numel() + 0.5)
    threshold = torch.kthvalue(active, k).values
    return [m & (w.abs() > threshold) for w, m in zip(weights, masks)]


CASES = {
    "layerwise-pylth": lambda w, m, r: magnitude_select(w, r, m),
    "layerwise-loop": lambda w, m, r: loop_kthvalue(w, m, r),
    "global-pylth": lambda w, m, r: magnitude_select_global(w, GLOBAL_RATIO, m),
    "global-kthvalue": lambda w, m, r: global_kthvalue(w, m, GLOBAL_RATIO),
}


def _run(benchmark, device, case, workload, path=None):
    """Times CASES[case]; ``path``: the CPU path pylth's case runs on (part of its key in _times)."""
    weights, masks, ratios = workload
    fn = CASES[case]
    if device == "cuda":
        def call():
            fn(weights, masks, ratios)
            torch.cuda.synchronize()
    else:
        def call():
            fn(weights, masks, ratios)
    benchmark.group = f"select-{device}-{case.split('-')[0]}"
    benchmark(call)
    times = min_and_median(benchmark)
    if times is not None:
        _times[(device, case, path)] = times


@pytest.mark.parametrize("case", [c for c in CASES if c.endswith("pylth")])
def test_select_cpu(benchmark, cpu_workload, case, cpu_isa):
    _run(benchmark, "cpu", case, cpu_workload, cpu_isa)


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("pylth")])
def test_select_cpu_baseline(benchmark, cpu_workload, case):
    _run(benchmark, "cpu", case, cpu_workload)


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(CASES))
def test_select_cuda(benchmark, cuda_workload, case):
    _run(benchmark, "cuda", case, cuda_workload)


def test_pylth_matches_the_baseline_on_random_weights(cpu_workload):
    """Without ties (random fp32) the thresholded baseline prunes exactly the same entries."""
    weights, masks, ratios = cpu_workload
    assert all(torch.equal(a, b) for a, b in zip(magnitude_select(weights, ratios, masks),
                                                 loop_kthvalue(weights, masks, ratios)))


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: each baseline's time over pylth's (pytest-benchmark has no ratio column)."""
    yield
    lines = []
    for device, case, path in sorted(key for key in _times if key[1].endswith("pylth")):
        mode = case.split("-")[0]
        baseline = "loop" if mode == "layerwise" else "kthvalue"
        base, ours = _times.get((device, f"{mode}-{baseline}", None)), _times[(device, case, path)]
        if base is None:
            continue
        for stat, k in (("min", 0), ("median", 1)):
            lines.append(f"select-{device}{f' ({path} path)' if path else ''} {mode} {stat}: pylth "
                         f"{ours[k] * 1e3:.2f} ms, {baseline} {base[k] * 1e3:.2f} ms: {base[k] / ours[k]:.1f}x faster")
    print_after_module(request, [f"CPU: {cpu_model()}"] + lines if lines else [])
