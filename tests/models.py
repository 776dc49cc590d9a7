"""Small real models for tests (importable as ``tests.models:<name>`` from a config)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyResNet(nn.Module):
    """Stem, one residual block with a projection shortcut, a classifier: coupled groups."""

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.shortcut = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))
        return self.fc(y.mean(dim=(2, 3)))


class TokenMLP(nn.Module):
    """Linear layers on [batch, tokens, features]: exported as MatMul, so 4-bit applies."""

    def __init__(self, dim: int = 64, hidden: int = 128, n_classes: int = 4) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + self.down(F.gelu(self.up(tokens)))
        return self.head(x.mean(dim=1))


def tiny_resnet(width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyResNet(width).eval()


def token_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TokenMLP().eval()


def token_data(n: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 64)).astype(np.float32)
    return {
        "calibration": {"tokens": x[:32]},
        "validation": {"tokens": x},
        "targets": rng.integers(0, 4, n),
    }


class Unexportable(nn.Module):
    """Uses an operator that has no ONNX export (Bessel function)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.bessel_j0(image).flatten(1))


def unexportable() -> nn.Module:
    return Unexportable().eval()


def not_a_module() -> str:
    return "not a model"


def broken_model() -> nn.Module:
    raise RuntimeError("weights file is corrupt")


def wrong_length_targets() -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 16, 16)).astype(np.float32)
    return {"calibration": x, "validation": x, "targets": np.zeros(7, dtype=np.int64)}


class OutlierCNN(nn.Module):
    """A CNN whose layers each have one weight 10× the rest: one scale per tensor then rounds
    most weights coarsely (the case bias correction is for)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for m in (self.conv1, self.conv2, self.fc):
                m.weight.view(-1)[0] = 10 * m.weight.abs().max()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(image))))
        return self.fc(x.mean((2, 3)))


def outlier_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return OutlierCNN().eval()
