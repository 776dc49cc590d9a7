"""evaluate_candidate and its two stages: pure functions, no Optuna, no Ray, no MLflow.

Stage 1 (compress and score) runs anywhere on one core: apply the candidate, export, quantize,
measure accuracy and size. Stage 2 (latency) runs on the profile's hardware and holds its cores.
Both rebuild what they need from small records (config, profile, candidate) and cache it per
process, so they run the same in the driver, in a local Ray worker or on a cluster node.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from tightfit import objectives
from tightfit._naming import did_you_mean
from tightfit._records import Record
from tightfit.config import SearchConfig
from tightfit.evaluators import (
    LatencyResult,
    evaluate_accuracy,
    evaluate_quality,
    input_feed,
    layer_table,
    measure_jointly,
    size_mb,
)
from tightfit.evaluators.accuracy import staged_accuracy, validation_subset
from tightfit.evaluators.latency_cache import LatencyCache, architecture_signature
from tightfit.evaluators.predictor import graph_features
from tightfit.exceptions import CandidateError, ConfigError, ModelError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels import SurgeryContext, compress, export_onnx
from tightfit.kernels._hooks import run_watched
from tightfit.kernels.export import attention_for, decoder_attention, export_for, verify_export
from tightfit.kernels.fusion import finish_decoder, fuse_for, packs
from tightfit.kernels.precision import to_float16
from tightfit.spaces import Candidate
from tightfit.task import TaskData, is_token_input, load_data, load_model, model_id
from tightfit.task._attention import OP as GROUP_QUERY_ATTENTION

log = logging.getLogger(__name__)


class Setup(Record):
    """Everything a worker needs to rebuild the task: the config and one hardware profile."""

    config: SearchConfig
    profile: HardwareProfile
    cache_dir: str = Field(description="where model callables may cache (e.g. trained weights)")

    @classmethod
    def of(cls, config: SearchConfig, profile: HardwareProfile, workdir: Path) -> Setup:
        """The search's set-up for ``profile``: model callables cache under the workdir."""
        return cls(config=config, profile=profile, cache_dir=str(Path(workdir) / "cache"))


class MeasurementReference(Record):
    """What every latency of a search is measured against: the baseline's ONNX, the inputs
    (shapes without the batch, dtypes), the baseline's reference latency and the seed.

    Latencies are ratios to the baseline measured in the same rounds, scaled by
    ``reference_ms`` (None: by the baseline's own median in those rounds).
    """

    baseline_onnx: bytes
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, str]
    reference_ms: float | None = None
    seed: int = 0


class StageOne(Record):
    """Result of compressing and scoring one candidate (ONNX bytes travel to the latency stage)."""

    accuracy: float
    size_mb: float
    onnx: bytes
    report: dict[str, Any] = Field(default_factory=dict)
    seconds: float
    signature: str = Field("", description="architecture signature (latency cache key part)")
    features: dict[str, float] = Field(default_factory=dict, description="latency predictor input")
    node_id: str = Field("", description="the Ray node that compressed (empty outside Ray)")
    layer_host: str = Field("", description="the CPU that timed features['layer_ms'], if any")
    started_at: float = Field(0.0, description="unix time the work started on that node")
    stage: str = Field(
        "full", description="'subset': stopped after the validation subset (accuracy is its)"
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, description="the data's extra metrics (full evaluations only)"
    )


class Evaluation(Record):
    """Both stages together, as evaluate_candidate returns them."""

    accuracy: float
    size_mb: float
    latency: LatencyResult
    report: dict[str, Any] = Field(default_factory=dict)


def find_output_layer(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> str | None:
    """The Linear/Conv layer that runs last in ``forward``: the classifier, never pruned."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, p=p: order.append(p))
        for p, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    run_watched(model, example_inputs, hooks)
    return order[-1] if order else None


SCRATCH_PREFIX = "tightfit-"
OWNER_FILE = "owner.pid"


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for this process's workspace, marked with its PID.

    Ray kills its worker processes at shutdown, so their folders' finalizers never run: every
    search left one per worker in the temporary directory (about 130 an hour while this
    project's tests ran). Each folder names its owner, and folders whose owner is no longer
    running on this machine are removed when a new one is made.
    """
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{SCRATCH_PREFIX}*/{OWNER_FILE}"):
        try:
            pid = int(old.read_text())
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(old.parent, ignore_errors=True)
        except (ValueError, OSError):  # unreadable, or another user's process: leave it
            continue
    made = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX)
    (Path(made.name) / OWNER_FILE).write_text(str(os.getpid()))
    return made


def _check_module_paths(model: nn.Module, config: SearchConfig, what: str) -> None:
    """Every path of ``model.ignore``, ``space.prune.ignore`` and ``recovery.distill.hidden``
    names a module of ``model``: a misspelt one would silently leave the layer in the search
    (or fail every trial)."""
    paths = [p for p, _ in model.named_modules() if p]
    known = set(paths)
    for field_name, listed in (
        ("model.ignore", config.model.ignore),
        ("space.prune.ignore", config.space.prune.ignore),
        ("recovery.distill.hidden", config.recovery.distill.hidden),
    ):
        for i, path in enumerate(listed):
            if path not in known:
                hint = did_you_mean(path, paths, n=3) or (
                    f"; module paths look like {', '.join(repr(p) for p in paths[:3])}"
                )
                raise ConfigError(
                    f"{field_name}[{i}]: {path!r} is not a module of {what}{hint} "
                    "(the names of model.named_modules())"
                )


class Workspace:
    """Per-process state for one (config, profile): model, data, context, baseline ONNX."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.data: TaskData = load_data(setup.config.data, cache_dir=Path(setup.cache_dir))
        self.model = load_model(
            setup.config.model, cache_dir=Path(setup.cache_dir), input_names=self.data.input_names
        )
        self.model_id = model_id(self.model)
        example = self.data.example_inputs()
        what = setup.config.model.describe()
        self._check_fits(setup, what)
        _check_module_paths(self.model, setup.config, what)
        try:
            classifier = find_output_layer(self.model, example)
        except Exception as e:
            raise ModelError(
                f"{what} fails on the data's inputs {[tuple(t.shape) for t in example]}: {type(e).__name__}: {e}"
            ) from None
        self._scratch = scratch_dir()
        self.scratch = Path(self._scratch.name)
        traced: list[str] = []
        profile = setup.profile
        #: the exporter this search's graphs come from, and why when it is not the profile's
        self.export_record: dict[str, Any] = {"exporter": profile.exporter}
        try:
            self.baseline_onnx = self._export_baseline(profile, example, traced)
        except CandidateError as e:
            if profile.exporter != "dynamo":
                raise ModelError(
                    f"{what} cannot be exported to ONNX ({e}); make forward() traceable: tensors "
                    "in and out, no data-dependent Python control flow, no .numpy()/.item() on "
                    "activations"
                ) from None
            # the recorded fallback: every graph of this search from TorchScript, as each
            # worker decides the same way on the same model
            log.warning(
                "%s: the dynamo exporter failed (%s); this search exports with TorchScript", what, e
            )
            opset = profile.opset if profile.opset is None or profile.opset <= 20 else 20
            profile = profile.model_copy(update={"exporter": "torchscript", "opset": opset})
            self.export_record = {
                "exporter": "torchscript",
                "asked": "dynamo",
                "fallback_reason": str(e).splitlines()[0][:300],
            }
            try:
                self.baseline_onnx = self._export_baseline(profile, example, traced)
            except CandidateError as again:
                raise ModelError(
                    f"{what} cannot be exported to ONNX by either exporter (dynamo: {e}; "
                    f"torchscript: {again})"
                ) from None
        self._verify_export(what, traced)
        #: the export as the exporter writes it (the baseline, unless it is fused)
        self.plain_onnx = self.baseline_onnx
        if profile.generation is not None:
            self._plain_attention(profile, example)
        profile = self._fuse_baseline(profile, what)
        self.float_onnx = self.baseline_onnx  # the graph units are discovered on
        if packs(profile):  # measured as every candidate is: packed, its cache buffer shared
            self.baseline_onnx = self.scratch / "baseline-packed.onnx"
            self.export_record.update(finish_decoder(self.float_onnx, self.baseline_onnx))
        if setup.profile.float_precision == "fp16":
            self.baseline_onnx = to_float16(self.baseline_onnx, self.scratch / "baseline-fp16.onnx")
        self.ctx = SurgeryContext(
            example_inputs=example,
            input_names=self.data.input_names,
            calibration=self.data.calibration,
            profile=profile,  # with the exporter the baseline came from
            ignore=tuple(setup.config.model.ignore),
            classifier=classifier,
            baseline_onnx=self.float_onnx,
            min_rank=setup.config.space.lowrank.min_rank,
            prune_importance=setup.config.space.prune.importance,
            prune_ignore=tuple(setup.config.space.prune.ignore),
            recovery=setup.config.recovery,
            baseline_fusions=dict(self.export_record.get("fusions", {})),
        )

    def _check_fits(self, setup: Setup, what: str) -> None:
        """The task fits the search: the data's metric goes the way the quality objective
        does, and the profile's token length is one the model takes."""
        quality = setup.config.quality
        if self.data.direction != quality.direction:
            metric = self.data.metric if isinstance(self.data.metric, str) else "a callable"
            better = "lower" if self.data.direction == "minimize" else "higher"
            fits = [
                o.name for o in objectives.OBJECTIVES.values()
                if o.kind == "quality" and o.direction == self.data.direction
            ]  # fmt: skip
            raise ConfigError(
                f"objectives: the data's metric ({metric}) is {better}-is-better, but the "
                f"quality objective '{quality.name}' is {quality.direction}d; list "
                f"{' or '.join(repr(f) for f in fits)} in objectives instead"
            )
        profile = setup.profile
        longest = getattr(self.model, "max_positions", None)
        length, field = profile.sequence_length, "sequence_length"
        if profile.generation is not None:
            length = profile.generation.prompt_tokens + profile.generation.new_tokens
            field = "generation.prompt_tokens + new_tokens"
        if (
            longest
            and length
            and length > longest
            and any(is_token_input(v.shape[1:], v.dtype) for v in self.data.validation.values())
        ):
            raise ModelError(
                f"profile '{profile.name}' measures token inputs at {field} = {length}, but "
                f"{what} takes at most {longest} positions (config.max_position_embeddings); "
                f"give a profile file with {field} <= {longest} (tightfit profiles show "
                f"{profile.name} prints one to start from)"
            )

    def _export_baseline(
        self, profile: HardwareProfile, example: tuple[torch.Tensor, ...], traced: list[str]
    ) -> Path:
        path = self.scratch / "baseline.onnx"
        return export_for(profile, self.model, example, self.data.input_names, path, traced)

    def _plain_attention(self, profile: HardwareProfile, example: tuple[torch.Tensor, ...]) -> None:
        """A decoder's attention as the profile exports it is on record
        (``export_record["attention"]``: ``GroupQueryAttention``, ``exported`` or why the
        operator did not fit). Where it is the operator, the export as the exporter writes it
        is made too: the standard recipe starts from it and benchmarks measure against it."""
        attention = decoder_attention(self.model, attention_for(profile))
        self.export_record["attention"] = attention
        if attention.startswith("exported:"):
            log.info(
                "the decoder's attention stays as exported (%s)", attention[len("exported: ") :]
            )
        if attention == GROUP_QUERY_ATTENTION:
            plain = profile.model_copy(update={"graph_fusion": "off"})
            path = self.scratch / "plain.onnx"
            self.plain_onnx = export_for(plain, self.model, example, self.data.input_names, path)

    def _fuse_baseline(self, profile: HardwareProfile, what: str) -> HardwareProfile:
        """The baseline fused as the profile asks (``kernels.fusion``), checked against the
        export on validation inputs; the profile every candidate is then fused by. The fused
        operators' counts are on record (``export_record["fusions"]``). A fused graph that does
        not compute what the export computes is not used: the search runs unfused, with a
        warning and on record (``fusion_refused``)."""
        path = self.scratch / "baseline-fused.onnx"
        shutil.copyfile(self.baseline_onnx, path)
        inputs = {k: self.data.validation[k][:32] for k in self.data.input_names}
        fused = fuse_for(profile, path, inputs)
        if fused.refused:
            log.warning("%s: the fused graph is not used (%s)", what, fused.refused)
            self.export_record["fusion_refused"] = fused.refused
            return profile.model_copy(update={"graph_fusion": "off"})
        if fused.counts:
            self.baseline_onnx = path
            self.export_record["fusions"] = fused.counts
        return profile

    def _verify_export(self, what: str, traced: list[str]) -> None:
        """The exported baseline must compute what the model computes, on validation inputs:
        otherwise every candidate would be scored as a different model."""
        inputs = {k: self.data.validation[k] for k in self.data.input_names}
        try:
            mismatch = verify_export(self.model, self.baseline_onnx, inputs)
        except Exception as e:  # noqa: BLE001 - the model's own forward failing on the data
            raise ModelError(
                f"{what} cannot be checked against its ONNX export on validation inputs: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        if mismatch is None:
            return
        cause = (
            f"the tracer warned at {traced[0]}"
            if traced
            else "a forward() that depends on its input's values or shape"
        )
        raise ModelError(
            f"{what}: its ONNX export does not compute what the model computes: {mismatch}. "
            f"Likely cause: {cause}. Tracing records the branch the example inputs took; write "
            "forward() without Python control flow on tensor values (torch.where instead of if), "
            "or give a model whose behaviour does not depend on its input"
        )

    @functools.cached_property
    def subset(self) -> np.ndarray | None:
        """The validation samples staged evaluation scores first (None: staging is off)."""
        staged = self.setup.config.staged
        if not staged.enabled:
            return None
        n = len(self.data.targets)
        return validation_subset(n, staged.subset_fraction, staged.min_subset, seed=0)

    @functools.cached_property
    def layers(self) -> layer_table.LayerTable | None:
        """This process's per-layer latency table (None where it does not apply or is off)."""
        spec, profile = self.setup.config.latency, self.setup.profile
        if not (spec.layer_table and layer_table.applies(profile)):
            return None
        cache = LatencyCache(spec.cache_dir) if spec.cache else None
        return layer_table.LayerTable(profile, cache)

    def layer_features(self, onnx_bytes: bytes) -> dict[str, float]:
        """``layer_ms`` (the sum of the candidate's layer times on this host) and
        ``layers_timed`` (shapes timed for it now), or nothing where the table does not apply.
        """
        if self.layers is None:
            return {}
        try:
            found = layer_table.layer_models(onnx_bytes, self.measured_shapes)
            total, timed = self.layers.total_ms(found)
        except Exception as e:  # noqa: BLE001 - no prediction for this one: it gets measured
            log.warning("per-layer latency table: %s: %s", type(e).__name__, e)
            return {}
        return {"layer_ms": total, "layers_timed": float(timed)}

    @functools.cached_property
    def baseline_subset_accuracy(self) -> float:
        return evaluate_accuracy(self.baseline_onnx, self.data, subset=self.subset)

    def score(self, onnx_path: Path) -> tuple[float, str, dict[str, float]]:
        """(accuracy, stage, extra metrics) of an exported candidate: staged when the config
        says so."""
        if self.subset is None:
            accuracy, extras = evaluate_quality(onnx_path, self.data)
            return accuracy, "full", extras
        config = self.setup.config
        return staged_accuracy(
            onnx_path,
            self.data,
            self.subset,
            self.baseline_subset_accuracy,
            config.quality,
            config.constraints.limit(config.quality),
            config.staged.z,
        )

    def rebuild(self, candidate: Candidate) -> tuple[bytes, dict[str, Any]]:
        """``candidate`` applied again, as the search built it (compression is deterministic):
        its ONNX bytes and the kernels' report. For export and re-measurement."""
        with tempfile.TemporaryDirectory(prefix="rebuild-", dir=self.scratch) as out_dir:
            built = compress(self.model, candidate, self.ctx, Path(out_dir))
            return built.onnx_path.read_bytes(), built.report

    @functools.cached_property
    def measured_shapes(self) -> dict[str, tuple[int, ...]]:
        """The input shapes latency is measured at: the profile's batch (and sequence length)."""
        shapes, dtypes = self.input_spec()
        feed = input_feed(shapes, dtypes, self.setup.profile, seed=0)
        return {k: tuple(v.shape) for k, v in feed.items()}

    def input_spec(self) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
        shapes = {k: tuple(v.shape[1:]) for k, v in self.data.validation.items()}
        dtypes = {k: str(v.dtype) for k, v in self.data.validation.items()}
        return shapes, dtypes

    def reference(self, seed: int, reference_ms: float | None = None) -> MeasurementReference:
        """What candidates of this task are measured against (see MeasurementReference)."""
        shapes, dtypes = self.input_spec()
        return MeasurementReference(
            baseline_onnx=self.baseline_onnx.read_bytes(),
            input_shapes=shapes,
            input_dtypes=dtypes,
            reference_ms=reference_ms,
            seed=seed,
        )


@functools.lru_cache(maxsize=4)
def _workspace(setup_json: str) -> Workspace:
    return Workspace(Setup.model_validate_json(setup_json))


def workspace(setup: Setup) -> Workspace:
    return _workspace(setup.to_json())


def compress_and_score(setup: Setup, candidate: Candidate, subset_only: bool = False) -> StageOne:
    """Stage 1: apply ``candidate``, export, measure accuracy (ONNX Runtime) and size.

    ``subset_only`` (the sensitivity scan): accuracy on the staged-evaluation subset only, and
    no ONNX bytes returned (stage ``"subset"``).
    """
    t0 = time.perf_counter()
    ws = workspace(setup)
    if candidate.base_model != ws.model_id:
        raise CandidateError(
            f"candidate was made for base model {candidate.base_model}, but the model callable "
            f"now returns {ws.model_id}; the model or its weights changed"
        )
    with tempfile.TemporaryDirectory(prefix="trial-", dir=ws.scratch) as out_dir:
        result = compress(ws.model, candidate, ws.ctx, Path(out_dir))
        if subset_only:
            return StageOne(
                accuracy=evaluate_accuracy(result.onnx_path, ws.data, subset=ws.subset),
                size_mb=size_mb(result.onnx_path),
                onnx=b"",
                seconds=time.perf_counter() - t0,
                stage="subset",
            )
        accuracy, stage, extras = ws.score(result.onnx_path)
        onnx_bytes = result.onnx_path.read_bytes()
        return StageOne(
            accuracy=accuracy,
            size_mb=size_mb(result.onnx_path),
            onnx=onnx_bytes,
            report=_jsonable(result.report),
            seconds=time.perf_counter() - t0,
            signature=architecture_signature(onnx_bytes),
            features={
                **graph_features(onnx_bytes, ws.measured_shapes),
                **ws.layer_features(onnx_bytes),
            },
            layer_host=layer_table.host() if ws.layers is not None else "",
            stage=stage,
            metrics=extras,
        )


def measure(
    profile: HardwareProfile, onnx_bytes: bytes, reference: MeasurementReference
) -> LatencyResult:
    """Stage 2: latency of ``onnx_bytes`` against the baseline under ``profile``."""
    return measure_many(profile, [onnx_bytes], reference)[0]


def measure_many(
    profile: HardwareProfile, onnx_bytes: Sequence[bytes], reference: MeasurementReference
) -> list[LatencyResult]:
    """``measure`` for several candidates at once, in the same rounds (``measure_jointly``)."""
    r = reference
    with tempfile.TemporaryDirectory(prefix="tightfit-lat-") as tmp:
        paths = []
        for i, b in enumerate(onnx_bytes):
            paths.append(Path(tmp) / f"candidate{i}.onnx")
            paths[-1].write_bytes(b)
        base = Path(tmp) / "baseline.onnx"
        base.write_bytes(r.baseline_onnx)
        feed = input_feed(r.input_shapes, r.input_dtypes, profile, r.seed)
        return measure_jointly(paths, base, profile, feed, r.reference_ms, seed=r.seed)


REFERENCE_REPEATS = 3


def measure_reference(profile: HardwareProfile, reference: MeasurementReference) -> LatencyResult:
    """The baseline's reference latency: the quietest of a few measurements of it.

    Every latency_ms of a search is a ratio times this number, so it must not be measured while
    something else runs (at start-up, Ray is still starting worker processes). Interference only
    ever adds time, so of ``REFERENCE_REPEATS`` measurements the one with the lowest median is
    the least disturbed. ``reference.reference_ms`` is not used (this measures it).
    """
    results = [
        measure(
            profile,
            reference.baseline_onnx,
            reference.model_copy(update={"reference_ms": None, "seed": reference.seed + i}),
        )
        for i in range(REFERENCE_REPEATS)
    ]
    return min(results, key=lambda r: r.baseline_median_ms)


def evaluate_candidate(
    setup: Setup, candidate: Candidate, baseline_ref_ms: float | None = None
) -> Evaluation:
    """Both stages in this process (what a Ray worker pair does), for tests and debugging."""
    ws = workspace(setup)
    one = compress_and_score(setup, candidate)
    latency = measure(setup.profile, one.onnx, ws.reference(candidate.seed, baseline_ref_ms))
    return Evaluation(
        accuracy=one.accuracy, size_mb=one.size_mb, latency=latency, report=one.report
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def calibration_model(
    profile: HardwareProfile, config: SearchConfig | None, scratch: Path
) -> tuple[Path, dict[str, np.ndarray], str]:
    """What ``tightfit profiles calibrate`` times: the baseline of ``config``'s search, or
    (no config) the digits example network with random weights, since latency needs no
    trained weights. Returns its ONNX file, an input feed for ``profile``, and what it is."""
    if config is not None:
        ws = workspace(Setup.of(config, profile, config.workdir_path))
        ref = ws.reference(seed=0)
        feed = input_feed(ref.input_shapes, ref.input_dtypes, profile, seed=0)
        return ws.baseline_onnx, feed, f"the baseline of search '{config.name}'"
    from tightfit.examples.digits import DigitsResNet

    torch.manual_seed(0)
    example = (torch.randn(2, 1, 16, 16),)
    model = export_onnx(DigitsResNet(48).eval(), example, ("image",), scratch / "m.onnx")
    if profile.float_precision == "fp16":
        model = to_float16(model, scratch / "m16.onnx")
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, profile, seed=0)
    return model, feed, "the digits example network (random weights)"
