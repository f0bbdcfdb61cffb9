"""A small CNN trained on a data set's labels: the feature extractor for FID when no Inception
weights are available. Trained once per data set (seeded) and cached."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pylth.ddpm.data import dataset_key, images_and_labels
from pylth.foundations import distributed as D
from pylth.foundations.io import atomic_torch_save, torch_load

FEATURE_DIM = 128
TRAIN_STEPS = 1500
BATCH_SIZE = 128


class LabelClassifier(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, FEATURE_DIM, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def train_classifier(dataset, device, steps: int = TRAIN_STEPS, seed: int = 0) -> tuple[LabelClassifier, float]:
    """Train on 90 % of ``dataset`` (random flips when it has them) for ``steps`` steps; returns (model,
    held-out accuracy)."""
    images, labels = images_and_labels(dataset)
    num_classes = int(getattr(dataset, "num_classes", int(labels.max()) + 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    n_val = max(1, len(labels) // 10)
    val, tr = order[:n_val], order[n_val:]
    model = LabelClassifier(images.shape[1], num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hflip = bool(getattr(dataset, "hflip", False))
    for _ in range(steps):
        idx = tr[torch.randint(len(tr), (min(BATCH_SIZE, len(tr)),), generator=gen)]
        x = images[idx]
        if hflip:
            x = torch.where(torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5, x.flip(-1), x)
        loss = F.cross_entropy(model(x.to(device)), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(images[val[i:i + 512]].to(device)).argmax(1).cpu() == labels[val[i:i + 512]]).sum())
                      for i in range(0, n_val, 512))
    return model, correct / n_val


def load_or_train_classifier(dataset_name: str, dataset, cache_dir: str, device,
                             steps: int = TRAIN_STEPS) -> tuple[LabelClassifier, str]:
    """The cached classifier for this data set (trained for ``steps`` and saved first if absent) and its
    file. The cache is keyed by the data set only: a cached classifier is used whatever ``steps``."""
    path = os.path.join(cache_dir, f"classifier-{dataset_key(dataset_name, dataset)}.pt")
    if not os.path.exists(path):
        model, accuracy = train_classifier(dataset, device, steps)
        atomic_torch_save(dict(state=model.cpu().state_dict(), in_channels=model.body[0].in_channels,
                               num_classes=model.fc.out_features, accuracy=accuracy), path)
    saved = torch_load(path)
    model = LabelClassifier(saved["in_channels"], saved["num_classes"])
    model.load_state_dict(saved["state"])
    return model.to(device).eval().requires_grad_(False), path


class ClassifierFeatures:
    """Penultimate-layer features of the data set's cached label classifier."""

    kind = "classifier"
    dim = FEATURE_DIM

    def __init__(self, dataset_name: str, dataset, cache_dir: str, device, steps: int = TRAIN_STEPS):
        # Rank 0 trains (``steps``) or loads the cached classifier and sends it, so every rank extracts
        # the same features even where the machines do not share the cache.
        payload = None
        with D.fail_together("training or loading the FID classifier"):
            if D.is_main():
                model, path = load_or_train_classifier(dataset_name, dataset, cache_dir, device, steps)
                with open(path, "rb") as f:
                    digest = hashlib.sha1(f.read()).hexdigest()
                payload = (model.cpu().state_dict(), model.body[0].in_channels, model.fc.out_features, digest)
        state, in_channels, num_classes, digest = D.broadcast_object(payload)
        self.model = LabelClassifier(in_channels, num_classes)
        self.model.load_state_dict(state)
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.id = "classifier-" + digest[:10]
        self.weights = f"classifier:{dataset_name}:sha1={digest}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.model.features(images.to(self.device)).float().cpu().numpy()
