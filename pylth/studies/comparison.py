"""Several find_ticket runs side by side: each run's metric against sparsity, the dense model's noise,
and what it costs per round (``python -m pylth.compare``).

Scores come from rounds.jsonl (every round, the run's own evaluation) or, with ``settings``, from the
rows of evaluations.jsonl that match them (``python -m pylth.evaluate``; several sampling seeds give
a spread). A score belongs to a trained model, named by the SHA-256 of its model.pt: runs that share
round 0 (``--dense-from``) share its scores, wherever they were measured, and a model scored in two
runs counts once. The dense band pools every dense model and sampling seed of the runs compared.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field

from pylth.foundations.run_dir import RunDirectory
from pylth.foundations.hparams import value_of
from pylth.lottery.run_reader import finished_run
from pylth.lottery.spec import RunSpec, flatten_as_json, resumable_keys
from pylth.studies.evaluations import NEAR, SETTINGS, read_evaluations

METRICS = ("fid", "kid", "loss")
TARGETS = (0.8, 0.9, 0.95, 0.99)  # the table's columns: the round nearest each sparsity
# What makes scores of two runs comparable (records and rows); the data set and image side decide the
# reference statistics.
SCORE_FACTS = ("fid_features", "fid_weights", "fid_samples")
EVALUATION_FACTS = ("sampler", "sample_steps", "eta")


@dataclass
class Point:
    round: int
    sparsity: float
    values: dict = field(default_factory=dict)  # sampling seed -> the metric

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())


@dataclass
class ComparedRun:
    path: str
    label: str
    spec: RunSpec
    records: list
    points: list  # Point per round that has a score, in round order


def parse_settings(text: str | None) -> dict | None:
    """``KEY=VALUE,...`` selecting evaluations.jsonl rows (e.g. fid_features=inception,fid_samples=5000)."""
    if text is None:
        return None
    settings = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in EVALUATION_FACTS + ("fid_features", "fid_samples", "sample_batch_size"):
            raise ValueError(f"--evaluation takes KEY=VALUE pairs of fid_features, fid_samples, sampler, sample_steps, "
                             f"eta, sample_batch_size; got {pair!r}")
        settings[key.strip()] = value_of(value.strip())
    return settings


def open_runs(paths: list[str]) -> list[tuple[RunDirectory, RunSpec, list]]:
    runs = []
    for path in paths:
        run = RunDirectory(path)
        runs.append((run, *finished_run(run)))
    return runs


def model_digest(record: dict) -> str | None:
    return next((d for rel, d in (record.get("files") or {}).items() if rel.endswith("/model.pt")), None)


def _scores(runs, metric: str, settings: dict | None) -> dict:
    """(model digest or (run, round), seed) -> (metric value, the facts that make it comparable)."""
    scores = {}
    for run, spec, records in runs:
        wanted = settings
        if settings is None:
            for r in records:
                facts = {k: r.get(k) for k in SCORE_FACTS} | {k: getattr(spec.evaluation, k) for k in EVALUATION_FACTS}
                model = model_digest(r) or (run.path, r["round"])
                scores[(model, spec.train.seed)] = (r[metric], facts)
            # evaluations.jsonl's rows with the run's own settings are the same measurement at other
            # sampling seeds (at the run's seed it reproduces rounds.jsonl, which stays the one read)
            wanted = {k: getattr(spec.evaluation, k) for k in SETTINGS}
        for row in read_evaluations(run):
            if any(row.get(k) != v for k, v in wanted.items()) or metric not in row:
                continue
            model = model_digest(records[row["round"]]) if row["round"] < len(records) else None
            key = (model or (run.path, row["round"]), row["seed"])
            if settings is None and key in scores:
                continue
            scores[key] = (row[metric], {k: row.get(k) for k in SCORE_FACTS + EVALUATION_FACTS})
    return scores


def check_comparable(runs, scores: dict) -> None:
    """One line naming the first difference that makes the runs' scores incomparable."""
    images = {run.path: f"{spec.data.dataset} at {'x'.join(map(str, spec.image_shape[1:]))}" for run, spec, _ in runs}
    first = runs[0][0].path
    for path, value in images.items():
        if value != images[first]:
            raise ValueError(f"{path} and {first} are not comparable: their FID references are {value} and "
                             f"{images[first]}")
    seen = {}
    for (model, seed), (_value, facts) in scores.items():
        for key, value in facts.items():
            if key in seen and seen[key][0] != value:
                raise ValueError(f"the scores are not comparable: {key} {seen[key][0]!r} ({seen[key][1]}) vs {value!r} "
                                 f"({model if isinstance(model, tuple) else 'model ' + model[:12]}); pick one with "
                                 "--evaluation (e.g. --evaluation fid_features=inception,fid_samples=5000)")
            seen.setdefault(key, (value, model if isinstance(model, tuple) else "model " + model[:12]))


def default_labels(specs: list[RunSpec], paths: list[str]) -> list[str]:
    """What differs between the runs' configurations (e.g. layerwise/rewind, uniform/rewind), or the
    folders' names where nothing does."""
    resumable = resumable_keys()
    flat = [{k: v for k, v in flatten_as_json(s.to_json()).items() if k not in resumable} for s in specs]
    keys = sorted({k for f in flat for k in f if any(f.get(k) != g.get(k) for g in flat)},
                  key=lambda k: (not k.startswith("lottery."), k))
    if not keys:
        return [os.path.basename(p) for p in paths]
    def show(key, value):
        return str(value) if isinstance(value, str) else f"{key.split('.')[-1]}={value}"
    labels = ["/".join(show(k, f.get(k)) for k in keys) for f in flat]
    return labels if len(set(labels)) == len(labels) else [os.path.basename(p) for p in paths]


def compare_runs(paths: list[str], metric: str = "fid", labels: list[str] | None = None,
                 settings: dict | None = None) -> list[ComparedRun]:
    """The runs, their points and labels; a ValueError naming the problem when they cannot be compared."""
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "loss" and settings is not None:
        raise ValueError("--metric loss is the held-out loss of rounds.jsonl; --evaluation selects FID/KID rows")
    runs = open_runs(paths)
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"--labels names {len(labels)} run(s), but {len(runs)} are compared")
    scores = _scores(runs, metric, settings)
    if metric != "loss":
        check_comparable(runs, scores)
    labels = labels or default_labels([s for _, s, _ in runs], [r.path for r, _, _ in runs])
    compared = []
    for (run, spec, records), label in zip(runs, labels):
        points = []
        for r in records:
            model = model_digest(r) or (run.path, r["round"])
            values = {seed: v for (m, seed), (v, _) in scores.items() if m == model and v is not None}
            if values:
                points.append(Point(r["round"], r["sparsity"], values))
        compared.append(ComparedRun(run.path, label, spec, records, points))
    if not any(c.points for c in compared):
        raise ValueError("no run has a score with these settings" + (f" ({settings})" if settings else ""))
    return compared


def dense_band(compared: list[ComparedRun]) -> tuple[float, float, int] | None:
    """(lowest, highest, count) of the dense models' scores over every sampling seed, pooled over the
    runs (a dense model shared between runs counts once)."""
    values = {}
    for c in compared:
        for p in c.points:
            if p.round == 0:
                for seed, v in p.values.items():
                    values[(model_digest(c.records[0]) or c.path, seed)] = v
    if not values:
        return None
    return min(values.values()), max(values.values()), len(values)


def nearest(points: list, target: float) -> Point | None:
    near = [p for p in points if abs(p.sparsity - target) <= NEAR]
    return min(near, key=lambda p: (abs(p.sparsity - target), -p.sparsity)) if near else None


def sparsest_within(points: list, band: tuple | None) -> Point | None:
    """The sparsest pruned round whose mean score is no worse than the dense band's worst (lower is better)."""
    if band is None:
        return None
    good = [p for p in points if p.round > 0 and p.mean <= band[1]]
    return max(good, key=lambda p: p.sparsity) if good else None


def _cell(point: Point | None) -> str:
    if point is None:
        return "-"
    spread = f" ± {(max(point.values.values()) - min(point.values.values())) / 2:.3g}" if len(point.values) > 1 else ""
    return f"{point.mean:.4g}{spread} ({100 * point.sparsity:.1f} %)"


def markdown_table(compared: list[ComparedRun], metric: str, band) -> str:
    """Per run: dense value, the rounds nearest TARGETS, the sparsest round within the dense band."""
    name = metric.upper() if metric != "loss" else "held-out loss"
    head = ["run", f"dense {name}"] + [f"≈{round(100 * t)} %" for t in TARGETS] + ["sparsest within the dense band"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in compared:
        dense = next((p for p in c.points if p.round == 0), None)
        cells = [c.label, _cell(dense)] + [_cell(nearest(c.points, t)) for t in TARGETS]
        best = sparsest_within(c.points, band)
        cells.append(f"{100 * best.sparsity:.1f} % (round {best.round})" if best else "none")
        lines.append("| " + " | ".join(cells) + " |")
    if band is not None:
        lines.append("")
        lines.append(f"Dense band: {band[0]:.4g} to {band[1]:.4g} ({band[2]} dense score(s): every dense model and "
                     "sampling seed of these runs). Values are means over sampling seeds, ± half their range; "
                     f"(x %) is the round's sparsity; a target column shows the round within {100 * NEAR:g} points of it.")
    return "\n".join(lines) + "\n"


def csv_rows(compared: list[ComparedRun], metric: str) -> list[dict]:
    rows = []
    for c in compared:
        for p in c.points:
            record = c.records[p.round]
            rows.append(dict(run=c.path, label=c.label, round=p.round, sparsity=p.sparsity, metric=metric,
                             mean=p.mean, low=min(p.values.values()), high=max(p.values.values()),
                             seeds=json.dumps(sorted(p.values)), train_seconds=record.get("train_seconds"),
                             train_cpu_seconds=record.get("train_cpu_seconds"), seconds=record.get("seconds"),
                             dense_from=(record.get("dense_from") or {}).get("path", "")))
    return rows
