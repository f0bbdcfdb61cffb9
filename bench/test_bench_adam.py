"""MaskedAdam.step() vs what users run today, on the 35.7M-parameter DDPM CIFAR-10 shapes.

Run:  python -m pytest bench/test_bench_adam.py --benchmark-only
Baselines: (a) unmasked torch.optim.Adam(fused=True) (the speed to match: masking should be nearly
free); (b) masking by hand: _foreach_mul_ of the grads by float masks, fused Adam, _foreach_mul_ of
the params. Weights (>= 2 dims) carry 50 %-dense random masks, biases and norms none. The ratios
are printed after the module's tests (min and median over rounds); compare only numbers from one run.
"""
import pytest
import torch

from pylth.optim import MaskedAdam

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROUNDS = {"cpu": 10, "cuda": 50}
_times: dict = {}


def _workload(shapes, device, seed=0):
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
    stats = benchmark.stats.stats
    _times.setdefault(device, {})[name] = (stats.min, stats.median)


def _run(benchmark, device, name, step):
    step()  # first step allocates the optimizer state
    _sync(device)

    def timed():
        step()
        _sync(device)

    benchmark.pedantic(timed, rounds=ROUNDS[device], warmup_rounds=1)
    _record(benchmark, device, name)


@pytest.mark.parametrize("device", DEVICES)
def test_masked_adam(benchmark, device, ddpm_param_shapes):
    benchmark.group = f"adam-{device}"
    params, masks = _workload(ddpm_param_shapes, device)
    opt = MaskedAdam(params, lr=2e-4)
    for p, m in zip(params, masks):
        if m is not None:
            opt.set_mask(p, m)
    _run(benchmark, device, "masked_adam", opt.step)
    assert all(((p.detach() == 0) | m).all() for p, m in zip(params, masks) if m is not None)


@pytest.mark.parametrize("device", DEVICES)
def test_a_fused_adam_unmasked(benchmark, device, ddpm_param_shapes):
    benchmark.group = f"adam-{device}"
    params, _ = _workload(ddpm_param_shapes, device)
    opt = torch.optim.Adam(params, lr=2e-4, fused=True)
    _run(benchmark, device, "a_fused_unmasked", opt.step)


@pytest.mark.parametrize("device", DEVICES)
def test_b_foreach_mask_fused_adam(benchmark, device, ddpm_param_shapes):
    benchmark.group = f"adam-{device}"
    params, masks = _workload(ddpm_param_shapes, device)
    masked_params = [p for p, m in zip(params, masks) if m is not None]
    float_masks = [m.float() for m in masks if m is not None]
    opt = torch.optim.Adam(params, lr=2e-4, fused=True)

    def step():
        with torch.no_grad():
            torch._foreach_mul_([p.grad for p in masked_params], float_masks)
            opt.step()
            torch._foreach_mul_(masked_params, float_masks)

    _run(benchmark, device, "b_foreach_mask_fused", step)


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: MaskedAdam's time relative to each baseline (pytest-benchmark has no ratio column)."""
    yield
    lines = []
    for device, t in _times.items():
        if len(t) < 3:
            continue
        for stat, k in (("min", 0), ("median", 1)):
            ours, a, b = t["masked_adam"][k], t["a_fused_unmasked"][k], t["b_foreach_mask_fused"][k]
            lines.append(f"adam-{device} {stat}: MaskedAdam {ours * 1e3:.2f} ms = {ours / a:.3f}x the time of "
                         f"(a) fused Adam unmasked ({a * 1e3:.2f} ms); (b) foreach-mask + fused Adam "
                         f"({b * 1e3:.2f} ms) takes {b / ours:.2f}x MaskedAdam's time")
    if lines:
        # Teardown output is captured (and dropped) unless capture is lifted, as capsys.disabled() does.
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n" + "\n".join(lines))
