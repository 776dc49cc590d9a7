"""Exported engines in the MLflow Model Registry: each an MLflow Model logged to its trial's run,
a version of ``<search>-<profile>`` aliased ``trial-N`` (and ``knee``)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.config import SearchConfig
from tightfit.exceptions import TightfitError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.keys import Tag
from tightfit.runs._files import sha256

if TYPE_CHECKING:
    from tightfit.runs.export import ExportResult


def registered_model_name(config: SearchConfig, profile: HardwareProfile) -> str:
    return f"{config.name}-{profile.name}"


def _signature(model_path: Path) -> Any:
    """The MLflow signature of an ONNX engine: its named inputs and output as tensors (dynamic
    axes as -1)."""
    import numpy as np
    import onnx
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def specs(values: Any) -> Schema:
        out: list[Any] = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
            out.append(TensorSpec(dtype, shape, name=v.name))
        return Schema(out)

    initializers = {i.name for i in graph.initializer}
    return ModelSignature(
        inputs=specs([i for i in graph.input if i.name not in initializers]),
        outputs=specs(graph.output),
    )


def _mlflow_model(engine: Path, hw: HardwareProfile, folder: Path) -> Path:
    """``folder`` holding the engine as an MLflow Model (``MLmodel``, signature, requirements):
    an ONNX engine in the ``onnx`` flavour, which ``mlflow.pyfunc.load_model`` serves with ONNX
    Runtime on the profile's execution provider. The engine file is the exported one, byte for
    byte (its sha256 is in the manifest), and ``manifest.json`` travels beside it. A TensorRT
    plan has no MLflow flavour: its folder is logged as it is."""
    manifest = engine.parent / "manifest.json"
    if engine.suffix != ".onnx":
        shutil.copytree(engine.parent, folder)
        return folder
    import mlflow.onnx
    import onnx

    mlflow.onnx.save_model(
        onnx.load(str(engine)),
        str(folder),
        signature=_signature(engine),
        onnx_execution_providers=[hw.execution_provider],
        metadata={Tag.PROFILE: hw.name},
        save_as_external_data=False,
    )
    shutil.copyfile(engine, folder / "model.onnx")  # the exported bytes (sha256 in the manifest)
    if manifest.exists():
        shutil.copyfile(manifest, folder / "manifest.json")
    return folder


def register(
    results: list[ExportResult], workdir: Path, config: SearchConfig, hw: HardwareProfile, pick: str
) -> list[ExportResult]:
    """Register each engine in the MLflow Model Registry, aliased ``trial-N`` (and ``knee``).

    The engine is logged to the trial's own run as an MLflow Model (see :func:`_mlflow_model`),
    and the version's tags carry the profile and the re-measured metrics, so a deployment
    pipeline can load ``models:/<search>-<profile>@knee`` without knowing trial numbers.
    """
    from mlflow.exceptions import MlflowException

    from tightfit.runs._tracker import Tracker

    tracker = Tracker(workdir, config.name, uri=config.mlflow.tracking_uri)
    client = tracker.client
    name = registered_model_name(config, hw)
    try:
        client.create_registered_model(
            name,
            tags={Tag.SEARCH: config.name, Tag.PROFILE: hw.name},
            description=f"Engines exported by tightfit from search '{config.name}' for profile '{hw.name}'.",
        )
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    out = []
    for r in results:
        run_id = tracker.run_id(hw.name, r.trial)
        if run_id is None:
            raise TightfitError(f"trial {r.trial} has no MLflow run to attach its engine to")
        with tempfile.TemporaryDirectory(prefix="tightfit-register-") as tmp:
            folder = _mlflow_model(r.path, hw, Path(tmp) / "engine")
            client.log_artifacts(run_id, str(folder), artifact_path="engine")
        source = f"{client.get_run(run_id).info.artifact_uri}/engine"
        tags = {
            Tag.PROFILE: hw.name,
            Tag.TRIAL: str(r.trial),
            "sha256": sha256(r.path),
            **{f"metric.{k}": f"{v:.6g}" for k, v in r.measured.items()},
        }
        version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        aliases = [f"trial-{r.trial}"] + (["knee"] if pick == "knee" else [])
        for alias in aliases:
            client.set_registered_model_alias(name, alias, version.version)
        out.append(replace(r, registered=f"models:/{name}@{aliases[-1]}"))
    return out
