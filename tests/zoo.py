"""The model families users bring, as a registry: Hugging Face architectures built from small
configs with random weights (no download), and user-written modules in the shapes that break
naive surgery. ``tests/kernels/test_zoo.py`` runs every kernel on every family at the ``tiny``
size; ``benchmarks/zoo.py`` runs them at the ``real`` size (224² images, 128-token text).

A family builds an ``nn.Module`` whose forward takes the family's inputs as tensors (in the
order of :attr:`Family.inputs`) and returns one logits tensor, as tightfit expects of a user's
model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tightfit.task import HuggingFaceModel


@dataclass(frozen=True)
class Family:
    name: str
    group: str  # encoder, decoder, vision transformer, convnet, hybrid, user module
    build: Callable[[str], nn.Module]  # size -> model (random weights, seeded)
    inputs: tuple[str, ...]  # input names, in forward order
    sample: Callable[[str, int, int], dict[str, np.ndarray]]  # (size, n, seed) -> inputs

    def model(self, size: str = "tiny") -> nn.Module:
        """The family's model at ``size``, with BatchNorm statistics estimated on its own inputs
        (as a trained network's are): with the stored defaults, a deep random convnet's
        activations shrink layer by layer until every image gives the same logits."""
        from tightfit.kernels.recovery import recalibrate_batchnorm

        model = self.build(size)
        inputs = self.sample(size, 32, 99)
        recalibrate_batchnorm(model, tuple(torch.from_numpy(v) for v in inputs.values()))
        return model.eval()


def _images(side: dict[str, int]) -> Callable[[str, int, int], dict[str, np.ndarray]]:
    def sample(size: str, n: int, seed: int) -> dict[str, np.ndarray]:
        s = side[size]
        rng = np.random.default_rng(seed)
        # a per-image brightness, so that globally pooled features differ between images
        x = rng.standard_normal((n, 3, s, s)) + rng.standard_normal((n, 1, 1, 1))
        x = x.astype(np.float32)
        return {"pixel_values": x}

    return sample


IMAGE = {"tiny": 32, "real": 224}
TEXT = {"tiny": 16, "real": 128}
VOCAB = 1000


def _text(with_mask: bool) -> Callable[[str, int, int], dict[str, np.ndarray]]:
    def sample(size: str, n: int, seed: int) -> dict[str, np.ndarray]:
        ids = np.random.default_rng(seed).integers(5, VOCAB, size=(n, TEXT[size])).astype(np.int64)
        return (
            {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if with_mask
            else {"input_ids": ids}
        )

    return sample


def _rescale(model: nn.Module) -> None:
    """Variance-preserving random weights for every Linear and Conv. Some Hugging Face inits
    (zero classifiers, small stds through deep BatchNorm stacks) give logits of 1e-25 or 0,
    where no comparison of outputs means anything."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, std=fan_in**-0.5)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.02)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()  # weight 1, bias 0, running mean 0 and variance 1


def _hf(config_cls: str, model_cls: str, names: tuple[str, ...], tiny: dict, real: dict, **common):
    def build(size: str) -> nn.Module:
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, config_cls)(**common, **(tiny if size == "tiny" else real))
        config._attn_implementation = "eager"
        model = getattr(transformers, model_cls)(config)
        _rescale(model)
        return HuggingFaceModel(model.eval(), names, "logits")  # as model: {hf: ...} loads it

    return build


_TEXT_TINY = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2)
_TEXT_REAL = dict(
    hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6
)


# ---- user-written modules ----------------------------------------------------------------------


class HandAttention(nn.Module):
    """Attention written by hand, timm-style: one fused qkv Linear, reshapes by the module's own
    ``num_heads`` / ``head_dim`` attributes (the layout that broke a ViT's pruning)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(x)


class HandViT(nn.Module):
    """A small ViT written by hand: patch embedding, blocks of :class:`HandAttention` + MLP."""

    def __init__(self, side: int, patch: int, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (side // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(dim)
            block.attn = HandAttention(dim, heads)
            block.norm2 = nn.LayerNorm(dim)
            block.fc1 = nn.Linear(dim, 4 * dim)
            block.fc2 = nn.Linear(4 * dim, dim)
            self.blocks.append(block)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixel_values).flatten(2).transpose(1, 2) + self.pos
        for b in self.blocks:
            x = x + b.attn(b.norm1(x))
            x = x + b.fc2(nn.functional.gelu(b.fc1(b.norm2(x))))
        return self.head(self.norm(x).mean(1))


class SharedWeights(nn.Module):
    """One Linear applied twice (shared parameters), a residual with a projection, and grouped
    convolutions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=4)
        self.expand = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(width, 2 * width, 1, stride=2)  # the residual's projection
        self.shared = nn.Linear(2 * width, 2 * width)
        self.head = nn.Linear(2 * width, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(pixel_values))
        x = torch.relu(self.grouped(x)) + x
        x = torch.relu(self.expand(x)) + self.shortcut(x)
        x = x.mean((2, 3))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.shared(x))  # the same weights again
        return self.head(x)


def _user(cls: type[nn.Module], tiny: dict, real: dict) -> Callable[[str], nn.Module]:
    def build(size: str) -> nn.Module:
        torch.manual_seed(0)
        return cls(**(tiny if size == "tiny" else real)).eval()

    return build


TEXT_IN = ("input_ids", "attention_mask")
IMAGE_IN = ("pixel_values",)


def _family(
    name: str,
    group: str,
    arch: str,
    head: str,
    tiny: dict,
    real: dict,
    ids_only: bool = False,
    **common: Any,
) -> Family:
    """A Hugging Face family: ``<arch>Config`` and ``<arch><head>`` from transformers.
    ``ids_only``: a text model called with ``input_ids`` alone (as LLMs often are)."""
    inputs = IMAGE_IN if head == "ForImageClassification" else TEXT_IN
    inputs = ("input_ids",) if ids_only else inputs
    build = _hf(f"{arch}Config", f"{arch}{head}", inputs, tiny, real, **common)
    sample = _images(IMAGE) if inputs == IMAGE_IN else _text(not ids_only)
    return Family(name, group, build, inputs, sample)


_SEQ, _LM, _IMG = "ForSequenceClassification", "ForCausalLM", "ForImageClassification"
_VIT_TINY = dict(_TEXT_TINY, image_size=32, patch_size=8, num_labels=10)
_VIT_REAL = dict(_TEXT_REAL, image_size=224, patch_size=16, num_labels=10)
_GQA = dict(vocab_size=VOCAB, use_cache=False)

# fmt: off
FAMILIES: dict[str, Family] = {f.name: f for f in [
    _family("bert", "encoder", "Bert", _SEQ, _TEXT_TINY, _TEXT_REAL, vocab_size=VOCAB,
            num_labels=4),
    _family("distilbert", "encoder", "DistilBert", _SEQ,
            dict(dim=64, n_heads=4, hidden_dim=128, n_layers=2),
            dict(dim=384, n_heads=12, hidden_dim=1536, n_layers=6), vocab_size=VOCAB,
            num_labels=4),
    _family("roberta", "encoder", "Roberta", _SEQ, _TEXT_TINY, _TEXT_REAL, vocab_size=VOCAB,
            num_labels=4),
    _family("gpt2", "decoder", "GPT2", "LMHeadModel", dict(n_embd=64, n_head=4, n_layer=2),
            dict(n_embd=384, n_head=12, n_layer=6), **_GQA),
    _family("llama", "decoder", "Llama", _LM, dict(_TEXT_TINY, num_key_value_heads=2),
            dict(_TEXT_REAL, num_key_value_heads=4), ids_only=True, **_GQA),
    _family("qwen2", "decoder", "Qwen2", _LM, dict(_TEXT_TINY, num_key_value_heads=2),
            dict(_TEXT_REAL, num_key_value_heads=4), **_GQA),
    _family("vit", "vision transformer", "ViT", _IMG, _VIT_TINY, _VIT_REAL),
    _family("deit", "vision transformer", "DeiT", _IMG, _VIT_TINY, _VIT_REAL),
    _family("swin", "vision transformer", "Swin", _IMG,
            dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                 window_size=4),
            dict(image_size=224, patch_size=4, embed_dim=48, depths=[2, 2, 2],
                 num_heads=[2, 4, 8], window_size=7), num_labels=10),
    _family("convnext", "convnet", "ConvNext", _IMG,
            dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
            dict(hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 4, 2]), num_labels=10,
            layer_scale_init_value=1.0),  # its default, 1e-6, hides every block's output
    _family("resnet", "convnet", "ResNet", _IMG,
            dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
            dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                 layer_type="basic"), num_labels=10),
    _family("mobilenet_v2", "convnet", "MobileNetV2", _IMG,
            dict(image_size=32, depth_multiplier=0.35), dict(image_size=224), num_labels=10),
    _family("efficientnet", "convnet", "EfficientNet", _IMG,
            dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320),
            dict(image_size=224, width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280), num_labels=10),
    _family("regnet", "convnet", "RegNet", _IMG,
            dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
            dict(embedding_size=32, hidden_sizes=[24, 56, 152, 368], depths=[1, 1, 4, 7],
                 groups_width=8), num_labels=10),
    _family("mobilevit", "hybrid", "MobileViT", _IMG,
            dict(image_size=32, hidden_sizes=[32, 48, 64],
                 neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2),
            dict(image_size=224, hidden_sizes=[64, 80, 96],
                 neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], num_attention_heads=4),
            num_labels=10),
    Family("user_vit", "user module", _user(HandViT, dict(side=32, patch=8, dim=64, heads=4,
           depth=2), dict(side=224, patch=16, dim=384, heads=6, depth=6)), IMAGE_IN,
           _images(IMAGE)),
    Family("user_shared", "user module", _user(SharedWeights, dict(width=16), dict(width=64)),
           IMAGE_IN, _images(IMAGE)),
]}
# fmt: on


# ---- conformance: every kernel on a family ------------------------------------------------------

#: The kernels the suite applies to each family, as uniform candidates.
CASES = {
    "prune 25%": {"prune_ratio": 0.25},
    "prune 50%": {"prune_ratio": 0.5},
    "low rank": {"rank_fraction": 0.25},
    "int8": {"bits": 8},
    "4-bit": {"bits": 4},
}
KNOB = {"prune_ratio": "prune_ratio", "rank_fraction": "rank", "bits": "bits"}


@dataclass
class Outcome:
    """One kernel on one family: ``ok`` (a candidate that exports, runs and matches torch),
    ``none`` (no unit: the kernel does not apply; ``why`` says from the refusals), or a
    failure (a defect)."""

    status: str  # ok | none | failed
    why: str = ""
    units: int = 0
    error: float = 0.0  # float kernels: max |onnx - torch| / max |torch|; quantized: 1 - median cos
    onnx: Any = None  # the candidate's ONNX path (ok only)
    report: dict[str, Any] = field(default_factory=dict)  # what the kernels did (ok only)


@dataclass
class Conformance:
    family: str
    counts: dict[str, int]  # units by knob
    units: list[Any]  # Unit
    refused: list[Any]  # Refusal
    outcomes: dict[str, Outcome]
    baseline_onnx: Any
    fusions: dict[str, int]  # the baseline's fused operators (kernels.fusion)
    feed: dict[str, np.ndarray]
    ctx: Any

    @property
    def feed_one(self) -> dict[str, np.ndarray]:
        """One sample of the inputs: what latency is measured on (batch 1)."""
        return {k: v[:1] for k, v in self.feed.items()}

    @property
    def unit_keys(self) -> set[tuple[str, str]]:
        return {(u.path, u.knob) for u in self.units}


def _compare(got: np.ndarray, want: np.ndarray, quantized: bool) -> float:
    got, want = got.reshape(len(got), -1), want.reshape(len(want), -1)
    if quantized:
        cos = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        return float(1 - np.median(cos))
    return float(np.abs(got - want).max() / np.abs(want).max())


def conform(
    family: Family,
    size: str,
    profile: Any,
    tmp: Any,
    n: int = 24,
    cases: dict[str, dict[str, float]] = CASES,
) -> Conformance:
    """Discover ``family``'s space and apply every case of ``cases`` as a uniform candidate:
    export, run in ONNX Runtime, compare with the compressed torch model."""
    from pathlib import Path

    from tightfit.config import SpaceSpec
    from tightfit.evaluators import predict
    from tightfit.kernels import SurgeryContext, compress, discover, export_onnx
    from tightfit.kernels.fusion import fuse_for
    from tightfit.spaces import CompressionSpace

    tmp = Path(tmp)
    model = family.model(size)
    data = family.sample(size, n, 0)
    example = tuple(torch.from_numpy(v[:2]) for v in data.values())
    baseline = export_onnx(
        model, example, family.inputs, tmp / "baseline.onnx", exporter=profile.exporter
    )
    fusions = fuse_for(profile, baseline, data).counts  # in place, as the workspace fuses it
    ctx = SurgeryContext(
        example_inputs=example,
        input_names=family.inputs,
        calibration=data,
        profile=profile,
        baseline_onnx=baseline,
        baseline_fusions=fusions,  # int8 and 4-bit cases start from the fused baseline
    )
    space_spec = SpaceSpec(prune={"ratios": [0.0, 0.25, 0.5]}, quantize={"bits": [32, 8, 4]})
    units, refused = discover(model, ctx, space_spec)
    space = CompressionSpace(units, family.name)
    counts = dict(Counter(u.knob for u in units))
    outcomes = {}
    for case, target in cases.items():
        candidate = space.uniform(**target)  # type: ignore[arg-type]
        whys = []
        for arg, value in target.items():
            knob = KNOB[arg]
            if candidate.plan_for(knob):
                continue
            offered = [u for u in units if u.knob == knob]
            reasons = list(dict.fromkeys(r.reason for r in refused if r.knob in ("*", knob)))
            if offered:
                whys.append(f"no {knob} unit offers {value}")
            else:
                whys.append("; ".join(reasons[:2]) if reasons else f"no {knob} unit in this family")
        if whys:
            outcomes[case] = Outcome("none", "; ".join(whys))
            continue
        plan = candidate.to_params()
        try:
            out = compress(model, candidate, ctx, tmp / case.replace(" ", "_").replace("%", ""))
            got = predict(out.onnx_path, data)
            with torch.no_grad():
                want = out.model(*(torch.from_numpy(v) for v in data.values())).numpy()
            error = _compare(got, want, quantized="bits" in target)
            outcomes[case] = Outcome(
                "ok", units=len(plan), error=error, onnx=out.onnx_path, report=out.report
            )
        except Exception as e:  # the suite reports it; the test fails on it
            outcomes[case] = Outcome("failed", f"{type(e).__name__}: {e}"[:300], len(plan))
    return Conformance(family.name, counts, units, refused, outcomes, baseline, fusions, data, ctx)
