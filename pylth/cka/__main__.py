"""python -m pylth.cka RUN_A RUN_B [--round K] [--out DIR]: CKA per layer between two tickets.

Writes DIR/cka.csv and DIR/cka.png and prints whether upstream layers (the first half, in forward
order) are more alike than downstream ones, the observation behind layer-varying sparsity.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import sys

from pylth.cka.between_runs import (PERMUTATION_SPLITS, LayerCka, compare_tickets, halves_permutation_p, pick_round,
                                    trained_weight_rows, upstream_downstream)
from pylth.cli import ArgumentParser, run_command
from pylth.foundations.io import atomic_write_bytes, atomic_write_text


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m pylth.cka", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", metavar="RUN_A", help="first find_ticket run directory")
    parser.add_argument("run_b", metavar="RUN_B", help="second find_ticket run directory (same model)")
    parser.add_argument("--round", type=int, default=None, dest="round_k", metavar="K",
                        help="round to compare (default: the last round both runs finished)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: ./cka_<RUN_A>_vs_<RUN_B>_round_K)")
    parser.add_argument("--threshold", type=float, default=1.0,
                        help="RBF bandwidth as a multiple of the median distance (default 1.0)")
    parser.add_argument("--unbiased", action="store_true", help="unbiased HSIC (Song et al. 2012)")
    return parser.parse_args(argv)


def to_csv(results: list[LayerCka]) -> str:
    buffer = io.StringIO()
    fields = [f.name for f in dataclasses.fields(LayerCka)]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(dataclasses.asdict(r))
    return buffer.getvalue()


def to_png(results: list[LayerCka], title: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(max(6.0, 0.09 * len(results) + 2), 4), layout="constrained")
    ax = fig.subplots()
    index = [r.index for r in results]
    ax.plot(index, [r.rbf_cka for r in results], "o-", markersize=3, label="RBF CKA")
    ax.plot(index, [r.linear_cka for r in results], "--", color="gray", linewidth=1, label="linear CKA")
    ax.axvline((len(results) + 1) // 2 - 0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("layer (forward order: upstream -> downstream)")
    ax.set_ylabel("CKA between the two tickets")
    ax.set_title(title)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def summary(results: list[LayerCka], round_k: int, args) -> str:
    upstream, downstream = upstream_downstream(results)
    half = (len(results) + 1) // 2
    estimator = "unbiased" if args.unbiased else "biased"
    lines = [
        f"round {round_k}: {len(results)} layers, RBF CKA (threshold {args.threshold:g}, {estimator} HSIC)",
        f"upstream   (layers 0-{half - 1}): mean CKA {upstream:.4f}",
        f"downstream (layers {half}-{len(results) - 1}): mean CKA {downstream:.4f}",
    ]
    if not (math.isnan(upstream) or math.isnan(downstream)):
        gap = upstream - downstream
        verdict = "as alike as" if abs(gap) < 5e-4 else ("more alike than" if gap > 0 else "less alike than")
        lines.append(f"upstream layers are {verdict} downstream ones ({gap:+.4f})")
        lines.append(f"permutation test ({PERMUTATION_SPLITS:,} random splits of the layers into halves of these sizes): p = "
                     f"{halves_permutation_p(results):.3g}, the share of splits whose gap is at least as large")
    return "\n".join(lines)


def run(args) -> None:
    round_k = pick_round(args.run_a, args.run_b, args.round_k)
    results = compare_tickets(trained_weight_rows(args.run_a, round_k), trained_weight_rows(args.run_b, round_k),
                              args.threshold, args.unbiased)
    name_a, name_b = (os.path.basename(os.path.normpath(path)) for path in (args.run_a, args.run_b))
    out = args.out or f"cka_{name_a}_vs_{name_b}_round_{round_k:02d}"
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    csv_path, png_path = os.path.join(out, "cka.csv"), os.path.join(out, "cka.png")
    summary_path = os.path.join(out, "summary.txt")  # the verdict kept with the numbers it comes from
    text = f"{name_a} vs {name_b}\n{summary(results, round_k, args)}\n"
    atomic_write_text(to_csv(results), csv_path)
    atomic_write_bytes(to_png(results, f"{name_a} vs {name_b}, round {round_k}"), png_path)
    atomic_write_text(text, summary_path)
    print(text, end="")
    print(f"wrote {csv_path}, {png_path} and {summary_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command("python -m pylth.cka", lambda _environment: run(args))


if __name__ == "__main__":
    sys.exit(main())
