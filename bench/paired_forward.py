"""The whole-U-Net forward, dense masked against sparsified, measured in alternation: dense, sparse,
dense, sparse, ... so that a machine whose speed drifts (other jobs, frequency) slows both alike.
pytest-benchmark runs each case's rounds back to back, which on a shared machine can move a ratio by
10-20 %; this script is the cross-check. It prints, per preset and sparsity, dense / sparse from the
minimum times and the median of the per-pair ratios. Same models and inputs as
bench/test_bench_sparse_model.py. With ``--cpu-isa avx512 avx2`` each round runs the sparse model once
per CPU path of pylth's kernels after the dense one (issue 29's check: both paths in one run; the
ratios are dense / sparse on that path, the median over the rounds).

    OMP_NUM_THREADS=1 python bench/paired_forward.py --cpu-time [--presets cifar10 digits] [--pairs 15]
        [--cpu-isa avx512 avx2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import pylth
from pylth.ops import set_cpu_isa
from ratios import cpu_model
from test_bench_sparse_model import MODELS, SPARSITIES, inputs, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    parser.add_argument("--pairs", type=int, default=15, help="dense-sparse pairs per case (default 15)")
    parser.add_argument("--cpu-time", action="store_true", help="time.process_time instead of wall time")
    supported = pylth.build_info()["cpu_isa_supported"]
    parser.add_argument("--cpu-isa", nargs="+", default=[pylth.build_info()["cpu_isa"]], choices=supported,
                        help="CPU paths to run the sparse model on, each in every round (default: the active one)")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    timer = time.process_time if args.cpu_time else time.perf_counter
    start_path = pylth.build_info()["cpu_isa"]
    print(f"CPU: {cpu_model()}; threads {torch.get_num_threads()}, {'CPU' if args.cpu_time else 'wall'} time, "
          f"{args.pairs} rounds")
    for preset in args.presets:
        x, t = inputs(preset)
        for sparsity in args.sparsities:
            dense, sparse = models(preset, sparsity)
            times = {name: [] for name in ("dense", *args.cpu_isa)}
            with torch.no_grad():
                dense(x, t)
                for path in args.cpu_isa:  # warm-up: the sparse layers build their input offsets
                    set_cpu_isa(path)
                    sparse(x, t)
                names = list(times)
                for round_ in range(args.pairs):
                    # The order rotates: each side follows the dense model (whose freed memory the next
                    # call may fault back in) equally often.
                    for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                        if name != "dense":
                            set_cpu_isa(name)
                        start = timer()
                        (dense if name == "dense" else sparse)(x, t)
                        times[name].append(timer() - start)
            cells = []
            for path in args.cpu_isa:
                pair_ratios = [d / s for d, s in zip(times["dense"], times[path])]
                cells.append(f"{path}: sparse {min(times[path]) * 1e3:7.1f} ms, dense/sparse "
                             f"{min(times['dense']) / min(times[path]):.2f}x (min), "
                             f"{statistics.median(pair_ratios):.2f}x (median of pairs)")
            print(f"{preset:>8} batch {MODELS[preset]:>2} at {100 * sparsity:.0f}%: dense {min(times['dense']) * 1e3:7.1f} ms; "
                  + "; ".join(cells), flush=True)
    set_cpu_isa(start_path)

if __name__ == "__main__":
    main()
