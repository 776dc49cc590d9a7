"""The model-family conformance suite: every kernel on every family of ``tests/zoo.py`` either
gives a candidate that exports, runs in ONNX Runtime, matches its torch model and is measured,
or is refused with a reason when the space is discovered. Tiny configs, random weights, no
download. ``benchmarks/zoo.py`` runs the same families at real sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests import zoo
from tightfit.evaluators import measure_jointly
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels import SurgeryContext, export_onnx
from tightfit.kernels._heads import find_attention, prune_heads, refused_attention
from tightfit.kernels.lowrank import factorize

pytest.importorskip("transformers")

#: Families whose attention heads prune, and the layout that reads them.
HEADS = {
    "bert": "bert",
    "roberta": "bert",
    "mobilevit": "bert",
    "distilbert": "lin",
    "llama": "proj",
    "qwen2": "proj",
    "vit": "proj",
    "deit": "proj",
    "user_vit": "fused",
}
#: Families with parts refused up front, and a word of the reason.
REFUSED = {"gpt2": "Conv1D", "swin": "relative_position_bias"}
FLOAT_TOLERANCE = 1e-4  # max |onnx - torch| / max |torch| for pruning and low rank
QUANTIZED_TOLERANCE = 0.5  # 1 - median cosine (onnx int8/4-bit vs the float torch model)


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_every_kernel_on_every_family_runs_matches_or_is_refused_up_front(
    name: str, fast_profile: HardwareProfile, tmp_path: Path
) -> None:
    profile = fast_profile.model_copy(update={"exporter": "dynamo"})  # the default exporter
    c = zoo.conform(zoo.FAMILIES[name], "tiny", profile, tmp_path)
    failed = {case: o.why for case, o in c.outcomes.items() if o.status == "failed"}
    assert not failed, failed  # a crash or a mid-search forward failure is a defect
    for case, o in c.outcomes.items():
        if o.status == "ok":
            quantized = case in ("int8", "4-bit")
            assert o.error < (QUANTIZED_TOLERANCE if quantized else FLOAT_TOLERANCE), (case, o)
            # a fused baseline: each candidate is fused too, or says why not (kernels.fusion)
            assert not c.fusions or {"fusions", "fusion_refused"} & set(o.report), (case, o)
        elif o.status != "ok":
            assert o.why, case  # every kernel that does not apply says why
    ok = [case for case, o in c.outcomes.items() if o.status == "ok"]
    assert {"low rank", "int8"} <= set(ok)
    if name != "gpt2":
        assert {"prune 25%", "prune 50%"} <= set(ok)
    # a refused (path, knob) is never also a unit
    refused = {(r.path, r.knob) for r in c.refused}
    assert all(r.reason for r in c.refused)
    assert not refused & {(p, k) for p, k in c.unit_keys}
    if name in REFUSED:
        assert any(REFUSED[name] in r.reason for r in c.refused), c.refused
    layouts = {u.info.get("layout") for u in c.units if u.knob == "prune_ratio"} - {None}
    assert layouts == ({HEADS[name]} if name in HEADS else set()), layouts
    # measured: every candidate and the baseline in the same rounds, on the real runtime
    paths = [c.outcomes[case].onnx for case in ok]
    results = measure_jointly(paths, c.baseline_onnx, profile, c.feed_one)
    assert all(np.isfinite(r.median_ms) and r.median_ms > 0 for r in results)


class NoHeadAttribute(nn.Module):
    """Attention written by hand with its head count in the forward pass, not in an attribute:
    nothing to update after pruning, so its heads are refused up front."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            f(x).view(b, n, 4, d // 4).transpose(1, 2)
            for f in (self.q_proj, self.k_proj, self.v_proj)
        )
        y = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, n, d))


def test_attention_without_a_head_count_attribute_is_refused_with_the_reason() -> None:
    model = NoHeadAttribute()
    assert find_attention(model) == []
    assert "no head-count attribute" in refused_attention(model)[""]


def test_grouped_query_attention_prunes_whole_groups_and_stays_consistent() -> None:
    model = zoo.FAMILIES["llama"].model("tiny")
    (a, *_rest) = find_attention(model)
    assert (a.layout, a.heads, a.kv_heads, a.groups) == ("proj", 4, 2, 2)
    ids = torch.from_numpy(zoo.FAMILIES["llama"].sample("tiny", 2, 0)["input_ids"])
    kept = prune_heads(model, {a.path: 0.5})[a.path]
    assert len(kept) == 2 and kept[1] == kept[0] + 1  # the two query heads of one group
    module = model.get_submodule(a.path)
    assert module.q_proj.out_features == 2 * a.head_dim
    assert module.k_proj.out_features == module.v_proj.out_features == a.head_dim
    assert module.num_key_value_groups == 2  # query heads per key/value head: unchanged
    assert model.get_submodule(a.out).in_features == 2 * a.head_dim
    with torch.no_grad():
        assert model(ids).shape == (2, 16, zoo.VOCAB)  # input_ids alone, no mask


def test_hand_written_fused_attention_updates_its_head_count() -> None:
    model = zoo.FAMILIES["user_vit"].model("tiny")
    a = find_attention(model)[0]
    prune_heads(model, {a.path: 0.5})
    module = model.get_submodule(a.path)
    assert module.num_heads == 2 and module.qkv.out_features == 3 * 2 * module.head_dim
    x = torch.from_numpy(zoo.FAMILIES["user_vit"].sample("tiny", 2, 0)["pixel_values"])
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_a_factored_conv_keeps_what_model_code_reads_off_the_layer() -> None:
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    new = factorize(conv, 4)
    assert (new.stride, new.kernel_size, new.in_channels, new.out_channels) == (
        (2, 2),
        (3, 3),
        16,
        32,
    )
    assert new.weight.shape == conv.weight.shape and new.weight.dtype == conv.weight.dtype
    x = torch.randn(1, 16, 8, 8)
    assert new(x).shape == conv(x).shape


def test_a_unit_that_fails_its_strongest_level_is_refused_when_the_space_is_discovered(
    fast_profile: HardwareProfile, tmp_path: Path
) -> None:
    """The LM head of a decoder is its classifier: pruning it changes the output. Not told so,
    the space refuses it up front instead of failing trials on it."""
    from tightfit.config import SpaceSpec
    from tightfit.kernels import discover

    family = zoo.FAMILIES["llama"]
    model = family.model("tiny")
    data = family.sample("tiny", 8, 0)
    example = tuple(torch.from_numpy(v[:2]) for v in data.values())
    ctx = SurgeryContext(
        example_inputs=example,
        input_names=family.inputs,
        calibration=data,
        profile=fast_profile,
        baseline_onnx=export_onnx(
            model, example, family.inputs, tmp_path / "b.onnx", exporter=fast_profile.exporter
        ),
    )
    units, refused = discover(model, ctx, SpaceSpec())
    (head,) = [r for r in refused if r.path == "model.lm_head"]
    assert head.knob == "prune_ratio" and "output is" in head.reason
    assert "model.lm_head" not in {u.path for u in units if u.knob == "prune_ratio"}


def test_a_pool_whose_window_covers_its_input_exports_as_global_average_pool(tmp_path) -> None:
    """Hugging Face EfficientNet's pooler: AvgPool2d(1280, ceil_mode=True) on a 7x7 map. Left
    an AveragePool, its quantized form made every logit the bias (see kernels.export)."""
    import onnx

    from tightfit.evaluators import predict

    pooled = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.AvgPool2d(100, ceil_mode=True), nn.Flatten(), nn.Linear(8, 2)
    )
    local = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(72, 2))
    x = torch.randn(4, 3, 9, 9)
    for model, op in ((pooled, "GlobalAveragePool"), (local, "AveragePool")):
        path = export_onnx(model.eval(), (x[:1],), ["x"], tmp_path / f"{op}.onnx")
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert op in ops and not ({"GlobalAveragePool", "AveragePool"} - {op}) & ops
        with torch.no_grad():
            np.testing.assert_allclose(predict(path, {"x": x.numpy()}), model(x).numpy(), atol=1e-5)
