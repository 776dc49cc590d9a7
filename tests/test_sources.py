"""Models and data as users hold them: a Hugging Face folder, timm and torchvision names, a
state-dict checkpoint; torch DataLoaders and iterables with a transform; metrics by name."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from tests import models
from tests.helpers import search_config
from tightfit.config import DataSpec, ModelSpec, config_from_dict
from tightfit.exceptions import ConfigError, DataError, ModelError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.runs import run_search
from tightfit.task import HuggingFaceModel, load_data, load_model, model_id
from tightfit.workspace import Setup, Workspace

transformers = pytest.importorskip("transformers")

TOKENS = ("input_ids", "attention_mask")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier written by save_pretrained, as a user's fine-tuned model is."""
    return _save_bert(tmp_path_factory.mktemp("hf") / "bert-tiny", positions=128)


def _save_bert(folder: Path, positions: int) -> Path:
    config = transformers.BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=positions, num_labels=4,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    data = models.token_id_data(n=6)["validation"]
    return torch.from_numpy(data["input_ids"]), torch.from_numpy(data["attention_mask"])


def test_a_hugging_face_folder_loads_offline_as_its_architecture(bert_folder: Path) -> None:
    model = load_model(ModelSpec(hf=str(bert_folder)), input_names=TOKENS)
    assert isinstance(model, HuggingFaceModel) and not model.training
    reference = transformers.BertForSequenceClassification.from_pretrained(bert_folder).eval()
    ids, mask = _ids()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(ids, mask), expected)  # the logits, positionally


def test_hf_class_and_output_pick_another_head(bert_folder: Path) -> None:
    spec = ModelSpec(hf=str(bert_folder), hf_class="AutoModel", output="pooler_output")
    model = load_model(spec, input_names=TOKENS)
    assert type(model.model).__name__ == "BertModel"
    with torch.no_grad():
        assert model(*_ids()).shape == (6, 32)


def test_hugging_face_mistakes_name_the_field(bert_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model.hf: .*nope is not a Hugging Face model folder"):
        load_model(ModelSpec(hf=str(tmp_path / "nope")), input_names=TOKENS)
    with pytest.raises(ModelError, match="model.hf_class: transformers has no model class 'Bert'"):
        load_model(ModelSpec(hf=str(bert_folder), hf_class="Bert"), input_names=TOKENS)
    with pytest.raises(ModelError, match=r"data's inputs \['ids'\] are not arguments"):
        load_model(ModelSpec(hf=str(bert_folder)), input_names=("ids", "attention_mask"))


def test_a_profile_longer_than_the_model_is_refused_by_name(
    fast_profile: HardwareProfile, tmp_path: Path
) -> None:
    short = _save_bert(tmp_path / "short", positions=64)  # cpu-ort measures 128 tokens
    config = config_from_dict(
        {"name": "s", "model": {"hf": str(short)}, "data": "tests.models:token_id_data"}
    )
    with pytest.raises(
        ModelError, match=r"sequence_length = 128, but model 'hf:.*short' takes at most 64"
    ):
        Workspace(Setup.of(config, fast_profile, tmp_path / "w"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"ignore": ["fc"]}, "give exactly one of callable, hf, timm, torchvision; got none"),
        ({"hf": "a", "timm": "resnet18"}, "got hf, timm"),
        ({"hf": "a", "checkpoint": "w.pt"}, "checkpoint: an hf folder holds its own weights"),
        ({"timm": "resnet18", "output": "logits"}, "apply to hf models only"),
    ],
)
def test_a_model_has_one_source(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"name": "s", "model": raw, "data": "digits"})


@pytest.mark.parametrize(("form", "name"), [("timm", "resnet18"), ("torchvision", "resnet18")])
def test_timm_and_torchvision_say_how_to_install_them(form: str, name: str) -> None:
    if importlib.util.find_spec(form) is not None:
        pytest.skip(f"{form} is installed (its models are tested below)")
    with pytest.raises(ModelError, match=f"'{form}' is not installed; run 'pip install {form}'"):
        load_model(ModelSpec(**{form: name}))


@pytest.mark.parametrize(("form", "key"), [("timm", "pretrained"), ("torchvision", "weights")])
def test_timm_and_torchvision_build_offline_from_a_checkpoint(
    form: str, key: str, tmp_path: Path
) -> None:
    pytest.importorskip(form)
    spec = ModelSpec(**{form: "resnet18"}, kwargs={"num_classes": 10})
    model = load_model(spec)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    again = load_model(ModelSpec(**{form: "resnet18"}, kwargs={"num_classes": 10},
                                 checkpoint=str(tmp_path / "w.pt")))  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    with pytest.raises(ModelError, match=f"model.kwargs.{key}: pretrained weights would be"):
        load_model(ModelSpec(**{form: "resnet18"}, kwargs={key: "DEFAULT"}))


def test_a_checkpoint_replaces_the_callables_weights(tmp_path: Path) -> None:
    trained = models.tiny_resnet(seed=1)
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    model = load_model(
        ModelSpec(callable="tests.models:tiny_resnet", checkpoint=str(tmp_path / "ckpt.pt"))
    )
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x))
    torch.save(models.tiny_resnet(width=8).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="model.checkpoint: .*other.pt does not fit the model"):
        load_model(
            ModelSpec(callable="tests.models:tiny_resnet", checkpoint=str(tmp_path / "other.pt"))
        )
    with pytest.raises(ModelError, match="model.checkpoint: no file at"):
        load_model(ModelSpec(callable="tests.models:tiny_resnet", checkpoint="missing.pt"))


def test_a_dataloader_of_dict_batches_is_read_with_its_labels() -> None:
    data = load_data(DataSpec(callable="tests.models:token_loaders"))
    expected = models.token_id_data(n=48)
    assert data.input_names == TOKENS
    np.testing.assert_array_equal(data.validation["input_ids"], expected["validation"]["input_ids"])
    np.testing.assert_array_equal(data.targets, expected["targets"])
    assert len(data.calibration["input_ids"]) == 32
    capped = load_data(
        DataSpec(
            callable="tests.models:token_loaders", calibration_samples=12, validation_samples=15
        )
    )
    assert len(capped.calibration["input_ids"]) == 12  # cut inside a batch of 8
    assert len(capped.validation["attention_mask"]) == len(capped.targets) == 15


def test_an_iterable_with_a_transform_is_batched_and_named() -> None:
    data = load_data(
        DataSpec(callable="tests.models:image_iterables", transform="tests.models:to_image")
    )
    assert data.calibration["image"].shape == (16, 1, 8, 8)
    assert data.validation["image"].shape == (40, 1, 8, 8)
    assert data.targets.shape == (40,)
    first = next(models.image_pairs(40))
    np.testing.assert_array_equal(data.validation["image"][0].ravel(), first[0])


def no_targets() -> dict:
    return {
        "calibration": [np.zeros((2, 3), np.float32)],
        "validation": [np.zeros((2, 3), np.float32)],
    }


def ragged() -> dict:
    batches = [{"ids": np.ones((2, 5), np.int64)}, {"ids": np.ones((2, 7), np.int64)}]
    return {"calibration": batches, "validation": batches, "targets": np.zeros(4)}


def refuse(batch: object) -> object:
    raise ValueError("bad record")


def test_loader_mistakes_name_the_fix() -> None:
    with pytest.raises(DataError, match="validation loader's batches have no targets"):
        load_data(DataSpec(callable="tests.test_sources:no_targets"))
    with pytest.raises(DataError, match="different per-sample shapes.*padding='max_length'"):
        load_data(DataSpec(callable="tests.test_sources:ragged"))
    with pytest.raises(DataError, match="data.transform failed on calibration batch 0: .*bad rec"):
        load_data(DataSpec(callable="tests.models:image_iterables", transform=refuse))
    with pytest.raises(DataError, match="data.transform: module 'tests.models' has no attribute"):
        load_data(DataSpec(callable="tests.models:image_iterables", transform="tests.models:nope"))


@pytest.mark.slow
def test_a_search_runs_on_a_hugging_face_folder_fed_by_a_dataloader(
    bert_folder: Path, fast_dynamo_profile_file: Path, tmp_path: Path
) -> None:
    """The whole pipeline on the two forms users hold: heads and FFN neurons of the folder's
    BERT pruned, exported by the default exporter, fused (Attention, SkipLayerNormalization),
    int8, scored on the DataLoader's validation batches."""
    config = search_config(
        tmp_path / "w",
        fast_dynamo_profile_file,
        name="hf",
        model={"hf": str(bert_folder)},
        data={"callable": "tests.models:token_loaders", "calibration_samples": 24},
        space={"prune": {"ratios": [0.0, 0.25, 0.5]}, "lowrank": {"enabled": False}},
        constraints={"max_accuracy_drop": 1.0},  # random labels: every candidate is feasible
        n_trials=4,
        seeds={"uniform": 2, "global_magnitude": 0},
    )
    outcome = run_search(config)
    study = outcome.profile("cpu-ort-fast").study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4, [t.user_attrs.get("error") for t in study.trials]
    assert study.user_attrs["baseline_accuracy"] == pytest.approx(
        load_data(config.data).score(_logits(bert_folder, load_data(config.data).validation))
    )
    pruned_heads = [
        t
        for t in complete
        if any(v > 0 for k, v in t.params.items() if k.endswith("attention.self.prune_ratio.level"))
    ]
    assert pruned_heads, [t.params for t in complete]  # the uniform seeds prune every head group
    # the baseline and every candidate fused; an int8 attention runs as QAttention, engaged
    assert study.user_attrs["export"]["fusions"]["Attention"] == 2
    int8 = 0
    for t in complete:
        report = t.user_attrs.get("report", {})
        if t.user_attrs["is_baseline"]:
            continue
        assert report["fusions"]["Attention"] == 2, report
        if "quantize" in report:
            assert report["quantize"]["int8_engaged"] == 1.0
            bits = json.loads(t.user_attrs["candidate"])["bits"]
            int8 += any(p.endswith("attention.self") and b == 8 for p, b in bits.items())
    assert int8  # the strongest uniform seed puts every layer, attention included, in int8
    assert not outcome.front("cpu-ort-fast").empty


def _logits(folder: Path, inputs: dict) -> np.ndarray:
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


def test_a_head_missing_from_the_folder_is_the_same_in_every_worker(tmp_path: Path) -> None:
    """A classifier on a base model's folder starts random: each worker builds the model again,
    so the start must be seeded (else every candidate is refused as made for another model)."""
    base = transformers.BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    transformers.BertModel(base).save_pretrained(tmp_path / "base")
    spec = ModelSpec(hf=str(tmp_path / "base"), hf_class="BertForSequenceClassification")
    ids = []
    for worker_state in (1, 2):  # workers reach the load with different random states
        torch.manual_seed(worker_state)
        ids.append(model_id(load_model(spec, input_names=TOKENS)))
    assert ids[0] == ids[1]
    torch.manual_seed(1)  # the caller's random state is left as it was
    before = torch.rand(1)
    torch.manual_seed(1)
    load_model(spec, input_names=TOKENS)
    assert torch.rand(1) == before
