"""Dropping whole decoder blocks: the kept blocks compute what a model built without the
dropped ones computes, keep their module paths (other kernels' plans still reach them), and
fill a KV cache of one entry per kept block."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests import models
from tests.conftest import make_ctx
from tests.helpers import search_config
from tightfit.config import CallableSpec, ModelSpec, SpaceSpec
from tightfit.evaluators import predict
from tightfit.exceptions import CandidateError
from tightfit.kernels import compress, discover_units, get_kernel
from tightfit.kernels._pipeline import _probe_fails
from tightfit.search import _seeding
from tightfit.search._driver import _knobs_text
from tightfit.spaces import Candidate, CompressionSpace
from tightfit.task import load_data, load_model

transformers = pytest.importorskip("transformers")
DEPTH = {"kernels": {"depth": {"enabled": True}}, "lowrank": {"enabled": False}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.llama_folder(tmp_path_factory.mktemp("hf") / "llama", layers=3)


def _llama(folder: Path) -> torch.nn.Module:
    return load_model(ModelSpec(hf=str(folder)), input_names=["input_ids"])


def test_units_are_blocks_and_off_unless_asked(folder: Path, fast_profile, tmp_path) -> None:
    model = _llama(folder)
    data = load_data(CallableSpec(callable="tests.models:next_token_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier=None)
    assert not [u for u in discover_units(model, ctx, SpaceSpec()) if u.knob == "drop"]
    drops = [
        u for u in discover_units(model, ctx, SpaceSpec.model_validate(DEPTH)) if u.knob == "drop"
    ]
    assert [u.path for u in drops] == [f"model.model.layers.{i}" for i in range(3)]
    assert all(u.choices == (False, True) for u in drops)
    # discovery probes the blocks together (one export, not one per block): all but the first
    depth = get_kernel("depth")
    assert list(depth.strongest(drops).values()) == [False, True, True]
    assert _probe_fails(model, depth, drops, ctx, tmp_path) is None


def test_a_dropped_block_leaves_the_model_without_it(folder: Path, fast_profile, tmp_path) -> None:
    model = _llama(folder)
    data = load_data(CallableSpec(callable="tests.models:next_token_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier=None)
    units = discover_units(model, ctx, SpaceSpec.model_validate(DEPTH))
    params = {u.param_name: u.path.endswith(".1") for u in units if u.knob == "drop"}
    params.update({u.param_name: 8 for u in units if u.knob == "bits"})  # int8 everywhere
    out = compress(model, Candidate.from_params("m", params), ctx, tmp_path / "c")
    assert out.report["depth"] == {"dropped": ["model.model.layers.1"], "kept": 2}
    # the reference: transformers' own 2-block Llama with blocks 0 and 2's weights
    two = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    del two.model.layers[1]
    two.config.num_hidden_layers = 2
    for slot, layer in enumerate(two.model.layers):
        layer.self_attn.layer_idx = slot
    ids = data.validation["input_ids"][:8]
    with torch.no_grad():
        expected = two(input_ids=torch.from_numpy(ids)).logits.numpy()
        got = out.model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # block 2 kept its path: int8 reached its nodes in the graph (every planned layer engaged)
    assert out.report["quantize"]["int8_engaged"] == 1.0
    assert "model.model.layers.2" in dict(out.model.named_modules())
    np.testing.assert_allclose(predict(out.onnx_path, {"input_ids": ids}), got, atol=0.5)
    with pytest.raises(CandidateError, match="every block"):
        every = {u.param_name: True for u in units if u.knob == "drop"}
        compress(_llama(folder), Candidate.from_params("m", every), ctx, tmp_path / "all")


def test_the_cache_has_one_entry_per_kept_block(folder: Path, tmp_path) -> None:
    from tightfit._ort import cache_layout
    from tightfit.evaluators.runtimes import open_runner
    from tightfit.hardware_profiles import get_profile

    profile = get_profile("cpu-ort-llm")
    model = _llama(folder)
    data = load_data(CallableSpec(callable="tests.models:next_token_data"))
    ctx = make_ctx(model, data, profile, tmp_path, classifier=None)
    units = discover_units(
        model, ctx, SpaceSpec.model_validate({**DEPTH, "quantize": {"enabled": False}})
    )
    params = {u.param_name: u.path.endswith(".0") for u in units if u.knob == "drop"}
    out = compress(model, Candidate.from_params("m", params), ctx, tmp_path / "c")
    assert len(cache_layout(out.onnx_path)) == 2 * 2  # key and value of 2 kept blocks
    prompt = data.validation["input_ids"][:1, :6]
    runner = open_runner(out.onnx_path, profile, {"input_ids": prompt})
    runner.steps = 5  # type: ignore[attr-defined]
    _, _, tokens = runner.generate()  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = out.model.model.generate(
            torch.from_numpy(prompt), max_new_tokens=6, do_sample=False,
            attention_mask=torch.ones_like(torch.from_numpy(prompt)),
        )  # fmt: skip
    assert tokens.tolist() == reference[:, 6:].tolist()


def test_seeds_drop_evenly_spaced_blocks_with_int8(folder: Path, fast_profile, tmp_path) -> None:
    model = _llama(folder)
    data = load_data(CallableSpec(callable="tests.models:next_token_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier=None)
    space = CompressionSpace(discover_units(model, ctx, SpaceSpec.model_validate(DEPTH)), "m")
    config = search_config(tmp_path / "w", seeds={"global_magnitude": 0})
    ws = SimpleNamespace(ctx=ctx)  # what plan reads of a workspace without global magnitude
    planned = [c for kind, c in _seeding.plan(config, space, ws, None) if kind == "depth"]  # type: ignore[arg-type]
    # 3 blocks: a sixth rounds to none (no seed), a third is the middle block
    assert len(planned) == 1
    values = space.values_of(planned[0])
    assert [p for p, v in values.items() if p.endswith(".drop") and v] == [
        "model.model.layers.1.drop"
    ]
    bits = {p: v for p, v in values.items() if p.endswith(".bits")}
    assert {v for p, v in bits.items() if ".layers.1." not in p} == {8}  # every kept layer
    assert {v for p, v in bits.items() if ".layers.1." in p} == {32}  # moot: left out
    assert planned[0].summary()["n_dropped_blocks"] == 1  # MLflow's summary.* params
    assert _knobs_text(planned[0]).startswith("drop 1 block, int8 ")
    off = search_config(tmp_path / "w", seeds={"global_magnitude": 0, "depth": 0})
    assert not [k for k, _ in _seeding.plan(off, space, ws, None) if k == "depth"]  # type: ignore[arg-type]
