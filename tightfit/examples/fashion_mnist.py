"""Fashion-MNIST (Zalando, MIT) from the Debian package ``dataset-fashion-mnist``, and a small
CNN trained once on its full 60,000-image training split, scored on the full 10,000-image test
split.

The four original IDX files are read from ``/usr/share/datasets/fashion-mnist`` (or
``$TIGHTFIT_FASHION_MNIST_DIR``). The network (4 conv layers with BatchNorm, global pooling, a
classifier; width 48) is trained for 3 epochs (about 5 minutes on 2 cores) and cached in the
search's work directory.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tightfit.examples._packages import MissingPackage
from tightfit.examples._training import cache_file, seeded_fit, trained_once

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MEAN, STD = 0.2860, 0.3530
N_CALIBRATION = 4096  # training images: quantization calibration and distillation inputs


def data_dir() -> Path:
    folder = Path(os.environ.get("TIGHTFIT_FASHION_MNIST_DIR", DEBIAN_DIR))
    missing = [f for f in FILES.values() if not (folder / f).exists()]
    if missing:
        raise MissingPackage(
            f"Fashion-MNIST is not in {folder} (missing {missing[0]}): install the Debian package "
            "'dataset-fashion-mnist' ('sudo apt-get install dataset-fashion-mnist', or "
            "'make examples'), or point $TIGHTFIT_FASHION_MNIST_DIR at the four IDX .gz files"
        )
    return folder


def _read(name: str) -> np.ndarray:
    raw = gzip.open(data_dir() / FILES[name]).read()
    if name.endswith("images"):  # 16-byte header: magic, count, rows, cols
        return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)  # 8-byte header


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def load_data(seed: int = 0) -> dict:
    """Calibration images (from the training split), the whole test split and its labels."""
    train = _read("train_images")
    pick = np.random.default_rng(seed).choice(len(train), N_CALIBRATION, replace=False)
    return {
        "calibration": {"image": _normalise(train[np.sort(pick)])},
        "validation": {"image": _normalise(_read("test_images"))},
        "targets": _read("test_labels"),
        "metric": "accuracy",
    }


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))


class FashionCNN(nn.Module):
    """conv w @28 - pool - conv 2w, conv 2w @14 - pool - conv 4w @7 - pool - linear."""

    def __init__(self, width: int = 48, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv(1, width)
        self.conv2 = _conv(width, 2 * width)
        self.conv3 = _conv(2 * width, 2 * width)
        self.conv4 = _conv(2 * width, 4 * width)
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.relu(self.conv3(F.relu(self.conv2(x))))
        x = F.relu(self.conv4(F.max_pool2d(x, 2)))
        return self.fc(x.mean(dim=(2, 3)))


def train(width: int = 48, epochs: int = 3, seed: int = 0) -> FashionCNN:
    """AdamW with a one-cycle schedule on the whole training split (deterministic by seed)."""
    xs = torch.from_numpy(_normalise(_read("train_images")))
    ys = torch.from_numpy(_read("train_labels"))
    return seeded_fit(lambda: FashionCNN(width), xs, ys, epochs, batch=128, seed=seed)


def pretrained_cnn(
    width: int = 48, epochs: int = 3, seed: int = 0, cache_dir: Path | None = None
) -> nn.Module:
    """The trained FashionCNN, from ``cache_dir`` if it was trained there before."""
    cache = cache_file(cache_dir, f"fashion-cnn-w{width}-e{epochs}-s{seed}-f64")
    data_dir()  # fail before training if the data is missing
    return trained_once(
        FashionCNN(width),
        cache,
        lambda: train(width, epochs, seed),
        "the Fashion-MNIST example network (a few minutes on 2 cores)",
    )
