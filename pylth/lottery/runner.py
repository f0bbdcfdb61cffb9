"""find_ticket: the small runner that joins the pieces. It loads the data, opens (or refuses) the run
directory on rank 0, which holds its lock until the end, and hands both to a Lottery with its
collaborators."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pylth.ddpm.data import load_dataset
from pylth.evaluation.heldout import make_heldout
from pylth.foundations import distributed as D
from pylth.foundations.environment import Environment
from pylth.foundations.run_dir import RunDirectory
from pylth.lottery.dense_from import read_source
from pylth.lottery.parts import LotteryParts
from pylth.lottery.resume import open_run
from pylth.lottery.rounds import Lottery, LotteryData
from pylth.lottery.spec import RunSpec


def load_lottery_data(spec: RunSpec, environment: Environment = Environment()) -> LotteryData:
    """The training set and the fixed held-out set, read from --data-root or the environment's. Under
    --download one process per machine fetches the files first while the others wait."""
    data = spec.data
    root = data.data_root or environment.data_root
    if data.download and D.is_local_main():
        load_dataset(data.dataset, root, download=True, train=True)
    D.barrier()
    dataset = load_dataset(data.dataset, root, train=True, image_size=data.image_size)
    test_set = load_dataset(data.dataset, root, train=False, image_size=data.image_size)
    heldout = make_heldout(test_set, spec.lottery.heldout_samples,
                           spec.diffusion.num_timesteps, spec.train.seed)
    return LotteryData(dataset, heldout)


def open_shared_run(spec: RunSpec, run: RunDirectory, force: bool, log) -> list[dict]:
    """Rank 0 opens (or refuses) the run directory; every rank learns the outcome: the finished rounds."""
    outcome, error = None, None
    if D.is_main():
        try:
            outcome = ("ok", open_run(run, spec, force=force, log=log))
        except ValueError as exc:
            outcome, error = ("error", str(exc)), exc
    status, payload = D.broadcast_object(outcome)
    if error is not None:
        raise error
    if status == "error":
        raise ValueError(payload)
    return payload


def find_ticket(spec: RunSpec, out: str, *, force: bool = False, log: Callable[[str], None] = print,
                parts: LotteryParts | None = None, dense_from: str | None = None,
                environment: Environment = Environment()) -> list[dict]:
    """Run (or resume) Algorithm 1 into run directory ``out``; returns the finished rounds' records.
    ``dense_from``: a run whose finished round 0 this one takes instead of training it (checked before
    anything is written). ``environment``: where data, caches and Inception weights are found when the
    spec does not say. The data is read first: a missing file must not leave a half-made run
    directory behind."""
    spec.lottery.validate()
    spec = replace(spec, evaluation=spec.evaluation.resolved(spec.data.dataset, environment))  # no "auto"
    with D.fail_together("checking --dense-from"):  # refused before --out is touched
        if dense_from is not None and D.is_main():
            read_source(dense_from, spec)
    data = load_lottery_data(spec, environment)
    run = RunDirectory(out)
    main_log = log if D.is_main() else (lambda _msg: None)
    try:
        records = open_shared_run(spec, run, force, main_log)
        return Lottery(spec, run, records, data, parts or LotteryParts(), log=log, dense_from=dense_from,
                       environment=environment).run_all()
    finally:
        run.unlock()
