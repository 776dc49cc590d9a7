from __future__ import annotations

from pathlib import Path

import pytest

from tightfit.config import config_from_dict, load_config
from tightfit.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


def test_example_config_loads() -> None:
    config = load_config(ROOT / "examples" / "digits.yaml")
    assert config.name == "digits-resnet"
    assert config.directions == ["maximize", "minimize", "minimize"]
    assert config.workdir_path == (Path("runs") / "digits-resnet").resolve()
    assert config.hardware_profiles()[0].name == "cpu-ort"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_config_is_valid(path: Path) -> None:
    config = load_config(path)  # a stale field or value would raise ConfigError here
    assert config.hardware_profiles()


def test_defaults_and_zero_ratio_always_offered(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "space: {prune: {ratios: [0.5, 0.25]}}\n"))
    assert config.space.prune.ratios == [0.0, 0.25, 0.5]
    assert config.n_trials == 40 and config.sampler.name == "tpe"


def test_ratio_out_of_range_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "space: {prune: {ratios: [0.0, 0.25, 1.5]}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: space.prune.ratios[2] must be in [0, 1), got 1.5"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("n_trials: many\n", "n_trials"),
        ("sampler: {name: bayes}\n", "sampler.name"),
        ("objectives: [latency_ms]\n", "objectives must include one quality objective"),
        ("objectives: [accuracy, perplexity, latency_ms]\n", "(accuracy or perplexity: the"),
        ("constraints: {max_accuracy_drop: -1}\n", "constraints.max_accuracy_drop"),
        (
            "space: {lowrank: {rank_fractions: [1.5]}}\n",
            "space.lowrank.rank_fractions[0] must be in (0, 1)",
        ),
        ("spaec: {}\n", "spaec is not a known field"),
        ("space: {prune: {importance: taylor}}\n", "space.prune.importance"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(write(tmp_path, MINIMAL + extra))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model is required"):
        load_config(write(tmp_path, "name: t\ndata: {callable: digits}\n"))


def test_unknown_profile_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "profiles: [cpu-ortt]\n"))
    msg = str(err.value)
    assert "profiles[0]" in msg and "unknown hardware profile 'cpu-ortt'" in msg
    assert "did you mean 'cpu-ort'" in msg and "cpu-ort-1t" in msg


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML \(.* at line \d+, column \d+\)"):
        load_config(write(tmp_path, "name: t\nmodel: [unclosed\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/search.yaml")


def test_profile_file_resolved_relative_to_config(tmp_path: Path, fast_profile_file: Path) -> None:
    (tmp_path / "p.yaml").write_text(fast_profile_file.read_text())
    config = load_config(write(tmp_path, MINIMAL + "profiles: [p.yaml]\n"))
    assert config.hardware_profiles()[0].name == "cpu-ort-fast"


def test_fingerprint_ignores_budget_but_not_space(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, MINIMAL))
    assert a.fingerprint() == load_config(write(tmp_path, MINIMAL + "n_trials: 7\n")).fingerprint()
    assert a.fingerprint() != load_config(write(tmp_path, MINIMAL + "seed: 3\n")).fingerprint()


def test_unknown_field_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "space: {distill: {}}\n"))
    assert str(err.value).endswith(
        "space.distill is not a known field (valid: prune, lowrank, quantize, kernels)"
    )
    with pytest.raises(ConfigError, match="n_trails is not a known field; did you mean 'n_trials'"):
        load_config(write(tmp_path, MINIMAL + "n_trails: 3\n"))


@pytest.mark.parametrize(
    "extra",
    [
        "mlflow: {tracking_uri: 'https://alice:s3cret@mlflow.example.com'}\n",
        "mlflow: {tracking_uri: 'https://mlflow.example.com/?token=abc123'}\n",
        "ray: {address: 'ray://bob:hunter2@head:10001'}\n",
    ],
)
def test_credentials_in_uris_are_refused_and_not_echoed(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + extra))
    msg = str(err.value)
    assert "must not hold credentials" in msg and "***" in msg
    assert "s3cret" not in msg and "abc123" not in msg and "hunter2" not in msg


def test_profile_concurrency_caps_each_profile_and_names_real_profiles(tmp_path) -> None:
    from tightfit.config import config_from_dict
    from tightfit.exceptions import ConfigError

    base = {"name": "c", "model": {"callable": "digits-cnn"}, "data": {"callable": "digits"}}
    config = config_from_dict({**base, "concurrency": 4, "profile_concurrency": {"cpu-ort": 8}})
    assert config.concurrency_of("cpu-ort") == 4  # never more than the search's
    config = config_from_dict({**base, "concurrency": 4, "profile_concurrency": {"cpu-ort": 1}})
    assert config.concurrency_of("cpu-ort") == 1
    with pytest.raises(ConfigError, match=r"profile_concurrency: gpu-x is not a profile"):
        config_from_dict({**base, "profile_concurrency": {"gpu-x": 1}})
    with pytest.raises(ConfigError, match="profile_concurrency"):
        config_from_dict({**base, "profile_concurrency": {"cpu-ort": 0}})


def test_optuna_storage_is_a_journal_path_or_a_database_url_without_a_password() -> None:
    from tightfit.config import config_from_dict
    from tightfit.exceptions import ConfigError

    base = {"name": "c", "model": {"callable": "digits-cnn"}, "data": {"callable": "digits"}}
    for ok in ("/data/studies.journal", "sqlite:///s.db", "postgresql+psycopg2://db:5432/s"):
        assert config_from_dict({**base, "optuna": {"storage": ok}}).optuna.storage == ok
    with pytest.raises(ConfigError, match=r"optuna\.storage.*redis"):
        config_from_dict({**base, "optuna": {"storage": "redis://host"}})
    with pytest.raises(ConfigError, match=r"optuna\.storage.*\.journal"):
        config_from_dict({**base, "optuna": {"storage": "studies.db"}})
    with pytest.raises(ConfigError, match=r"optuna\.storage.*PGPASSWORD"):
        config_from_dict({**base, "optuna": {"storage": "postgresql://u:hunter2@db/s"}})


def test_recovery_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.recovery.batchnorm and config.recovery.bias_correction == "auto"
    assert not config.recovery.distill.enabled
    text = "recovery: {bias_correction: true, distill: {enabled: true, steps: 20}}\n"
    config = load_config(write(tmp_path, MINIMAL + text))
    assert config.recovery.bias_correction is True and config.recovery.distill.steps == 20
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "recovery: {bias_correction: sometimes}\n"))
    assert "recovery.bias_correction" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "recovery: {distill: {steps: 0}}\n"))
    assert "recovery.distill.steps" in str(err.value)


def test_home_is_expanded_and_a_profile_is_listed_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    base = {"name": "t", "model": {"callable": "digits-cnn"}, "data": {"callable": "digits"}}
    config = config_from_dict({**base, "workdir": "~/w", "latency": {"cache_dir": "~/c"}})
    assert config.workdir == str(tmp_path / "w") and config.latency.cache_dir == str(tmp_path / "c")
    assert not Path("~").exists()
    with pytest.raises(ConfigError, match=r"profiles\[1\] 'cpu-ort' is listed twice"):
        config_from_dict({**base, "profiles": ["cpu-ort", "cpu-ort"]})


def test_credentials_anywhere_in_the_config_are_refused() -> None:
    base = {"name": "t", "model": {"callable": "digits-cnn"}, "data": {"callable": "digits"}}
    for where, spec in [
        ("model.kwargs.url", {"callable": "digits-cnn", "kwargs": {"url": "https://u:p@h/x"}}),
        ("model.kwargs.hf_token", {"callable": "digits-cnn", "kwargs": {"hf_token": "x"}}),
    ]:
        with pytest.raises(ConfigError, match=rf"{where} holds a credential"):
            config_from_dict({**base, "model": spec})
