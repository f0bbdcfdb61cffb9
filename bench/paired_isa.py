"""pylth's CPU kernels on each CPU path beside the torch/numpy baseline a user would write, measured in
alternation (baseline, then pylth on each path, round after round) so that a machine whose speed
drifts (other jobs, frequency) slows all of them alike; pytest-benchmark runs each case's rounds back
to back, which on a shared machine can move a ratio by 10-20 %. Prints, per case and path, the ratio
from the minimum times and the median of the per-round ratios, with the CPU's model. The workloads
are those of bench/test_bench_adam.py, test_bench_select.py and test_bench_cka.py.

    OMP_NUM_THREADS=1 python bench/paired_isa.py [--cases adam select-layerwise ...] [--rounds 10]
        [--cpu-isa avx512 avx2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import pylth
from conftest import load_param_shapes
from pylth.cka import rbf_cka
from pylth.ops import set_cpu_isa
from pylth.ops.select import magnitude_select, magnitude_select_global
from pylth.optim import MaskedAdam
from ratios import cpu_model
from test_bench_adam import workload as adam_workload
from test_bench_cka import random_ticket, reference_loop
from test_bench_select import GLOBAL_RATIO, global_kthvalue, loop_kthvalue
from test_bench_select import workload as select_workload


def adam_case():
    """(baseline step, pylth step): unmasked fused Adam, and MaskedAdam with 50 %-dense weight masks."""
    shapes = load_param_shapes()
    params, masks = adam_workload(shapes, "cpu")
    masked = MaskedAdam(params, lr=2e-4)
    for p, m in zip(params, masks):
        if m is not None:
            masked.set_mask(p, m)
    fused = torch.optim.Adam(adam_workload(shapes, "cpu")[0], lr=2e-4, fused=True)
    return fused.step, masked.step


def select_case(mode):
    weights, masks, ratios = select_workload([s for s in load_param_shapes() if len(s) >= 2], "cpu")
    if mode == "layerwise":
        return lambda: loop_kthvalue(weights, masks, ratios), lambda: magnitude_select(weights, ratios, masks)
    return (lambda: global_kthvalue(weights, masks, GLOBAL_RATIO),
            lambda: magnitude_select_global(weights, GLOBAL_RATIO, masks))


def cka_case(sparsity):
    shapes = [s for s in load_param_shapes() if len(s) >= 2]
    xs, ys = random_ticket(shapes, sparsity, seed=1), random_ticket(shapes, sparsity, seed=2)
    return lambda: reference_loop(xs, ys), lambda: rbf_cka(xs, ys)


# name -> (builder, baseline's name, whether the ratio is pylth's time over the baseline's (Adam's
# target is a time ratio) rather than the baseline's over pylth's (a speed-up))
CASES = {
    "adam": (adam_case, "fused Adam", True),
    "select-layerwise": (lambda: select_case("layerwise"), "kthvalue loop", False),
    "select-global": (lambda: select_case("global"), "global kthvalue", False),
    "cka-80": (lambda: cka_case(0.8), "numpy float64", False),
    "cka-99": (lambda: cka_case(0.99), "numpy float64", False),
}


def measure(baseline, ours, paths, rounds, timer) -> dict:
    """The seconds of each round, the calls alternating: the baseline's under None, pylth's under its path.
    The order rotates from round to round: a call right after the baseline may find the memory the
    baseline freed returned to the OS and pay page faults for its output, so each side follows the
    baseline equally often."""
    names = [None, *paths]
    times = {name: [] for name in names}
    baseline()
    for path in paths:
        set_cpu_isa(path)
        ours()  # warm-up: first-call allocations, the path's code into cache
    for round_ in range(rounds):
        for path in names[round_ % len(names):] + names[:round_ % len(names)]:
            if path is not None:
                set_cpu_isa(path)
            start = timer()
            (baseline if path is None else ours)()
            times[path].append(timer() - start)
    return times


def main() -> None:
    supported = pylth.build_info()["cpu_isa_supported"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--cpu-isa", nargs="+", default=supported, choices=supported,
                        help="CPU paths to time pylth on (default: every path this CPU supports)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of alternating calls per case (default 10)")
    parser.add_argument("--wall-time", action="store_true", help="time.perf_counter instead of time.process_time")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    timer = time.perf_counter if args.wall_time else time.process_time
    print(f"CPU: {cpu_model()}; paths this CPU supports: {', '.join(supported)}; torch threads "
          f"{torch.get_num_threads()}; {'wall' if args.wall_time else 'CPU'} time; {args.rounds} rounds")
    start_path = pylth.build_info()["cpu_isa"]
    for case in args.cases:
        build, baseline_name, time_ratio = CASES[case]
        baseline, ours = build()
        times = measure(baseline, ours, args.cpu_isa, args.rounds, timer)
        base = times[None]
        for path in args.cpu_isa:
            pylth_times = times[path]
            if time_ratio:
                pairs = [p / b for p, b in zip(pylth_times, base)]
                ratio, what = min(pylth_times) / min(base), f"pylth time / {baseline_name} time"
            else:
                pairs = [b / p for p, b in zip(pylth_times, base)]
                ratio, what = min(base) / min(pylth_times), f"{baseline_name} time / pylth time"
            print(f"{case:>16} {path:>8}: pylth {min(pylth_times) * 1e3:8.2f} ms, {baseline_name} "
                  f"{min(base) * 1e3:8.2f} ms; {what} {ratio:.3f} (min), {statistics.median(pairs):.3f} "
                  f"(median of rounds)")
    set_cpu_isa(start_path)


if __name__ == "__main__":
    main()
