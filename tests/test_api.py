"""The Python API: ``tightfit.run_search`` and friends, typed, taking a config in any form."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tightfit
from tightfit.config import SearchConfig, as_config, config_from_dict
from tightfit.examples.digits import load_data, pretrained_cnn
from tightfit.exceptions import ConfigError

BASE = {"name": "api", "model": "digits-cnn", "data": "digits"}


def test_the_front_door_names_are_the_real_ones() -> None:
    from tightfit.runs import run_search
    from tightfit.runs.export import export

    assert tightfit.run_search is run_search and tightfit.export is export
    assert tightfit.SearchConfig is SearchConfig and tightfit.as_config is as_config
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tightfit.nope  # noqa: B018


def test_mypy_sees_the_front_door_typed(tmp_path: Path) -> None:
    """``tightfit.run_search`` is not ``Any`` to a type checker (the lazy attributes are
    declared for it): a wrong argument type is an error."""
    script = tmp_path / "use.py"
    script.write_text(
        "import tightfit\nreveal_type(tightfit.run_search)\ntightfit.run_search(42)\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", str(script)],  # the lint step warmed its cache
        capture_output=True,
        text=True,
        cwd=Path(tightfit.__file__).parents[1],
    )
    assert "def (config:" in out.stdout, out.stdout
    assert 'Argument 1 to "run_search" has incompatible type "int"' in out.stdout


def test_a_config_validates_the_same_from_a_dict_a_record_or_a_file(tmp_path: Path) -> None:
    raw = {**BASE, "workdir": str(tmp_path / "w")}
    from_dict = as_config(raw)
    from_record = as_config(SearchConfig.model_validate(raw))
    (tmp_path / "c.yaml").write_text(
        "name: api\nmodel: digits-cnn\ndata: digits\nworkdir: " + str(tmp_path / "w") + "\n"
    )
    from_file = as_config(tmp_path / "c.yaml")
    assert from_dict == from_record == from_file
    bad = {**raw, "profile_concurrency": {"gpu-x": 1}}
    for form in (bad, SearchConfig.model_validate(bad)):  # not caught by the record alone
        with pytest.raises(ConfigError, match="profile_concurrency: gpu-x is not a profile"):
            as_config(form)
    with pytest.raises(ConfigError, match="not int"):
        as_config(3)  # type: ignore[arg-type]


def test_an_importable_function_stands_for_its_module_callable_string() -> None:
    config = config_from_dict(
        {
            "name": "api",
            "model": {"callable": pretrained_cnn, "kwargs": {"width": 8}},
            "data": load_data,
        }
    )
    assert config.model.callable == "tightfit.examples.digits:pretrained_cnn"
    assert config.model.kwargs == {"width": 8}
    assert config.data.callable == "tightfit.examples.digits:load_data"


def _local() -> None: ...


def _moved() -> None: ...


_moved.__qualname__ = "not_here"  # as if renamed after it was imported


def test_a_callable_workers_cannot_import_is_refused_with_the_fix() -> None:
    def inner() -> None: ...

    cases = {
        lambda: None: "is a lambda or is defined inside another function",
        inner: "define it at the top level of a module",
        _moved: "does not import as the callable given",
        3.5: "model input should be a valid dictionary",
    }
    for fn, message in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            config_from_dict({**BASE, "model": fn})
        assert "config: model" in str(err.value)
    _local.__module__ = "__main__"
    with pytest.raises(ConfigError, match="defined in __main__ .* move it to a module"):
        config_from_dict({**BASE, "data": _local})
