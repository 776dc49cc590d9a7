"""The user's model, from where users hold it: a callable, a Hugging Face folder, a timm or
torchvision architecture (with a local checkpoint). Nothing is downloaded."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tightfit.config import CallableSpec, ModelSpec
from tightfit.exceptions import ModelError
from tightfit.task import _attention
from tightfit.task._calls import call_with_cache, resolve_callable

__all__ = ["HuggingFaceModel", "load_model", "model_id"]

log = logging.getLogger(__name__)


class HuggingFaceModel(nn.Module):
    """A transformers model called with positional tensors, returning one tensor.

    The search feeds a model its inputs in the data's order (``input_ids, attention_mask``,
    ...) and scores one output; a transformers model takes keywords and returns a
    ``ModelOutput``. This maps one to the other: ``input_names`` are the keywords, ``output``
    the field returned (default: ``logits`` where there are logits, else the first field).
    """

    def __init__(
        self, model: nn.Module, input_names: Sequence[str], output: str | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.output = output
        self._step = False  # generation_step(): forward takes and returns the KV cache

    @property
    def max_positions(self) -> int | None:
        """The longest token sequence the model takes (``config.max_position_embeddings``)."""
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    def forward(self, *inputs: torch.Tensor) -> Any:
        if self._step:
            return self._generation_step(inputs[0], inputs[1:])
        out = self.model(**dict(zip(self.input_names, inputs, strict=True)), return_dict=True)
        if self.output is not None:
            return out[self.output]
        return out["logits"] if "logits" in out else out[0]

    @contextlib.contextmanager
    def generation_step(self) -> Iterator[None]:
        """Within this block ``forward(input_ids, *past)`` runs one step of a causal LM with a KV
        cache: ``past`` is each layer's key and value ``(batch, kv_heads, past_length,
        head_dim)``, layer by layer (empty, length 0, for the prefill); it returns the logits
        and each layer's key and value after the step (the cache to feed the next one).
        Module paths stay those of the plain forward, so per-layer plans name the same nodes."""
        self._step = True
        try:
            yield
        finally:
            self._step = False

    def cache_shapes(self) -> list[tuple[int, int]]:
        """(kv heads, head dim) of each layer's KV cache, read from one forward of two tokens
        (pruned layers have fewer heads than the config says)."""
        ids = torch.zeros((1, 2), dtype=torch.long)
        try:
            with torch.no_grad():
                out = self.model(input_ids=ids, use_cache=True, return_dict=True)
            pairs = _cache_pairs(_returned_cache(out))
        except Exception as e:  # noqa: BLE001 - any model that is no causal LM with a cache
            raise ModelError(
                f"the model gives no KV cache ({type(e).__name__}: {e}); a generation profile "
                "needs a causal language model that takes past_key_values (a transformers "
                "*ForCausalLM)"
            ) from None
        return [(int(k.shape[1]), int(k.shape[3])) for k, _ in pairs]

    def _generation_step(self, input_ids: torch.Tensor, past: Sequence[torch.Tensor]) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        start = past[0].shape[2] if past else 0
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        inputs = {
            "input_ids": input_ids,
            self._cache_keyword: cache,
            "position_ids": positions.unsqueeze(0).expand(input_ids.shape[0], -1),
            "use_cache": True,
            "return_dict": True,
        }
        if _attention.active(self.model):  # the attention operator appends to the cache
            with _attention.step_cache(cache, past) as step:
                out = self.model(**inputs)
            present = [t for i in range(len(past) // 2) for t in step.present[i]]
        else:
            out = self.model(**inputs)
            present = [t for pair in _cache_pairs(_returned_cache(out)) for t in pair]
        return (out["logits"], *present)

    @property
    def _cache_keyword(self) -> str:
        """``cache`` (transformers 5.25 and later) or ``past_key_values`` (earlier)."""
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def _cache_pairs(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (key, value) from a transformers cache (5.x ``layers``, 4.x ``key_cache``)
    or a legacy tuple of pairs."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v, *_ in cache]


def _require(module: str, form: str) -> Any:
    if importlib.util.find_spec(module) is None:
        raise ModelError(
            f"model.{form}: the package '{module}' is not installed; run 'pip install {module}' "
            f"(tightfit needs it only for {form} models)"
        )
    return importlib.import_module(module)


def _folder(path: str, field: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        folder = Path.cwd() / folder
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"model.{field}: {folder} is not a Hugging Face model folder (no config.json); give "
            "the folder that save_pretrained wrote (model ids are not fetched: nothing is "
            "downloaded at run time)"
        )
    return folder


def load_hf(spec: ModelSpec, input_names: Sequence[str]) -> nn.Module:
    transformers = _require("transformers", "hf")
    assert spec.hf is not None
    folder = _folder(spec.hf, "hf")
    transformers.utils.logging.disable_progress_bar()  # tightfit reports progress itself
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    name = spec.hf_class or next(iter(getattr(config, "architectures", None) or []), "AutoModel")
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelError(
            f"model.hf_class: transformers has no model class {name!r}; name one such as "
            "AutoModelForSequenceClassification, AutoModelForCausalLM or AutoModel"
        )
    try:
        model = cls.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, **spec.kwargs
        )
    except Exception as e:
        raise ModelError(
            f"model.hf: {name}.from_pretrained({str(folder)!r}) failed: {type(e).__name__}: {e}"
        ) from e
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # one forward pass, no key/value cache returned
    accepted = inspect.signature(model.forward).parameters
    unknown = [n for n in input_names if n not in accepted]
    if unknown:
        raise ModelError(
            f"model.hf: the data's inputs {unknown} are not arguments of {type(model).__name__}"
            f".forward (it takes {[n for n in accepted if n != 'kwargs'][:8]}); name the data's "
            "inputs after them"
        )
    return HuggingFaceModel(model, input_names, spec.output)


def _no_download(spec: ModelSpec, key: str) -> None:
    value = spec.kwargs.get(key)
    if value not in (None, False):
        raise ModelError(
            f"model.kwargs.{key}: pretrained weights would be downloaded, and nothing is at run "
            f"time; save them once (torch.save(model.state_dict(), path)) and give "
            f"model.checkpoint: path"
        )


def load_timm(spec: ModelSpec) -> nn.Module:
    timm = _require("timm", "timm")
    _no_download(spec, "pretrained")
    try:
        return timm.create_model(spec.timm, **{"pretrained": False, **spec.kwargs})
    except Exception as e:
        raise ModelError(
            f"model.timm: timm.create_model({spec.timm!r}) failed: {type(e).__name__}: {e}"
        ) from e


def load_torchvision(spec: ModelSpec) -> nn.Module:
    tv = _require("torchvision", "torchvision")
    _no_download(spec, "weights")
    try:
        return tv.models.get_model(spec.torchvision, **{"weights": None, **spec.kwargs})
    except Exception as e:
        raise ModelError(
            f"model.torchvision: torchvision.models.get_model({spec.torchvision!r}) failed: "
            f"{type(e).__name__}: {e}"
        ) from e


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict file (a training checkpoint's ``state_dict`` or ``model`` entry too)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"model.checkpoint: no file at {file.resolve()}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(
            f"model.checkpoint: cannot read {file} ({type(e).__name__}: {e}); save it with "
            "torch.save(model.state_dict(), path) or safetensors"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise ModelError(
            f"model.checkpoint: {file} does not fit the model: {type(e).__name__}: "
            f"{str(e).splitlines()[0]}"
        ) from e


def load_model(
    spec: ModelSpec | CallableSpec, cache_dir: Path | None = None, input_names: Sequence[str] = ()
) -> nn.Module:
    """The model ``spec`` names, in eval mode. ``input_names`` (the data's inputs, in order)
    are the keywords a Hugging Face model is called with."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(**spec.model_dump())
    if spec.source != "callable":
        # Every worker builds the model again and must get the same weights: timm and
        # torchvision without a checkpoint, and a Hugging Face head missing from its folder
        # (a classifier on a base model's folder), are initialised at random.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = (
                load_hf(spec, input_names)
                if spec.hf
                else load_timm(spec)
                if spec.timm
                else load_torchvision(spec)
            )
        if not spec.hf and not spec.checkpoint:
            log.warning(
                "%s has no checkpoint: its weights are random (seeded), so accuracy means "
                "nothing; give model.checkpoint for a trained model",
                spec.describe(),
            )
    else:
        assert spec.callable is not None
        fn = resolve_callable(spec.callable, "model")
        try:
            model = call_with_cache(fn, spec.kwargs, cache_dir)
        except Exception as e:
            raise ModelError(
                f"model.callable '{spec.callable}' failed: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"model.callable '{spec.callable}' returned {type(model).__name__}, expected a "
                "torch.nn.Module"
            )
    if spec.checkpoint:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()


def model_id(model: nn.Module) -> str:
    """Content hash of a model's class and weights: the base-model id in every Candidate."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
