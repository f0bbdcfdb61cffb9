"""A DDPM training step with a 90 %-sparse mask and MaskedAdam vs the unmasked step with
torch.optim.Adam(fused=True), on the digits and CIFAR-10 U-Nets (CPU, and CUDA when present).

Run:  python -m pytest bench/test_bench_train_step.py --benchmark-only
Both sides run pylth.ddpm.trainer.train_step (loss, backward, grad clip 1.0, optimizer step); the
masked side also zeroes the pruned gradients (so they stay out of the clipping norm), as the trainer
does. Batch sizes: digits 128; CIFAR-10 8 on CPU (a batch of 128 takes minutes there), 128 on CUDA.
The ratios are printed after the module's tests (min and median over rounds); compare only numbers
from one run. Target: masked <= 1.05x unmasked.
"""
import pytest
import torch

from pylth.ddpm import GaussianDiffusion, build_model
from pylth.ddpm.trainer import train_step
from pylth.optim import MaskedAdam
from ratios import min_and_median, print_after_module

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(m, d) for d in DEVICES for m in ("digits", "cifar10")]
BATCH = {("digits", "cpu"): 128, ("cifar10", "cpu"): 8, ("digits", "cuda"): 128, ("cifar10", "cuda"): 128}
ROUNDS = {"cpu": 5, "cuda": 30}
_times: dict = {}


def _setup(model_name, device):
    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    c, s = model.config["in_channels"], model.config["image_size"]
    x0 = torch.rand(BATCH[(model_name, device)], c, s, s, device=device) * 2 - 1
    return model, x0, list(model.parameters())


def _run(benchmark, model_name, device, name, step):
    for _ in range(2):  # allocate optimizer state, warm allocator/kernels
        step()
    if device == "cuda":
        torch.cuda.synchronize()

    def timed():
        step()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"train-step-{model_name}-{device}"
    benchmark.pedantic(timed, rounds=ROUNDS[device], warmup_rounds=1)
    times = min_and_median(benchmark)
    if times is not None:
        _times.setdefault((model_name, device), {})[name] = times


@pytest.mark.parametrize("model_name,device", CASES)
def test_masked_adam_90_percent_sparse(benchmark, model_name, device):
    model, x0, params = _setup(model_name, device)
    g = torch.Generator(device=device).manual_seed(1)
    pruned = [(p, torch.rand(p.shape, generator=g, device=device) < 0.9) for p in params if p.dim() > 1]
    opt = MaskedAdam(params, lr=2e-4)
    for p, where in pruned:
        opt.set_mask(p, ~where)
    bf16, diffusion = device == "cuda", GaussianDiffusion()
    _run(benchmark, model_name, device, "masked",
         lambda: train_step(model, diffusion, x0, opt, params, pruned, 1.0, bf16))
    assert all(bool((p[where] == 0).all()) for p, where in pruned)


@pytest.mark.parametrize("model_name,device", CASES)
def test_fused_adam_unmasked(benchmark, model_name, device):
    model, x0, params = _setup(model_name, device)
    opt = torch.optim.Adam(params, lr=2e-4, fused=True)
    bf16, diffusion = device == "cuda", GaussianDiffusion()
    _run(benchmark, model_name, device, "unmasked",
         lambda: train_step(model, diffusion, x0, opt, params, [], 1.0, bf16))


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the module: the masked step's time relative to the unmasked one."""
    yield
    lines = []
    for (model_name, device), t in _times.items():
        if len(t) == 2:
            for stat, k in (("min", 0), ("median", 1)):
                ours, base = t["masked"][k], t["unmasked"][k]
                lines.append(f"train-step {model_name}-{device} {stat}: 90%-sparse MaskedAdam step {ours * 1e3:.1f} ms"
                             f" = {ours / base:.3f}x the unmasked fused-Adam step ({base * 1e3:.1f} ms)")
    print_after_module(request, lines)
