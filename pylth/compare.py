"""python -m pylth.compare RUN [RUN ...]: find_ticket runs side by side, in one figure and one table.

compare.png: the metric against sparsity, one line per run, the dense models' band across sampling
seeds; beside it the training seconds of each round against sparsity. compare.md: per run the dense
value, the rounds nearest 80/90/95/99 % sparsity and the sparsest round within the dense band.
compare.csv: every point. Scores come from rounds.jsonl, or with --evaluation from the matching rows
of evaluations.jsonl (python -m pylth.evaluate). Runs whose scores are not comparable are refused.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys

from pylth.cli import ArgumentParser, run_command
from pylth.foundations.io import atomic_write_bytes, atomic_write_text
from pylth.studies.comparison import METRICS, compare_runs, csv_rows, dense_band, markdown_table, parse_settings

PROG = "python -m pylth.compare"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="find_ticket run directories")
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for compare.png, .md and .csv (default: .)")
    parser.add_argument("--labels", default=None, metavar="A,B,...",
                        help="one name per run (default: what differs between their configurations)")
    parser.add_argument("--metric", choices=METRICS, default="fid", help="default: fid")
    parser.add_argument("--evaluation", default=None, metavar="KEY=VALUE,...",
                        help="take the scores from evaluations.jsonl rows with these settings, e.g. "
                             "fid_features=inception,fid_samples=5000 (default: rounds.jsonl, and the rows of "
                             "evaluations.jsonl with the run's own settings: other sampling seeds)")
    parser.add_argument("--title", default=None, help="the figure's title")
    return parser


def _seconds(record: dict) -> tuple[float | None, str]:
    """The round's training time: CPU seconds where recorded (a shared machine slows the wall clock,
    not them), else the wall seconds of older records."""
    if record.get("train_cpu_seconds") is not None:
        return record["train_cpu_seconds"], "training CPU seconds per round"
    return record.get("seconds"), "seconds per round"


def render(compared, metric: str, band, settings: dict | None, title: str | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(13, 4.8))
    if band is not None:
        ax.axhspan(band[0], band[1], color="grey", alpha=0.25, label=f"dense band ({band[2]} scores)")
    time_label = "seconds per round"
    for c in compared:
        x = [100 * p.sparsity for p in c.points]
        mean = [p.mean for p in c.points]
        line, = ax.plot(x, mean, "o-", markersize=4, label=c.label)
        if any(len(p.values) > 1 for p in c.points):
            ax.fill_between(x, [min(p.values.values()) for p in c.points], [max(p.values.values()) for p in c.points],
                            color=line.get_color(), alpha=0.15)
        timed = [(100 * r["sparsity"], _seconds(r)[0]) for r in c.records if _seconds(r)[0] is not None
                 and not r.get("dense_from")]  # a borrowed round 0 cost this run nothing
        if timed:
            time_label = _seconds(c.records[-1])[1]
            ax_time.plot(*zip(*timed), "o-", markersize=4, color=line.get_color(), label=c.label)
    what = metric.upper() if metric != "loss" else "held-out loss"
    if settings:
        what += " (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
    elif metric != "loss" and compared[0].records[0].get("fid_features") == "classifier":
        what += " (classifier features)"
    ax.set(xlabel="sparsity (%)", ylabel=what, title=title or "sample quality against sparsity")
    ax_time.set(xlabel="sparsity (%)", ylabel=time_label, title="what a round costs")
    for a in (ax, ax_time):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> None:
    settings = parse_settings(args.evaluation)
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    compared = compare_runs(args.runs, args.metric, labels, settings)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not a folder")
    band = dense_band(compared)
    table = markdown_table(compared, args.metric, band)
    rows = csv_rows(compared, args.metric)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    figure = render(compared, args.metric, band, settings, args.title)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(table, os.path.join(args.out, "compare.md"))
    atomic_write_text(buffer.getvalue(), os.path.join(args.out, "compare.csv"))
    atomic_write_bytes(figure, os.path.join(args.out, "compare.png"))
    print(table, end="")
    print(f"wrote compare.png, compare.md and compare.csv in {os.path.abspath(args.out)}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda _environment: run(args), needs_native=False)


if __name__ == "__main__":
    sys.exit(main())
