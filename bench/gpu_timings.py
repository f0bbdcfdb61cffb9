"""CUDA timings of pylth's kernels beside the torch baselines, on the DDPM CIFAR-10 shapes.

Run on a GPU machine after `pip install .` (bench/gpu.sh does both):

    python bench/gpu_timings.py [--out FILE]

Prints (and writes to FILE) a markdown table: kernel, pylth time, baseline time, ratio, % of the
measured copy bandwidth where it applies, GPU, commit, date. Wall times are medians of CUDA-event
timings around one call (synchronised); kernel times come from torch.profiler (the sum of the
device time of the kernels one call launches), which leaves out the host's launch work.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import load_param_shapes  # noqa: E402  (bench/conftest.py: the shared workload)
from test_bench_adam import foreach_mask_step, workload  # noqa: E402  (the benchmarks' workloads and baselines)
from test_bench_cka import random_ticket  # noqa: E402
from test_bench_select import GLOBAL_RATIO, global_kthvalue, loop_kthvalue  # noqa: E402
from test_bench_select import workload as select_workload  # noqa: E402

import pylth  # noqa: E402
from pylth.cka import rbf_cka  # noqa: E402
from pylth.ops.cka import cka_reference  # noqa: E402
from pylth.ops.select import magnitude_select, magnitude_select_global  # noqa: E402
from pylth.optim import MaskedAdam  # noqa: E402


DEVICE = "cuda"  # --device cpu: a quick check of this script on a machine without a GPU
REPEATS = 1.0  # --repeats scales every repeat count


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def wall_ms(fn, repeats: int = 30, warmup: int = 3) -> float:
    """Median over repeats of one synchronised call, timed with CUDA events (host clock on the CPU)."""
    repeats = max(1, round(repeats * REPEATS))
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        if DEVICE == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def kernel_ms(fn, calls: int = 10) -> float:
    """Device time of the kernels one call launches (mean over calls), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    if DEVICE != "cuda":
        return float("nan")
    fn()
    _sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        _sync()
    total_us = 0.0
    for event in prof.key_averages():
        value = getattr(event, "self_device_time_total", None)
        if value is None:
            value = getattr(event, "self_cuda_time_total", 0.0)
        total_us += value
    return total_us / calls / 1e3


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 2 GiB, bytes read plus written over the median time."""
    src = torch.empty(2**29 if DEVICE == "cuda" else 2**24, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    ms = wall_ms(lambda: dst.copy_(src), repeats=20)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def adam_rows(shapes, bandwidth_gbs):
    params, masks = workload(shapes, DEVICE, seed=0)
    masked = MaskedAdam(params, lr=2e-4)
    for p, m in zip(params, masks):
        if m is not None:
            masked.set_mask(p, m)
    # Bytes the step must move: param, exp_avg, exp_avg_sq read and written, grad read (28 B), mask read (1 B).
    numel = sum(p.numel() for p in params)
    masked_numel = sum(p.numel() for p, m in zip(params, masks) if m is not None)
    step_bytes = 28 * numel + masked_numel

    fused = torch.optim.Adam(workload(shapes, DEVICE, seed=1)[0], lr=2e-4, fused=True)
    foreach_step = foreach_mask_step(*workload(shapes, DEVICE, seed=2))

    ours_k, ours_w = kernel_ms(masked.step), wall_ms(masked.step)
    rows = []
    for name, fn in (("(a) fused Adam, unmasked", fused.step), ("(b) foreach mask + fused Adam", foreach_step)):
        base_k, base_w = kernel_ms(fn), wall_ms(fn)
        rows.append((f"masked Adam step, kernels, vs {name}", ours_k, base_k,
                     f"{100 * step_bytes / (ours_k * 1e-3) / 1e9 / bandwidth_gbs:.0f} %"))
        rows.append((f"masked Adam step, wall, vs {name}", ours_w, base_w, ""))
    assert all(((p.detach() == 0) | m).all() for p, m in zip(params, masks) if m is not None)
    return rows, {"adam_numel": numel, "adam_step_bytes": step_bytes}


def select_rows(weight_shapes):
    weights, masks, ratios = select_workload(weight_shapes, DEVICE)
    ours = magnitude_select(weights, ratios, masks)
    assert all(torch.equal(a, b) for a, b in zip(ours, loop_kthvalue(weights, masks, ratios))), "layerwise masks differ"
    ours = magnitude_select_global(weights, GLOBAL_RATIO, masks)
    assert all(torch.equal(a, b) for a, b in zip(ours, global_kthvalue(weights, masks, GLOBAL_RATIO))), \
        "global masks differ"
    return [
        ("layerwise thresholds (113 tensors) vs per-tensor kthvalue loop",
         wall_ms(lambda: magnitude_select(weights, ratios, masks)), wall_ms(lambda: loop_kthvalue(weights, masks, ratios)), ""),
        ("global threshold vs kthvalue of the concatenation",
         wall_ms(lambda: magnitude_select_global(weights, GLOBAL_RATIO, masks)),
         wall_ms(lambda: global_kthvalue(weights, masks, GLOBAL_RATIO)), ""),
    ]


def cka_rows(weight_shapes):
    rows = []
    for sparsity in (0.8, 0.99):
        xs_cpu = random_ticket(weight_shapes, sparsity, seed=1)
        ys_cpu = random_ticket(weight_shapes, sparsity, seed=2)
        xs, ys = [x.to(DEVICE) for x in xs_cpu], [y.to(DEVICE) for y in ys_cpu]
        got = rbf_cka(xs, ys).cpu()
        want = rbf_cka(xs_cpu, ys_cpu)
        worst = float((got - want).abs().max())
        assert worst <= 1e-5, f"CUDA CKA differs from the CPU kernel by {worst}"
        ours_w = wall_ms(lambda: rbf_cka(xs, ys), repeats=50)
        ours_k = kernel_ms(lambda: rbf_cka(xs, ys))
        base = wall_ms(lambda: cka_reference(xs, ys), repeats=3, warmup=1)
        rows.append((f"RBF CKA, 113 pairs, {sparsity:.0%} sparse, wall, vs torch float64 reference loop",
                     ours_w, base, ""))
        rows.append((f"RBF CKA, 113 pairs, {sparsity:.0%} sparse, kernels only", ours_k, float("nan"), ""))
    return rows


def commit() -> str:
    """$PYLTH_COMMIT when set (a copied working tree may carry another repository's history), else git's."""
    if os.environ.get("PYLTH_COMMIT"):
        return os.environ["PYLTH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--only", choices=["adam", "select", "cka"], action="append",
                        help="time only these kernels (repeatable; default: all)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a quick check of this script where there is no GPU (times mean little)")
    parser.add_argument("--repeats", type=float, default=1.0, help="scale every repeat count by this")
    args = parser.parse_args(argv)
    global DEVICE, REPEATS
    DEVICE, REPEATS = args.device, args.repeats
    if DEVICE == "cuda" and (not torch.cuda.is_available() or not pylth.build_info()["cuda"]):
        print("needs a CUDA GPU and pylth built with CUDA", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the CKA Grams must stay float32-exact
    shapes = load_param_shapes()
    weight_shapes = [s for s in shapes if len(s) >= 2]
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (script check only)"
    bandwidth = copy_bandwidth_gbs()
    only = set(args.only or ["adam", "select", "cka"])
    rows, facts = [], {"gpu": gpu, "copy_bandwidth_GBs": round(bandwidth, 1)}
    if "adam" in only:
        adam, adam_facts = adam_rows(shapes, bandwidth)
        rows += adam
        facts.update(adam_facts)
    if "select" in only:
        rows += select_rows(weight_shapes)
    if "cka" in only:
        rows += cka_rows(weight_shapes)
    stamp = f"{commit()}, {datetime.date.today().isoformat()}"
    lines = [f"GPU: {gpu}; measured device-to-device copy bandwidth {bandwidth:.0f} GB/s (read + write); "
             f"torch {torch.__version__}; commit {stamp}", "",
             "| kernel | pylth (ms) | baseline (ms) | baseline / pylth | % of copy bandwidth | GPU | commit, date |",
             "|---|---|---|---|---|---|---|"]
    for name, ours, base, bw in rows:
        ratio = f"{base / ours:.2f}x" if base == base else ""
        base_text = f"{base:.3f}" if base == base else ""
        lines.append(f"| {name} | {ours:.3f} | {base_text} | {ratio} | {bw} | {gpu} | {stamp} |")
    lines += ["", json.dumps(facts)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
