"""A generation profile's graph: one step of a causal LM with its KV cache, exported by the
dynamo exporter, run in ONNX Runtime as a prefill and decode steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError

from tests import models
from tightfit._ort import MASK, cache_layout, predict, shares_cache_buffer
from tightfit.config import ModelSpec
from tightfit.evaluators.runtimes import open_runner
from tightfit.exceptions import CandidateError
from tightfit.hardware_profiles import HardwareProfile, get_profile
from tightfit.kernels.export import (
    export_for,
    generation_names,
    nodes_by_module,
    verify_export,
)
from tightfit.task import load_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    folder = models.llama_folder(tmp_path_factory.mktemp("hf") / "llama", layers=3)
    return load_model(ModelSpec(hf=str(folder)), input_names=["input_ids"])


@pytest.fixture(scope="module")
def profile() -> HardwareProfile:
    base = get_profile("cpu-ort-llm")
    return base.model_copy(update={"generation": base.generation.model_copy(  # type: ignore[union-attr]
        update={"prompt_tokens": 6, "new_tokens": 8})})  # fmt: skip


def test_the_graph_takes_and_returns_the_cache_and_scores_as_the_model(
    llama: torch.nn.Module, profile: HardwareProfile, tmp_path: Path
) -> None:
    ids = np.random.default_rng(0).integers(0, 128, size=(4, 12)).astype(np.int64)
    path = export_for(
        profile, llama, (torch.from_numpy(ids[:1]),), ["input_ids"], tmp_path / "g.onnx"
    )
    inputs, outputs = generation_names(3)
    assert list(cache_layout(path)) == inputs[1:]
    assert set(cache_layout(path).values()) == {(2, 8)}  # 2 kv heads of 8
    assert [o.name for o in graph_of(path).graph.output] == outputs
    # whole sequences with an empty cache: the plain forward's logits
    assert verify_export(llama, path, {"input_ids": ids}) is None
    with torch.no_grad():
        expected = llama(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(predict(path, {"input_ids": ids}), expected, atol=1e-4)
    # nodes are named after the modules as in a plain export: per-layer plans reach them
    plain = export_for(
        get_profile("cpu-ort"), llama, (torch.from_numpy(ids),), ["input_ids"], tmp_path / "p.onnx"
    )
    owners = {m for m, nodes in nodes_by_module(graph_of(path)).items() if m.endswith("_proj")}
    assert owners == {m for m in nodes_by_module(graph_of(plain)) if m.endswith("_proj")}
    assert "model.model.layers.2.self_attn.k_proj" in owners and len(owners) == 3 * 7


def test_attention_is_one_group_query_attention_per_layer_and_decodes_as_the_export(
    profile: HardwareProfile, tmp_path: Path
) -> None:
    """The fusing generation profile writes each layer's attention as ONNX Runtime's
    GroupQueryAttention, with the cache's concatenation and the rotary embedding inside it
    (heads of 16): a batch of two prompts, prefilled and then decoded token by token through
    the returned cache, gives the plain export's logits and cache at every step, at every
    cache length."""
    from tightfit.kernels.export import attention_for, decoder_attention

    folder = models.llama_folder(tmp_path / "llama16", layers=3, hidden=64)
    llama = load_model(ModelSpec(hf=str(folder)), input_names=["input_ids"])

    plain_profile = profile.model_copy(update={"graph_fusion": "off"})
    assert attention_for(profile) == "GroupQueryAttention"
    assert attention_for(plain_profile) == "exported"
    assert decoder_attention(llama, "GroupQueryAttention") == "GroupQueryAttention"
    ids = np.random.default_rng(3).integers(0, 128, size=(2, 9)).astype(np.int64)
    example = (torch.from_numpy(ids[:1]),)
    gqa = export_for(profile, llama, example, ["input_ids"], tmp_path / "gqa.onnx")
    plain = export_for(plain_profile, llama, example, ["input_ids"], tmp_path / "plain.onnx")
    ops = [n.op_type for n in graph_of(gqa).graph.node]
    assert ops.count("GroupQueryAttention") == 3
    assert "Transpose" not in ops and "Cos" not in ops  # rotated inside the operator
    for node in graph_of(gqa).graph.node:
        if node.op_type == "GroupQueryAttention":
            attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
            assert attrs["do_rotary"] == 1 and attrs["rotary_interleaved"] == 0
    assert "GroupQueryAttention" not in [n.op_type for n in graph_of(plain).graph.node]
    # the operator's output count and the cache's, and no Expand of the cache (repeat_kv)
    assert ops.count("Expand") < [n.op_type for n in graph_of(plain).graph.node].count("Expand")

    import onnxruntime as ort

    from tightfit.kernels.fusion import finish_decoder, pack_siblings

    # packed, the operator reads the q/k/v product whole (no Split, no Reshapes), as the
    # builder feeds it
    assert pack_siblings(gqa, tmp_path / "packed.onnx") == 2 * 3  # qkv and gate+up per block
    packed = graph_of(tmp_path / "packed.onnx").graph
    assert all(
        n.input[1] == n.input[2] == "" and "packed" in n.input[0]
        for n in packed.node
        if n.op_type == "GroupQueryAttention"
    )
    assert [n.op_type for n in packed.node].count("Split") == 3  # gate+up only
    # and its output goes to the output projection as it is (the model's reshape is skipped)
    assert "Reshape" not in [n.op_type for n in packed.node]
    paths = (tmp_path / "packed.onnx", gqa, plain)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    inputs, _ = generation_names(3)
    caches = [{n: np.zeros((2, 2, 0, 16), np.float32) for n in inputs[1:]} for _ in sessions]
    # prefill, decode steps, then two tokens at once for the first row (the operator takes
    # several new tokens after a cache at batch 1 only)
    for rows, start, stop in ((2, 0, 5), (2, 5, 6), (2, 6, 7), (1, 7, 9)):
        outs = [
            s.run(
                None, {"input_ids": ids[:rows, start:stop], **{k: v[:rows] for k, v in c.items()}}
            )
            for s, c in zip(sessions, caches, strict=True)
        ]
        for got in outs[:2]:
            for a, b in zip(got, outs[-1], strict=True):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, atol=1e-5)
        caches = [dict(zip(inputs[1:], out[1:], strict=True)) for out in outs]
    assert caches[0][inputs[1]].shape == (1, 2, 9, 16)
    # with the lengths from an attention mask, one buffer per cache tensor is past and present:
    # greedy decoding of both prompts through it gives the plain export's tokens, and again
    # from the same buffers (what an earlier generation left past the prompt is ignored)
    record = finish_decoder(gqa, tmp_path / "shared.onnx")
    assert record == {"packed_matmuls": 2 * 3, "cache_buffer": "shared"}
    assert MASK in [i.name for i in graph_of(tmp_path / "shared.onnx").graph.input]
    assert MASK not in [i.name for i in packed.input]
    # operators whose lengths do not come from the mask (here a constant) cannot share it
    broken = graph_of(tmp_path / "shared.onnx")
    broken.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(2, np.int32), "fixed"))
    assert shares_cache_buffer(broken.graph)
    next(n for n in broken.graph.node if n.op_type == "GroupQueryAttention").input[5] = "fixed"
    assert not shares_cache_buffer(broken.graph)
    runners = [
        open_runner(p, profile, {"input_ids": ids[:, :5]})
        for p in (tmp_path / "shared.onnx", plain)
    ]
    assert [r.cache_buffer for r in runners] == ["shared", "copied"]  # type: ignore[attr-defined]
    want_tokens = runners[1].generate()[2]  # type: ignore[attr-defined]
    for _ in range(2):
        np.testing.assert_array_equal(runners[0].generate()[2], want_tokens)  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        predict(tmp_path / "shared.onnx", {"input_ids": ids}),
        predict(plain, {"input_ids": ids}), atol=1e-5,
    )  # fmt: skip
    # run eagerly under the same attention (the operator's torch reference, rotating the query
    # and key itself), a step after a cache gives the plain forward's logits too
    from tightfit.task import _attention

    full = torch.from_numpy(ids[:1])
    with torch.no_grad():
        want = llama(full).numpy()
        with _attention.group_query_attention(llama.model), llama.generation_step():
            _, *cache = llama(full[:, :6], *[torch.zeros((1, 2, 0, 16)) for _ in inputs[1:]])
            logits, *_ = llama(full[:, 6:], *cache)
    np.testing.assert_allclose(logits.numpy(), want[:, 6:], atol=1e-5)


def test_attention_that_does_not_fit_the_operator_stays_as_exported_and_says_why(
    tmp_path: Path,
) -> None:
    """A sliding window has no place in GroupQueryAttention: such a model's graph keeps its
    attention as exported, and the reason is what the workspace records."""
    import transformers

    from tightfit.kernels.export import decoder_attention

    config = transformers.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
    )  # fmt: skip
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path / "m")
    model = load_model(ModelSpec(hf=str(tmp_path / "m")), input_names=["input_ids"])
    why = decoder_attention(model, "GroupQueryAttention")
    assert why.startswith("exported: ") and "sliding_window" in why
    base = get_profile("cpu-ort-llm")
    path = export_for(base, model, (torch.ones((1, 4), dtype=torch.long),), ["input_ids"],
                      tmp_path / "g.onnx")  # fmt: skip
    assert "GroupQueryAttention" not in {n.op_type for n in graph_of(path).graph.node}


def graph_of(path: Path):  # type: ignore[no-untyped-def]
    import onnx

    return onnx.load(str(path))


def test_greedy_generation_through_the_cache_matches_transformers(
    llama: torch.nn.Module, profile: HardwareProfile, tmp_path: Path
) -> None:
    prompt = np.random.default_rng(1).integers(0, 128, size=(1, 6)).astype(np.int64)
    path = export_for(
        profile, llama, (torch.from_numpy(prompt),), ["input_ids"], tmp_path / "g.onnx"
    )
    runner = open_runner(path, profile, {"input_ids": prompt})
    prefill_ms, decode_ms, tokens = runner.generate()  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = llama.model.generate(
            torch.from_numpy(prompt), max_new_tokens=8, do_sample=False,
            attention_mask=torch.ones_like(torch.from_numpy(prompt)),
        )  # fmt: skip
    assert tokens.tolist() == reference[:, 6:].tolist()
    assert prefill_ms > 0 and decode_ms > 0
    times = runner.block(3)
    assert len(times) == 3
    phases = runner.phases  # type: ignore[attr-defined]
    assert list(times) == phases["decode_ms_per_token"]
    assert all(len(v) == 3 for v in phases.values())
    # decode per token is the decode steps' time over their count
    for p, d, e in zip(
        phases["prefill_ms"], phases["decode_ms_per_token"], phases["end_to_end_ms"], strict=True
    ):
        assert e == pytest.approx(p + 7 * d)


def test_a_generation_profile_needs_a_causal_lm_and_the_dynamo_exporter(
    profile: HardwareProfile, tmp_path: Path
) -> None:
    with pytest.raises(CandidateError, match="causal language model"):
        export_for(
            profile,
            models.tiny_resnet(),
            (torch.zeros(1, 1, 8, 8),),
            ["image"],
            tmp_path / "m.onnx",
        )
    with pytest.raises(ValidationError, match="exporter: dynamo"):
        HardwareProfile.model_validate(profile.model_dump() | {"exporter": "torchscript"})


def test_a_tied_head_is_offered_4_bits_and_runs_them(
    profile: HardwareProfile, tmp_path: Path
) -> None:
    """SmolLM2's head is its embedding matrix: the exporter leaves it a Transpose of the
    embedding (too large to fold, and shared with the Gather), which no quantizer takes. A
    vocabulary of 512 x 32 is past the exporter's folding limit, as SmolLM2's is."""
    import onnx

    from tightfit.config import SpaceSpec
    from tightfit.kernels import SurgeryContext
    from tightfit.kernels.quantization import Quantization
    from tightfit.kernels.recipe import build_recipe

    folder = models.llama_folder(tmp_path / "hf", vocab=512, tied=True)
    llama = load_model(ModelSpec(hf=str(folder)), input_names=["input_ids"])
    ids = np.random.default_rng(0).integers(0, 512, size=(8, 12)).astype(np.int64)
    path = export_for(
        profile, llama, (torch.from_numpy(ids[:1]),), ["input_ids"], tmp_path / "g.onnx"
    )
    head = next(n for n in graph_of(path).graph.node if n.name.endswith("lm_head/MatMul"))
    producers = {o: n.op_type for n in graph_of(path).graph.node for o in n.output}
    assert producers.get(head.input[1]) == "Transpose"  # the case: not a constant weight
    ctx = SurgeryContext(
        example_inputs=(torch.from_numpy(ids[:1]),), input_names=("input_ids",),
        calibration={"input_ids": ids}, profile=profile, baseline_onnx=path,
    )  # fmt: skip
    kernel = Quantization()
    units = {u.path: u for u in kernel.units(llama, ctx, SpaceSpec(quantize={"bits": [32, 4]}))}
    assert units["model.lm_head"].choices == (32, 4)
    report = kernel.apply_onnx(path, tmp_path / "q.onnx", {"model.lm_head": 4}, ctx)
    assert report["int4_nodes"] == 1 and report["int4_engaged"] == 1.0
    ops = {n.name: n.op_type for n in graph_of(tmp_path / "q.onnx").graph.node}
    assert ops[head.name + "_Q4"] == "MatMulNBits"
    logits = predict(tmp_path / "q.onnx", {"input_ids": ids})
    with torch.no_grad():
        expected = llama(torch.from_numpy(ids)).numpy()
    assert np.abs(logits - expected).max() < 0.1 * np.abs(expected).max()  # 4-bit, not float
    assert np.abs(logits - expected).max() > 0
    # the embedding reads the head's 4-bit table (one copy, as the source model has one)
    assert report["tied_embedding_shared"] == 1
    _assert_embedding_reads_the_head(tmp_path / "q.onnx", head.name + "_Q4", vocab=512, hidden=32)
    # the profile's int8 is weight-only: 8-bit MatMulNBits, on the head and on a projection
    up = "model.model.layers.0.mlp.up_proj"
    report = kernel.apply_onnx(path, tmp_path / "q8.onnx", {"model.lm_head": 8, up: 8}, ctx)
    assert report["int8_nodes"] == 2 and report["int8_engaged"] == 1.0
    nbits = [n for n in graph_of(tmp_path / "q8.onnx").graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2
    assert all(
        onnx.helper.get_attribute_value(a) == 8
        for n in nbits
        for a in n.attribute
        if a.name == "bits"
    )
    _assert_embedding_reads_the_head(tmp_path / "q8.onnx", head.name + "_Q8", vocab=512, hidden=32)
    # a float head leaves the embedding's float table alone
    report = kernel.apply_onnx(path, tmp_path / "q_up.onnx", {up: 4}, ctx)
    assert "tied_embedding_shared" not in report
    assert "GatherBlockQuantized" not in _op_types(tmp_path / "q_up.onnx")
    # the standard recipe's int4 takes the head too (onnxruntime-genai's builder does)
    recipe, _ = build_recipe("int4", path, ctx, tmp_path / "recipe")
    recipe_ops = {n.name: n.op_type for n in onnx.load(str(recipe)).graph.node}
    assert recipe_ops.get(head.name + "_Q4") == "MatMulNBits"


def _op_types(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _assert_embedding_reads_the_head(path: Path, head: str, vocab: int, hidden: int) -> None:
    """The graph at ``path`` has no float ``vocab x hidden`` table left; its embedding
    (GatherBlockQuantized) gives, for every token, the head's weights as the head's
    MatMulNBits computes with them (read back by one-hot inputs), and they are rounded."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    assert not [i for i in graph.initializer if list(i.dims) == [vocab, hidden]]
    nodes = {n.op_type: n for n in graph.node if n.op_type in ("GatherBlockQuantized",)}
    gather = nodes["GatherBlockQuantized"]
    matmul = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name == head)
    reshape = next(n for n in graph.node if gather.input[0] in n.output)
    assert reshape.input[0] == matmul.input[1]  # the head's own packed table: one copy
    float_table = next(i for i in onnx.load(str(path.parent / "g.onnx")).graph.initializer
                       if list(i.dims) == [vocab, hidden])  # fmt: skip
    probe = helper.make_graph(
        [reshape, gather, helper.make_node("MatMulNBits", ["eye", *matmul.input[1:]], ["w"],
                                           domain="com.microsoft", **{
                                               a.name: helper.get_attribute_value(a)
                                               for a in matmul.attribute})],
        "probe",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [vocab]),
         helper.make_tensor_value_info("eye", TensorProto.FLOAT, [hidden, hidden])],
        [helper.make_tensor_value_info(gather.output[0], TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
        [i for i in graph.initializer
         if i.name in {*reshape.input, *gather.input, *matmul.input}],
    )  # fmt: skip
    probe.node[1].input[1] = "ids"
    probe_model = helper.make_model(probe, opset_imports=list(model.opset_import))
    session = ort.InferenceSession(
        probe_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rows, weights = session.run(
        None, {"ids": np.arange(vocab), "eye": np.eye(hidden, dtype=np.float32)}
    )
    np.testing.assert_allclose(rows, weights.T, atol=1e-6)  # the head's numbers, row by row
    table = onnx.numpy_helper.to_array(float_table)
    error = np.abs(rows - table).max()
    assert 0 < error < 0.2 * np.abs(table).max()  # quantized, not garbage


def test_the_decoder_graph_is_fused_and_its_sibling_projections_packed(
    llama: torch.nn.Module, profile: HardwareProfile, tmp_path: Path
) -> None:
    """The generation profile fuses the RMS norms and rotary embeddings (attention is ONNX
    Runtime's GroupQueryAttention from the export), keeps every projection's node for the
    per-layer plan, and after precision packs the projections
    that read one input into one product: q and k of one precision together, v of another
    apart, the float gate and up together. Packing changes no output."""

    from tightfit.kernels import SurgeryContext
    from tightfit.kernels.fusion import DECODER_OPS, finish_decoder, fuse_for, pack_siblings, packs
    from tightfit.kernels.quantization import Quantization

    assert packs(profile)
    ids = np.random.default_rng(2).integers(0, 128, size=(4, 12)).astype(np.int64)
    path = export_for(
        profile, llama, (torch.from_numpy(ids[:1]),), ["input_ids"], tmp_path / "g.onnx"
    )
    owners = set(nodes_by_module(graph_of(path)))
    fused = fuse_for(profile, path, {"input_ids": ids})
    assert fused.refused is None
    assert set(fused.counts) == set(DECODER_OPS), fused.counts
    assert fused.counts["SkipSimplifiedLayerNormalization"] >= 3
    # heads of 8: the operator does not rotate them (multiples of 16), the graph does, fused
    assert fused.counts["RotaryEmbedding"] == 2 * 3  # q and k of each block
    assert fused.counts["GroupQueryAttention"] == 3  # one per block, written at export
    ops = {n.op_type for n in graph_of(path).graph.node}
    assert not ops & {"MultiHeadAttention", "Attention"}
    assert {m for m in nodes_by_module(graph_of(path)) if m.endswith("_proj")} == {
        m for m in owners if m.endswith("_proj")
    }
    with torch.no_grad():
        expected = llama(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(predict(path, {"input_ids": ids}), expected, atol=1e-4)

    attn = "model.model.layers.0.self_attn"
    plan = {f"{attn}.q_proj": 4, f"{attn}.k_proj": 4, f"{attn}.v_proj": 8}
    ctx = SurgeryContext(
        example_inputs=(torch.from_numpy(ids[:1]),), input_names=("input_ids",),
        calibration={"input_ids": ids}, profile=profile, baseline_onnx=path,
    )  # fmt: skip
    Quantization().apply_onnx(path, tmp_path / "q.onnx", plan, ctx)
    made = pack_siblings(tmp_path / "q.onnx", tmp_path / "packed.onnx")
    before = graph_of(tmp_path / "q.onnx").graph.node
    after = graph_of(tmp_path / "packed.onnx").graph.node
    # block 0: q+k (4-bit) and gate+up (float); blocks 1, 2: q+k+v and gate+up (float)
    assert made == 2 + 2 * 2
    packed = {n.name: n for n in after if n.name.endswith("_packed")}
    nbits = [n for n in packed.values() if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and dict((a.name, a.i) for a in nbits[0].attribute)["N"] == 32 + 16
    assert sum(n.op_type == "MatMulNBits" for n in after) == 2  # the packed q+k, and v alone
    assert sum(n.op_type == "MatMulNBits" for n in before) == 3
    assert (
        len([n for n in after if n.op_type == "Split"])
        - len([n for n in before if n.op_type == "Split"])
        == made
    )
    np.testing.assert_array_equal(
        predict(tmp_path / "packed.onnx", {"input_ids": ids}),
        predict(tmp_path / "q.onnx", {"input_ids": ids}),
    )
    # decoding through the cache gives the same tokens, packed or not
    prompt = ids[:1, :6]
    tokens = [open_runner(p, profile, {"input_ids": prompt}).generate()[2].tolist()  # type: ignore[attr-defined]
              for p in (tmp_path / "q.onnx", tmp_path / "packed.onnx")]  # fmt: skip
    assert tokens[0] == tokens[1]
    # heads of 8: the rotary embedding outside the operator reads the cache's length for its
    # positions, so the cache cannot be one buffer longer than the past: left as it was
    assert finish_decoder(tmp_path / "q.onnx", tmp_path / "kept.onnx") == {
        "packed_matmuls": made, "cache_buffer": "copied"
    }  # fmt: skip
    assert MASK not in [i.name for i in graph_of(tmp_path / "kept.onnx").graph.input]
    assert (
        open_runner(tmp_path / "kept.onnx", profile, {"input_ids": prompt}).cache_buffer == "copied"
    )  # type: ignore[attr-defined]
