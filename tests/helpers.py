"""What several test modules share: the small search they run, and running the CLI.

Test modules import from here (and ``tests.models``, ``tests.zoo``), never from each other.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tightfit.config import SearchConfig, config_from_dict
from tightfit.kernels import list_kernels

ROOT = Path(__file__).resolve().parents[1]

#: the digits network at width 8, trained 2 epochs: seconds to train, a real model on real data
TINY_MODEL = {"callable": "digits-cnn", "kwargs": {"width": 8, "epochs": 2}}

#: the kernels that find units on a small CNN (depth drops decoder blocks: tests/kernels/test_depth)
CNN_KERNELS = [name for name in list_kernels() if name != "depth"]

#: the session's main search distills its pruned and factorized candidates
DISTILL = {"distill": {"enabled": True, "steps": 20}}


def search_dict(workdir: Path, profile: Path | str | None = None, **extra: Any) -> dict[str, Any]:
    """The small search of the end-to-end tests: the tiny digits network, three prune ratios
    and one rank, two uniform seeds, on ``profile`` (a fast CPU profile file, usually),
    working in ``workdir``; ``extra`` overrides any field. No sensitivity scan: it is the
    session's main search's (``finished`` in conftest) and costs a search export per level."""
    raw: dict[str, Any] = {
        "name": "e2e",
        "model": TINY_MODEL,
        "data": {"callable": "digits"},
        "space": {"prune": {"ratios": [0.0, 0.25, 0.5]}, "lowrank": {"rank_fractions": [0.5]}},
        "n_trials": 6,
        "seeds": {"uniform": 2, "global_magnitude": 0},
        "sensitivity": {"enabled": False},
        "concurrency": 2,
        "seed": 0,
        "workdir": str(workdir),
        "ray": {"num_cpus": 2},
    }
    if profile is not None:
        raw["profiles"] = [str(profile)]
    return {**raw, **extra}


def search_config(workdir: Path, profile: Path | str | None = None, **extra: Any) -> SearchConfig:
    """:func:`search_dict`, validated."""
    return config_from_dict(search_dict(workdir, profile, **extra))


def search_file(path: Path, workdir: Path, profile: Path | str | None = None, **extra: Any) -> Path:
    """:func:`search_dict` written as the YAML file ``path`` (what ``tightfit search`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(search_dict(workdir, profile, **extra), sort_keys=False))
    return path


def free_port() -> int:
    """A localhost port no one listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tightfit(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``tightfit`` command, run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tightfit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 with one ``tightfit: error:`` line holding ``needles``, and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("tightfit: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


def trial_runs(workdir: Path, kind: str = "trial", name: str = "e2e") -> list[Any]:
    """The MLflow runs of a search in ``workdir``'s local store: its trials, or its summaries."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`tightfit.kind` = '{kind}'", max_results=1000
    )


def runtime_ops(path: Path, tmp: Path) -> set[str]:
    """The operators ONNX Runtime runs: its optimized graph of ``path``."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


def min_cosine(out: Any, reference: Any) -> float:
    """The smallest cosine similarity between matching rows of two output arrays."""
    import numpy as np

    cosine = np.sum(out * reference, 1) / np.linalg.norm(out, axis=1)
    return float((cosine / np.linalg.norm(reference, axis=1)).min())


def readme_block(marker: str) -> str:
    """The code block of the README that follows ``<!-- marker -->``."""
    text = (ROOT / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]
