"""Latency measurements keyed by what latency depends on, reused across trials and searches.

Latency depends on the graph's shapes, operators and precisions, not on its weight values. The
key is a hash of:

- the candidate's **architecture signature**: its ONNX graph with the values of float and
  quantized weight tensors removed (names, shapes and types kept; int64 tensors, which hold
  shapes and axes, kept whole), so the precision plan (Q/DQ nodes, fp16 casts) is part of it;
- the same signature of the **baseline** it was measured against (a latency is a ratio to it);
- the **profile** (everything but its name and description) and the **environment** that
  measured it (CPU or GPU model, runtime versions, execution provider; clocks left out).

What is stored is the ratio to the baseline and its interval; a hit gives ``ratio x`` this
search's reference latency. One SQLite file per machine, shared by every search on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import onnx

from tightfit.evaluators.latency import LatencyResult
from tightfit.hardware_profiles import HardwareProfile

VOLATILE_ENV = ("clocks_sm", "clocks_mem", "power_limit", "pinned_cpus")
_DROP_VALUES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT32,  # quantized biases
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("TIGHTFIT_CACHE_DIR") or Path.home() / ".cache" / "tightfit")


def _strip(tensor: onnx.TensorProto) -> None:
    if tensor.data_type in _DROP_VALUES:
        for name in ("raw_data", "float_data", "int32_data", "double_data"):
            tensor.ClearField(name)  # type: ignore[arg-type]


def architecture_signature(onnx_bytes: bytes) -> str:
    """A hash of the graph with weight values removed: equal for equal shapes and precisions."""
    model = onnx.load_from_string(onnx_bytes)
    model.ClearField("doc_string")
    model.ClearField("producer_version")
    for init in model.graph.initializer:
        _strip(init)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _strip(attr.t)
            if attr.name == "blob":  # MatMulNBits-style packed weights, should any be attributes
                attr.ClearField("s")
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def cache_key(
    signature: str, baseline_signature: str, profile: HardwareProfile, env: dict[str, str]
) -> str:
    # quantization settings shape the graph (the signature has them), not how it is measured
    settings = profile.model_dump(
        mode="json", exclude={"name", "description", "calibration", "quantization"}
    )
    stable_env = {k: v for k, v in sorted(env.items()) if k not in VOLATILE_ENV}
    blob = json.dumps([signature, baseline_signature, settings, stable_env], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class LatencyCache:
    """A key -> LatencyResult store in one SQLite file (safe for several searches at once)."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.path = Path(directory or default_cache_dir()) / "latency.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS latency "
                "(key TEXT PRIMARY KEY, result TEXT NOT NULL, created REAL NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS layers "
                "(key TEXT PRIMARY KEY, ms REAL NOT NULL, created REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def get(self, key: str, reference_ms: float) -> LatencyResult | None:
        """The stored result, its latency rescaled to ``reference_ms``; None on a miss."""
        with self._connect() as db:
            row = db.execute("SELECT result FROM latency WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        stored = LatencyResult.model_validate_json(row[0])
        return stored.model_copy(update={"latency_ms": stored.ratio * reference_ms})

    def put(self, key: str, result: LatencyResult) -> None:
        kept: dict[str, Any] = result.model_dump(mode="json", exclude={"samples_ms"})
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?)",
                (key, json.dumps(kept), time.time()),
            )

    def get_layer(self, key: str) -> float | None:
        """A one-layer time of ``evaluators.layer_table`` (milliseconds); None on a miss."""
        with self._connect() as db:
            row = db.execute("SELECT ms FROM layers WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def put_layer(self, key: str, ms: float) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO layers VALUES (?, ?, ?)", (key, ms, time.time()))

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM latency").fetchone()[0])
