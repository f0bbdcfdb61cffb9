"""The whole-U-Net forward, dense masked against sparsified, measured in alternation: dense, sparse,
dense, sparse, ... so that a machine whose speed drifts (other jobs, frequency) slows both alike.
pytest-benchmark runs each case's rounds back to back, which on a shared machine can move a ratio by
10-20 %; this script is the cross-check. It prints, per preset and sparsity, dense / sparse from the
minimum times and the median of the per-pair ratios. Same models and inputs as
bench/test_bench_sparse_model.py.

    OMP_NUM_THREADS=1 python bench/paired_forward.py --cpu-time [--presets cifar10 digits] [--pairs 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from test_bench_sparse_model import MODELS, SPARSITIES, inputs, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    parser.add_argument("--pairs", type=int, default=15, help="dense-sparse pairs per case (default 15)")
    parser.add_argument("--cpu-time", action="store_true", help="time.process_time instead of wall time")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    timer = time.process_time if args.cpu_time else time.perf_counter
    print(f"threads {torch.get_num_threads()}, {'CPU' if args.cpu_time else 'wall'} time, {args.pairs} pairs")
    for preset in args.presets:
        x, t = inputs(preset)
        for sparsity in args.sparsities:
            dense, sparse = models(preset, sparsity)
            times = {"dense": [], "sparse": []}
            with torch.no_grad():
                dense(x, t), sparse(x, t)  # warm-up: the sparse layers build their input offsets
                for _ in range(args.pairs):
                    for name, model in (("dense", dense), ("sparse", sparse)):
                        start = timer()
                        model(x, t)
                        times[name].append(timer() - start)
            pair_ratios = [d / s for d, s in zip(times["dense"], times["sparse"])]
            print(f"{preset:>8} batch {MODELS[preset]:>2} at {100 * sparsity:.0f}%: dense {min(times['dense']) * 1e3:7.1f} ms, "
                  f"sparse {min(times['sparse']) * 1e3:7.1f} ms; dense/sparse {min(times['dense']) / min(times['sparse']):.2f}x "
                  f"(min), {statistics.median(pair_ratios):.2f}x (median of pairs)")


if __name__ == "__main__":
    main()
