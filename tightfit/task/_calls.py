"""``module:callable`` references (and the built-in examples' names), imported and called."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tightfit._naming import unknown_name_message
from tightfit.exceptions import DataError, ModelError

__all__ = ["EXAMPLES", "call_with_cache", "resolve_callable"]

#: Built-in examples, usable by name in place of ``module:callable``.
EXAMPLES = {
    "digits-cnn": "tightfit.examples.digits:pretrained_cnn",
    "digits": "tightfit.examples.digits:load_data",
    "fashion-mnist-cnn": "tightfit.examples.fashion_mnist:pretrained_cnn",
    "fashion-mnist": "tightfit.examples.fashion_mnist:load_data",
    "efficientnet-lite0": "tightfit.examples.efficientnet:pretrained_lite0",
    "imagenet-photos": "tightfit.examples.efficientnet:load_data",
    "minilm": "tightfit.examples.minilm:pretrained_minilm",
    "mr-polarity": "tightfit.examples.minilm:load_data",
    "smollm2": "tightfit.examples.smollm2:pretrained_smollm2",
    "austen": "tightfit.examples.smollm2:load_data",
}


def resolve_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``module:callable`` (or a built-in example name); ``what`` is the config field
    (``model``, ``data``, ``data.transform``) errors name."""
    err = ModelError if what == "model" else DataError
    target = EXAMPLES.get(spec, spec)
    field = what if "." in what else f"{what}.callable"
    if ":" not in target:
        raise err(
            f"{field}: {unknown_name_message('built-in example', spec, EXAMPLES)}"
            "; or give 'module:callable'"
        )
    module_name, _, attr = target.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # let users name modules beside their config
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise err(
            f"{field}: cannot import module '{module_name}' ({type(e).__name__}: {e})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise err(f"{field}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise err(f"{field}: '{target}' is not callable")
    return obj


def call_with_cache(
    fn: Callable[..., Any], kwargs: Mapping[str, Any], cache_dir: Path | None
) -> Any:
    """Call ``fn(**kwargs)``, adding ``cache_dir`` where ``fn`` takes one and it is not given."""
    kwargs = dict(kwargs)
    params = inspect.signature(fn).parameters
    if cache_dir is not None and "cache_dir" in params and "cache_dir" not in kwargs:
        kwargs["cache_dir"] = cache_dir
    return fn(**kwargs)
