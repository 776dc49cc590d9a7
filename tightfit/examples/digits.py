"""Handwritten digits (scikit-learn's bundled UCI optdigits, 1,797 images) and a small ResNet.

The data ships inside scikit-learn, so nothing is downloaded. Images are 8x8 grey levels 0..16,
scaled to [0, 1] and upsampled to 16x16 so that the network's compute, not per-call overhead,
dominates its latency (about 1.5 ms per image with ONNX Runtime on 2 cores). The network is
trained once (about 40 s on 2 cores) and cached in the search's work directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tightfit.examples._training import cache_file, seeded_fit, trained_once

IMAGE_SIZE = 16
N_TRAIN = 1200  # the remaining 597 images are the validation split
N_CALIBRATION = 128


def _images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    return x.numpy(), digits.target.astype(np.int64)


def _split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(1797)
    return perm[:N_TRAIN], perm[N_TRAIN:]


def load_data(seed: int = 0) -> dict:
    """Calibration images (from the training split), validation images and labels."""
    x, y = _images()
    train, val = _split(seed)
    return {
        "calibration": {"image": x[train[:N_CALIBRATION]]},
        "validation": {"image": x[val]},
        "targets": y[val],
        "metric": "accuracy",
    }


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem + three residual stages (width w, 2w, 4w, 8w) + global pooling + classifier."""

    def __init__(self, width: int = 48, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = BasicBlock(width, 2 * width, 1)
        self.layer2 = BasicBlock(2 * width, 4 * width, 2)
        self.layer3 = BasicBlock(4 * width, 8 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(image))))
        return self.fc(torch.flatten(self.pool(x), 1))


def train(width: int = 48, epochs: int = 4, seed: int = 0) -> DigitsResNet:
    """Train on the training split with AdamW and a one-cycle schedule (deterministic by seed)."""
    x, y = _images()
    train_idx, _ = _split(seed)
    xs, ys = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    return seeded_fit(lambda: DigitsResNet(width), xs, ys, epochs, batch=64, seed=seed)


def pretrained_cnn(
    width: int = 48, epochs: int = 4, seed: int = 0, cache_dir: Path | None = None
) -> nn.Module:
    """The trained DigitsResNet, from ``cache_dir`` if it was trained there before."""
    return trained_once(
        DigitsResNet(width),
        cache_file(cache_dir, f"digits-resnet-w{width}-e{epochs}-s{seed}-f64"),
        lambda: train(width, epochs, seed),
        "the digits example network (about a minute on 2 cores)",
    )
