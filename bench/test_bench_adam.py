"""MaskedAdam.step() vs what users run today, on the 35.7M-parameter DDPM CIFAR-10 shapes.

Run:  python -m pytest bench/test_bench_adam.py --benchmark-only [--cpu-isa avx512,avx2]
Baselines: (a) unmasked torch.optim.Adam(fused=True) (the speed to match: masking should be nearly
free); (b) masking by hand: _foreach_mul_ of the grads by float masks, fused Adam, _foreach_mul_ of
the params. Weights (>= 2 dims) carry 50 %-dense random masks, biases and norms none. On the CPU,
MaskedAdam runs once per CPU path (bench/conftest.py) beside the same baselines. The ratios are
printed after the module's tests (min and median over rounds); compare only numbers from one run.

The "overhead" cases keep the 328 tensors but shrink every dimension to at most 2 (1 to 16 values a
tensor), so the arithmetic vanishes and what is timed is each step's host work: MaskedAdam's Python
against fused Adam's C++ loop over the tensors (on CPU; the GPU launches the same way).
"""
import pytest
import torch

from pylth.optim import MaskedAdam
from ratios import cpu_model, min_and_median, print_after_module

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROUNDS = {"cpu": 10, "cuda": 50, "cpu-overhead": 300}
_times: dict = {}


def workload(shapes, device, seed=0):
    """Params with random grads, and 50 %-dense masks on the weights (None for biases and norms)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 1e-3
    masks = [torch.rand(p.shape, generator=gen, device=device) < 0.5 if p.dim() >= 2 else None for p in params]
    return params, masks


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _record(benchmark, device, name):
    times = min_and_median(benchmark)
    if times is not None:
        _times.setdefault(device, {})[name] = times


def _run(benchmark, device, name, step):
    step()  # first step allocates the optimizer state
    _sync(device)

    def timed():
        step()
        _sync(device)

    benchmark.pedantic(timed, rounds=ROUNDS[device], warmup_rounds=1)
    _record(benchmark, device, name)


def foreach_mask_step(params, masks):
    """Baseline (b), masking by hand: the grads times float masks, fused Adam, the params times the masks."""
    masked_params = [p for p, m in zip(params, masks) if m is not None]
    float_masks = [m.float() for m in masks if m is not None]
    opt = torch.optim.Adam(params, lr=2e-4, fused=True)

    def step():
        with torch.no_grad():
            torch._foreach_mul_([p.grad for p in masked_params], float_masks)
            opt.step()
            torch._foreach_mul_(masked_params, float_masks)

    return step


def _masked_adam(benchmark, device, name, shapes):
    benchmark.group = f"adam-{device}"
    params, masks = workload(shapes, device)
    opt = MaskedAdam(params, lr=2e-4)
    for p, m in zip(params, masks):
        if m is not None:
            opt.set_mask(p, m)
    _run(benchmark, device, name, opt.step)
    assert all(((p.detach() == 0) | m).all() for p, m in zip(params, masks) if m is not None)


def test_masked_adam(benchmark, cpu_isa, ddpm_param_shapes):
    _masked_adam(benchmark, "cpu", f"masked_adam[{cpu_isa}]", ddpm_param_shapes)


@needs_cuda
def test_masked_adam_cuda(benchmark, ddpm_param_shapes):
    _masked_adam(benchmark, "cuda", "masked_adam", ddpm_param_shapes)


@pytest.mark.parametrize("device", DEVICES)
def test_a_fused_adam_unmasked(benchmark, device, ddpm_param_shapes):
    benchmark.group = f"adam-{device}"
    params, _ = workload(ddpm_param_shapes, device)
    opt = torch.optim.Adam(params, lr=2e-4, fused=True)
    _run(benchmark, device, "a_fused_unmasked", opt.step)


@pytest.mark.parametrize("device", DEVICES)
def test_b_foreach_mask_fused_adam(benchmark, device, ddpm_param_shapes):
    benchmark.group = f"adam-{device}"
    _run(benchmark, device, "b_foreach_mask_fused", foreach_mask_step(*workload(ddpm_param_shapes, device)))


def _tiny(shapes):
    return [tuple(min(d, 2) for d in s) for s in shapes]


def test_overhead_masked_adam(benchmark, ddpm_param_shapes):
    benchmark.group = "adam-overhead-cpu"
    params, masks = workload(_tiny(ddpm_param_shapes), "cpu")
    opt = MaskedAdam(params, lr=2e-4)
    for p, m in zip(params, masks):
        if m is not None:
            opt.set_mask(p, m)
    _run(benchmark, "cpu-overhead", "masked_adam", opt.step)


def test_overhead_fused_adam(benchmark, ddpm_param_shapes):
    benchmark.group = "adam-overhead-cpu"
    params, _ = workload(_tiny(ddpm_param_shapes), "cpu")
    opt = torch.optim.Adam(params, lr=2e-4, fused=True)
    _run(benchmark, "cpu-overhead", "a_fused_unmasked", opt.step)


def _ratio_lines(device, t):
    if device.endswith("overhead"):
        if len(t) < 2:
            return []
        return [f"adam-{device} {stat}: MaskedAdam {t['masked_adam'][k] * 1e3:.3f} ms = "
                f"{t['masked_adam'][k] / t['a_fused_unmasked'][k]:.3f}x the time of fused Adam "
                f"({t['a_fused_unmasked'][k] * 1e3:.3f} ms), 328 tiny tensors"
                for stat, k in (("min", 0), ("median", 1))]
    if "a_fused_unmasked" not in t or "b_foreach_mask_fused" not in t:
        return []
    lines = []
    for name in sorted(n for n in t if n.startswith("masked_adam")):
        path = f" ({name[len('masked_adam['):-1]} path)" if "[" in name else ""
        for stat, k in (("min", 0), ("median", 1)):
            ours, a, b = t[name][k], t["a_fused_unmasked"][k], t["b_foreach_mask_fused"][k]
            lines.append(f"adam-{device}{path} {stat}: MaskedAdam {ours * 1e3:.2f} ms = {ours / a:.3f}x the time "
                         f"of (a) fused Adam unmasked ({a * 1e3:.2f} ms); (b) foreach-mask + fused Adam "
                         f"({b * 1e3:.2f} ms) takes {b / ours:.2f}x MaskedAdam's time")
    return lines


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: MaskedAdam's time relative to each baseline (pytest-benchmark has no ratio column)."""
    yield
    lines = [line for device, t in _times.items() for line in _ratio_lines(device, t)]
    print_after_module(request, [f"CPU: {cpu_model()}"] + lines if lines else [])
