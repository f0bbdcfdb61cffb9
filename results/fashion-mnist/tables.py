"""The tables of docs/results-fashion-mnist.md, printed from the committed records alone.

    python results/fashion-mnist/tables.py [rounds|seeds|inception|arms ...]   (default: all four)
    python results/fashion-mnist/tables.py --into docs/results-fashion-mnist.md

--into rewrites, in the page, what stands between `<!-- quote NAME -->` and `<!-- /quote -->`: a table
named above, or a file of results/fashion-mnist/ (compare-classifier/compare.md, cka/summary.txt).

rounds:    every finished round of every arm (rounds.jsonl): sparsity, FID and KID on the classifier
           features, the CPU seconds of its training and of its scoring;
seeds:     the models scored at several sampling seeds on the per-round features (evaluations.jsonl);
inception: the headline scores, Inception FID and KID on 5,000 samples (evaluations.jsonl);
arms:      per arm, its rounds, the sparsity reached and what it cost (a borrowed round 0 not counted).
tests/test_study_records.py checks that the page quotes every line printed here.
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def arms() -> dict[str, list[dict]]:
    """Run name -> its rounds.jsonl, in the arms' order (A-G)."""
    return {os.path.basename(d): jsonl(os.path.join(d, "rounds.jsonl"))
            for d in sorted(glob.glob(os.path.join(HERE, "records", "*")))}


def rounds_table() -> list[str]:
    lines = ["| arm | round | sparsity | FID | KID | training CPU-s | scoring CPU-s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, records in arms().items():
        for r in records:
            borrowed = " (A's, `--dense-from`)" if r.get("dense_from") else ""
            lines.append(f"| {name[0]} | {r['round']}{borrowed} | {100 * r['sparsity']:.1f} % | {r['fid']:.2f} | "
                         f"{r['kid']:.2f} | {r['train_cpu_seconds']:.0f} | {r['eval_cpu_seconds']:.0f} |")
    return lines


def scored(features: str, samples: int | None = None) -> list[tuple[str, int, float, dict]]:
    """(run, round, sparsity, seed -> row) of the evaluations.jsonl rows with these features."""
    out = []
    for name in arms():
        by_round: dict[int, dict] = {}
        for row in jsonl(os.path.join(HERE, "records", name, "evaluations.jsonl")):
            if row["fid_features"] == features and (samples is None or row["fid_samples"] == samples):
                by_round.setdefault(row["round"], {})[row["seed"]] = row
        out += [(name, k, seeds[min(seeds)]["sparsity"], seeds) for k, seeds in sorted(by_round.items())]
    return out


def spread(values: list[float], digits: int) -> str:
    """The mean and, over several seeds, their range (what pylth.compare's band and ± half-range show)."""
    mean = f"{statistics.fmean(values):.{digits}f}"
    return f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else mean


def seeds_table() -> list[str]:
    lines = ["| model | round | sparsity | seed 0 | seed 1 | seed 2 | mean (range) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, k, sparsity, seeds in scored("classifier"):
        if len(seeds) < 2:
            continue
        fids = [seeds[s]["fid"] for s in sorted(seeds)]
        cells = [f"{seeds[s]['fid']:.2f}" if s in seeds else "" for s in (0, 1, 2)]
        lines.append(f"| {name} | {k} | {100 * sparsity:.1f} % | " + " | ".join(cells) + f" | {spread(fids, 2)} |")
    return lines


def inception_table() -> list[str]:
    lines = ["| model | round | sparsity | seeds | Inception FID, mean (range) | KID × 10³, mean (range) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, k, sparsity, seeds in scored("inception", 5000):
        fids = [seeds[s]["fid"] for s in sorted(seeds)]
        kids = [1000 * seeds[s]["kid"] for s in sorted(seeds)]
        lines.append(f"| {name} | {k} | {100 * sparsity:.1f} % | {','.join(map(str, sorted(seeds)))} | "
                     f"{spread(fids, 2)} | {spread(kids, 2)} |")
    return lines


def arms_table() -> list[str]:
    lines = ["| arm | rounds | sparsity reached | wall hours | training CPU-hours | scoring CPU-hours |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, records in arms().items():
        own = [r for r in records if not r.get("dense_from")]
        wall = sum(r["train_seconds"] + r["eval_seconds"] for r in own) / 3600
        train = sum(r["train_cpu_seconds"] for r in own) / 3600
        score = sum(r["eval_cpu_seconds"] for r in own) / 3600
        lines.append(f"| {name} | {len(records) - 1} | {100 * records[-1]['sparsity']:.1f} % | {wall:.2f} | "
                     f"{train:.2f} | {score:.2f} |")
    return lines


TABLES = {"rounds": rounds_table, "seeds": seeds_table, "inception": inception_table, "arms": arms_table}


QUOTE = re.compile(r"(<!-- quote (\S+) -->\n)(.*?)(<!-- /quote -->)", re.S)


def quoted(name: str) -> str:
    """The text a quote block holds: a table (without rows: a line saying so) or a published file."""
    if name in TABLES:
        lines = TABLES[name]()
        return "\n".join(lines) + "\n" if len(lines) > 2 else f"({name}: no records yet)\n"
    path = os.path.join(HERE, name)
    if not os.path.isfile(path):
        raise SystemExit(f"tables.py: <!-- quote {name} -->: no table or file of that name under {HERE}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = text if text.endswith("\n") else text + "\n"
    return text if name.endswith(".md") else "```text\n" + text + "```\n"


def fill_quotes(page: str) -> int:
    with open(page, encoding="utf-8") as f:
        text = f.read()
    filled, count = QUOTE.subn(lambda m: m.group(1) + quoted(m.group(2)) + m.group(4), text)
    with open(page, "w", encoding="utf-8") as f:
        f.write(filled)
    print(f"{page}: {count} quote block(s) filled")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--into"] and len(argv) == 2:
        return fill_quotes(argv[1])
    unknown = [a for a in argv if a not in TABLES]
    if unknown:
        print(f"tables.py: unknown table {unknown[0]} (choose from {' '.join(TABLES)})", file=sys.stderr)
        return 2
    for i, name in enumerate(argv or list(TABLES)):
        lines = TABLES[name]()
        print(("\n" if i else "") + ("\n".join(lines) if len(lines) > 2 else f"({name}: no records yet)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
