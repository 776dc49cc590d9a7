"""The HardwareProfile record: a named target and the protocol that measures latency on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tightfit._naming import unknown_name_message
from tightfit._records import Record, describe_validation_error
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles._runtimes import RUNTIMES

#: the opset each exporter writes when a profile names none (the dynamo exporter's own
#: translations are written for 18; the TorchScript exporter's tested default is 17)
DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}

Precision = Literal["fp32", "fp16", "int8", "int4"]


class MeasurementProtocol(Record):
    """How latency is measured: warm-up by time, then candidate and baseline interleaved.

    Each round runs the candidate and the baseline in random order, each for at least
    ``min_iters_per_block`` inferences and ``min_block_s`` seconds; the score is the median of
    the per-round ratios candidate/baseline, which cancels slow drifts of a shared machine.
    """

    warmup_s: float = Field(0.3, ge=0.0, description="warm-up per model, by time")
    sessions: int = Field(
        2,
        ge=1,
        le=8,
        description="runtime sessions opened per model; rounds take them in turn. Two sessions "
        "of one model differ by 1-3% on a CPU (memory placement), a fixed bias a single session "
        "cannot show: with several, the ratio averages it out and its interval includes it",
    )
    rounds: int = Field(12, ge=3, description="interleaved candidate/baseline rounds, at least")
    max_rounds: int = Field(
        40, ge=3, description="more rounds, up to this many, while the ratio's CI is too wide"
    )
    target_ci: float = Field(
        0.02,
        gt=0.0,
        description="stop adding rounds once the 95% CI half-width is this fraction of the ratio",
    )
    budget_s: float = Field(30.0, gt=0.0, description="stop adding rounds after this long")
    min_block_s: float = Field(0.05, gt=0.0, description="minimum time per model per round")
    min_iters_per_block: int = Field(5, ge=1)
    max_block_iters: int = Field(2000, ge=1)
    max_baseline_slowdown: float = Field(
        1.25,
        gt=1.0,
        description="a measurement whose baseline ran this much slower than its reference was disturbed: repeat it",
    )
    max_attempts: int = Field(3, ge=1, description="attempts at an undisturbed measurement")
    max_foreign_cpu: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="a round in which other processes (or the hypervisor: steal) took more "
        "than this share of the pinned CPUs' time was disturbed: it is dropped and measured "
        "again (CPU profiles on Linux; see tightfit.evaluators.contention)",
    )
    aa_tolerance: float = Field(
        0.05,
        gt=0.0,
        description="the search's A/A check (the baseline measured against itself) may read "
        "at most this far from 1.0 before the front is flagged as measured on a noisy machine",
    )
    pin_threads: bool = Field(
        True, description="pin the measuring threads to as many CPUs as they use (Linux)"
    )

    @model_validator(mode="after")
    def _max_rounds_at_least_rounds(self) -> MeasurementProtocol:
        if self.max_rounds < self.rounds:
            raise ValueError(
                f"max_rounds ({self.max_rounds}) must be at least rounds ({self.rounds})"
            )
        return self


class QuantizationSettings(Record):
    """int8 settings for ONNX Runtime static Q/DQ on this target."""

    activation_type: Literal["QUInt8", "QInt8", "auto"] = Field(
        "QUInt8",
        description="static int8 activations: QUInt8 (U8S8 with QInt8 weights, the x86 "
        "default), QInt8 (S8S8), or auto: a search builds uniform static int8 both ways, "
        "measures both on this profile once per study and keeps QInt8 only if it meets the "
        "accuracy constraint and is faster by more than measurement.target_ci (or QUInt8 "
        "misses the constraint; the study remembers the choice; a compression outside a "
        "search treats auto as QUInt8)",
    )
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    per_channel: bool = True
    # x86 without VNNI saturates in vpmaddubsw with full-range U8S8: use 7-bit weights there.
    reduce_range: bool | Literal["auto"] = "auto"
    calibrate_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    int8_format: Literal["static", "dynamic", "weight-only", "auto"] = Field(
        "static",
        description="int8 MatMul layers: static Q/DQ (activation ranges calibrated on the "
        "data), dynamic (activation ranges computed per inference; ONNX Runtime's "
        "MatMulInteger, often faster for transformers on CPU), weight-only (8-bit weights in "
        "blocks of int4_block_size along the input, MatMulNBits as 4-bit layers are; no "
        "activation ranges: the int8 of decoder LMs, whose activation outliers per-tensor "
        "ranges clip), or auto: a search builds uniform "
        "int8 both ways, measures both on this profile once per study and uses dynamic if it "
        "meets the accuracy constraint and is faster by more than measurement.target_ci (or "
        "static misses the constraint), else static (the study remembers the choice; a "
        "compression outside a search treats auto as static). Conv and Gemm layers are always "
        "static (ONNX Runtime has no dynamic integer Gemm)",
    )
    symmetric_activations: bool = Field(
        False, description="zero-point 0 for activations (TensorRT accepts only symmetric Q/DQ)"
    )
    int4_grid: Literal["symmetric", "minmax"] = Field(
        "symmetric",
        description="4-bit MatMulNBits weights: symmetric (round to nearest on a grid centred "
        "on zero, ONNX Runtime's quantizer and onnxruntime-genai's) or minmax (each block's "
        "own minimum and step, as llama.cpp's Q4_1 stores them; run as ONNX Runtime's fast "
        "symmetric kernel plus a small 8-bit block-offset product per layer, kernels.fusion."
        "unfold_float_zero_points)",
    )
    int4_block_size: Literal[16, 32, 64, 128] = Field(
        32,
        description="weights per 4-bit (and weight-only 8-bit) MatMulNBits scale, along the "
        "input: smaller blocks keep more accuracy and decode slower (measured on SmolLM2 in "
        "benchmarks/results/llm_int4_formats.md)",
    )

    @property
    def activations(self) -> str:
        """The activation type static int8 is built with (``auto`` before a search chose)."""
        return "QUInt8" if self.activation_type == "auto" else self.activation_type


class GenerationWorkload(Record):
    """Latency as a decoder language model is used: a prompt, then new tokens one at a time
    through a KV cache.

    Each timed inference is one greedy generation: the prefill (the prompt, with an empty
    cache), then ``new_tokens - 1`` decode steps, each feeding the previous step's cache. The
    graph is exported with the cache as inputs and outputs (``past_key_values.N.key`` /
    ``.value`` in, ``present.N.key`` / ``.value`` out). ``latency`` names what the objective
    is: the decode time per new token (what a reader of streamed text waits for) or the whole
    generation; prefill, decode per token and end to end are logged either way.
    """

    prompt_tokens: int = Field(128, ge=1, description="tokens in the prompt (the prefill)")
    new_tokens: int = Field(32, ge=2, description="tokens generated, the prefill's included")
    latency: Literal["decode_ms_per_token", "end_to_end_ms"] = Field(
        "decode_ms_per_token",
        description="what latency_ms is: the mean decode step (per new token after the first) "
        "or the whole generation (prefill and every decode step)",
    )


class HardwareProfile(Record):
    """A named deployment target: runtime, threads, shapes, precisions and measurement protocol.

    ``runtime`` is what runs the exported ONNX: ONNX Runtime (CPU or CUDA execution provider),
    TensorRT (an engine built from the ONNX), or ``torch-cuda`` (the ONNX converted to a PyTorch
    module and replayed as a CUDA graph: a GPU target verifiable where TensorRT is absent).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    runtime: str = Field("onnxruntime", description="a runtime of hardware_profiles.RUNTIMES")
    device: Literal["cpu", "cuda"] = "cpu"
    execution_provider: str = "CPUExecutionProvider"
    intra_op_threads: int = Field(1, ge=1)
    inter_op_threads: int = Field(1, ge=1)
    thread_spinning: bool = Field(
        False,
        description="ONNX Runtime's threads spin while they wait for work, as they do by "
        "default and in onnxruntime-genai's generator: faster where an inference is many small "
        "operators (a decode step), but a spinning thread holds its core from anything else "
        "on the machine; false: they sleep (the measurement's default)",
    )
    batch_size: int = Field(1, ge=1)
    sequence_length: int | None = Field(
        None,
        ge=1,
        description="length of token inputs (integer inputs with one axis per sample) when "
        "measuring latency; None: the data's",
    )
    input_shapes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="per-sample shapes (without batch) that override the data's, by input name",
    )
    generation: GenerationWorkload | None = Field(
        None,
        description="measure generation (a decoder LM: prefill, then decode through a KV "
        "cache) instead of one forward pass; None: one forward pass",
    )
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo",
        description="torch.onnx's exporter: dynamo (the supported one, through onnxscript; "
        "a model it cannot export falls back to torchscript, on record) or torchscript "
        "(dynamo=False, deprecated since torch 2.9); nodes map to modules the same way",
    )
    opset: int | None = Field(
        None,
        ge=14,
        le=21,
        description="ONNX opset of every export (the baseline's and each candidate's); None: "
        "18 with dynamo (18 and up), 17 with torchscript (which writes up to 20)",
    )
    graph_fusion: Literal["auto", "off"] = Field(
        "auto",
        description="auto: on ONNX Runtime's CPU provider, a transformer exported by dynamo is fused "
        "(onnxscript's ONNX Runtime fusions: Attention, SkipLayerNormalization, BiasGelu) "
        "before precision is applied, as a deployment would run it; a generation graph gets its "
        "RMS norms and rotary embeddings fused and, after precision, its sibling projections "
        "packed into one product; a graph with nothing to fuse and a TorchScript graph stay "
        "as exported. off: every graph "
        "as exported (the runtime still applies its own session optimizations)",
    )
    float_precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="precision of the baseline and of every layer not quantized"
    )
    precisions: list[Precision] = ["fp32", "int8"]  # pydantic copies defaults
    round_to: int = Field(8, ge=1, description="pruned channel counts and ranks are multiples")
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    measurement: MeasurementProtocol = Field(default_factory=MeasurementProtocol)
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources a measurement asks for (one slot per device)",
    )
    ray_labels: dict[str, str] = Field(
        default_factory=dict,
        description="node labels a measuring node must carry (Ray label selector), e.g. {hw: t4}",
    )
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs a measurement asks Ray for")
    calibration: dict[str, Any] | None = Field(
        None, description="written by 'tightfit profiles calibrate --save': the noise measured"
    )

    @field_validator("precisions")
    @classmethod
    def _no_duplicates(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        return v

    @field_validator("ray_resources")
    @classmethod
    def _custom_only(cls, v: dict[str, float]) -> dict[str, float]:
        for key in ("CPU", "GPU"):
            if key in v:
                raise ValueError(f"'{key}' is not a custom resource; use num_gpus for GPUs")
        for key, amount in v.items():
            if amount <= 0:
                raise ValueError(f"'{key}': {amount:g} must be > 0 (one slot per device: 1)")
        return v

    @property
    def dedicated(self) -> bool:
        """Measurements run on nodes set aside for them (a resource or label), not on these cores."""
        return bool(self.ray_resources or self.ray_labels)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(unknown_name_message("runtime", v, RUNTIMES))
        return v

    @property
    def export_opset(self) -> int:
        """The opset every graph is exported at."""
        return self.opset or DEFAULT_OPSET[self.exporter]

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        if self.opset is not None and self.exporter == "torchscript" and self.opset > 20:
            raise ValueError(
                f"opset {self.opset}: the torchscript exporter writes opset 20 at most; set "
                "exporter: dynamo for opset 21"
            )
        if self.generation is not None and (
            self.runtime != "onnxruntime" or self.execution_provider != "CPUExecutionProvider"
        ):
            raise ValueError(
                "generation: generation latency is measured on ONNX Runtime's CPU provider "
                "(runtime: onnxruntime, execution_provider: CPUExecutionProvider) for now"
            )
        if self.generation is not None and self.exporter != "dynamo":
            raise ValueError(
                "generation: a KV-cache graph is exported by the dynamo exporter only; set "
                "exporter: dynamo"
            )
        if self.opset is not None and self.exporter == "dynamo" and self.opset < 18:
            raise ValueError(f"opset {self.opset}: the dynamo exporter writes opset 18 or later")
        if self.float_precision not in self.precisions:
            raise ValueError(
                f"precisions must include float_precision '{self.float_precision}' "
                "(the uncompressed baseline)"
            )
        spec = RUNTIMES[self.runtime]
        gpu = spec.gpu or self.execution_provider.startswith(("CUDA", "Tensorrt"))
        if gpu and self.device != "cuda":
            raise ValueError(
                f"runtime '{self.runtime}' ({self.execution_provider}) needs device: cuda"
            )
        if self.quantization.int8_format != "static" and not spec.dynamic_int8:
            raise ValueError(
                f"quantization.int8_format '{self.quantization.int8_format}' needs runtime "
                f"onnxruntime (dynamic int8 is ONNX Runtime's MatMulInteger; {self.runtime} "
                "runs static Q/DQ only): set it to static"
            )
        if not spec.quantized and ("int8" in self.precisions or "int4" in self.precisions):
            raise ValueError(
                f"runtime '{self.runtime}' runs float graphs only: remove int8/int4 from precisions"
            )
        return self

    def with_int8_format(
        self, int8_format: str, activation_type: str | None = None
    ) -> HardwareProfile:
        """This profile with ``quantization.int8_format`` (and ``activation_type``, where
        given) set: ``auto`` resolved by a search."""
        update = {"int8_format": int8_format}
        if activation_type is not None:
            update["activation_type"] = activation_type
        q = self.quantization.model_copy(update=update)
        return self.model_copy(update={"quantization": q})

    @property
    def bits_allowed(self) -> list[int]:
        """Per-layer bit-widths: 32 (the float precision, fp32 or fp16), and 8 / 4 where allowed."""
        table = {"int8": 8, "int4": 4}
        return [32, *sorted((table[p] for p in self.precisions if p in table), reverse=True)]

    @property
    def is_gpu(self) -> bool:
        return self.device == "cuda"

    @classmethod
    def from_yaml(cls, path: str | Path) -> HardwareProfile:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read hardware profile ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_where(e)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a hardware profile must be a mapping of fields")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(describe_validation_error(str(path), e, root=cls)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or "syntax error"
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)
