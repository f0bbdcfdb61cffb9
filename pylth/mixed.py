"""python -m pylth.mixed RUN: the dense model for the early reverse steps and a ticket for the late
ones (and the reverse), at every switch point: FID against the switch point and against the cost.

Writes RUN/mixed.csv (one row per round, order, switch point and seed; rows already there are not
measured again) and RUN/mixed.png, and prints a table of the mean FID over the seeds.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

from pylth.cli import ArgumentParser, run_command
from pylth.foundations.devices import resolve_device
from pylth.foundations.environment import Environment
from pylth.foundations.io import atomic_write_bytes, remove_stale_temp_files
from pylth.foundations.run_lock import DirectoryLock
from pylth.studies.mixed_chain import ORDERS, TIMING_IMAGES, MixedExperiment, summarize

PROG = "python -m pylth.mixed"
DEFAULT_SWITCH_POINTS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="a find_ticket run directory")
    parser.add_argument("--rounds", type=int, nargs="+", default=None, metavar="K",
                        help="the ticket rounds to mix with round 0 (default: the last finished round)")
    parser.add_argument("--switch-points", default=DEFAULT_SWITCH_POINTS, metavar="F,...",
                        help=f"fractions of the reverse chain before the switch (default: {DEFAULT_SWITCH_POINTS})")
    parser.add_argument("--order", choices=(*ORDERS, "both"), default="both",
                        help="dense-first: dense model, then the ticket; ticket-first: the reverse (default: both)")
    parser.add_argument("--seeds", default=None, metavar="S,...",
                        help="sampling seeds (default: the run's, which reproduces the FIDs of rounds.jsonl)")
    parser.add_argument("--dense-from", default=None, metavar="RUN2",
                        help="take the dense model from round 0 of another run of the same network")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    return parser


def parse_numbers(flag: str, text: str, kind):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def summary_table(rows, records) -> str:
    lines = [f"{'round':>5}  {'order':>12}  {'F':>5}  {'FID (mean)':>10}  {'std':>7}  {'seeds':>5}  {'MACs of dense':>13}"
             f"  {'ms/image (sparse)':>17}"]
    dense_chain = rows[0].dense_chain_macs if rows else 1
    for (k, order, f), (mean, std, n, macs, per_image) in summarize(rows).items():
        lines.append(f"{k:>5}  {order:>12}  {f:>5g}  {mean:>10.3f}  {std:>7.3f}  {n:>5}  {100 * macs / dense_chain:>12.1f}%"
                     f"  {1000 * per_image:>17.2f}")
    return "\n".join(lines)


def _alone(summary: dict, k: int, model: str, fallback: float) -> float:
    """The mean FID of the chain run by one model alone (an end point, averaged over the same seeds
    as the curves), or ``fallback`` (rounds.jsonl's) when that end point was not measured."""
    for order, switch in (("dense-first", 1.0 if model == "dense" else 0.0),
                          ("ticket-first", 0.0 if model == "dense" else 1.0)):
        if (k, order, switch) in summary:
            return summary[k, order, switch][0]
    return fallback


def plot(rows, records, title: str) -> bytes:
    from matplotlib.figure import Figure

    summary = summarize(rows)
    fig = Figure(figsize=(17, 4.5), layout="constrained")
    ax_f, ax_c, ax_t = fig.subplots(1, 3)
    label = "FID (classifier features)" if any(r.fid_features == "classifier" for r in rows) else "FID"
    rounds = sorted({k for k, _, _ in summary})
    for k in rounds:
        color = None
        for order, style in zip(ORDERS, ("o-", "s--")):
            points = sorted((f, v) for (kk, o, f), v in summary.items() if kk == k and o == order)
            if not points:
                continue
            xs = [f for f, _ in points]
            means = [v[0] for _, v in points]
            stds = [v[1] for _, v in points]
            dense_chain = rows[0].dense_chain_macs
            costs = [100 * v[3] / dense_chain for _, v in points]
            name = f"round {k}, {order}"
            drawn = ax_f.errorbar(xs, means, yerr=stds, fmt=style, capsize=2, markersize=4, label=name)
            color = color or drawn[0].get_color()
            ax_c.errorbar(costs, means, yerr=stds, fmt=style, capsize=2, markersize=4, label=name,
                          color=drawn[0].get_color())
            ax_t.errorbar([1000 * v[4] for _, v in points], means, yerr=stds, fmt=style, capsize=2, markersize=4,
                          label=name, color=drawn[0].get_color())
        for ax in (ax_f, ax_c, ax_t):
            ax.axhline(_alone(summary, k, "ticket", records[k]["fid"]), color=color, linestyle=":", linewidth=1.2,
                       label=f"ticket alone (round {k}, {100 * records[k]['sparsity']:.0f}% sparse)")
    dense = _alone(summary, rounds[0], "dense", records[0]["fid"]) if rounds else records[0]["fid"]
    for ax in (ax_f, ax_c, ax_t):
        ax.axhline(dense, color="grey", linestyle="--", linewidth=1, label="dense alone (round 0)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_f.set_xlabel("switch point F (fraction of the reverse chain before the switch)")
    ax_f.set_title("FID against the switch point (mean ± std over seeds)")
    ax_c.set_xlabel("MACs per image over the chain (% of the dense chain)")
    ax_c.set_title("FID against the cost")
    ax_t.set_xlabel(f"measured ms per image over the chain (sparse kernels, batches of {TIMING_IMAGES})")
    ax_t.set_title("FID against the measured time")
    ax_t.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def run(args, environment: Environment) -> None:
    experiment = MixedExperiment(args.run, dense_run=args.dense_from, device=resolve_device(args.device),
                                 environment=environment)
    # One experiment per run at a time (both would rewrite mixed.csv); find_ticket may go on meanwhile.
    with DirectoryLock(experiment.run.path, name=".mixed.lock", flag="RUN", purpose="measures mixed chains in it"):
        remove_stale_temp_files(experiment.run.path, ("mixed.csv", "mixed.png"))  # a dead experiment's
        _measure(args, experiment)


def _measure(args, experiment: MixedExperiment) -> None:
    records = experiment.records
    if len(records) < 2:
        raise ValueError(f"{experiment.run.path} has no finished pruning round (a ticket) yet")
    rounds = args.rounds or [len(records) - 1]
    switch_points = parse_numbers("--switch-points", args.switch_points, float)
    for f in switch_points:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"--switch-points must lie in [0, 1], got {f:g}")
    seeds = parse_numbers("--seeds", args.seeds, int) if args.seeds else [experiment.spec.train.seed]
    orders = list(ORDERS) if args.order == "both" else [args.order]
    rows = experiment.run_points(rounds, switch_points, orders, seeds)
    atomic_write_bytes(plot(rows, records, os.path.basename(experiment.run.path)), experiment.run.file("mixed.png"))
    print(summary_table(rows, records))
    print(f"wrote {experiment.csv_path} and {experiment.run.file('mixed.png')}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda environment: run(args, environment),
                       on_interrupt="run the same command again: finished points are kept", stops_on_signals=True)


if __name__ == "__main__":
    sys.exit(main())
