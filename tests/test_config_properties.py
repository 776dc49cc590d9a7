"""Property test: any mapping either loads or raises ConfigError naming a field; nothing else."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tightfit.config import SearchConfig, config_from_dict
from tightfit.exceptions import ConfigError

FIELDS = list(SearchConfig.model_fields)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID = {"name": "t", "model": {"callable": "digits-cnn"}, "data": {"callable": "digits"}}
nested = {
    "space": st.fixed_dictionaries(
        {},
        optional={
            "prune": st.dictionaries(
                st.sampled_from(["enabled", "ratios", "x"]), values, max_size=2
            ),
            "lowrank": st.dictionaries(
                st.sampled_from(["rank_fractions", "min_rank"]), values, max_size=2
            ),
            "quantize": st.dictionaries(st.sampled_from(["bits", "enabled"]), values, max_size=2),
        },
    ),
    "constraints": st.dictionaries(
        st.sampled_from(["max_accuracy_drop", "max_latency_ms", "y"]), values, max_size=2
    ),
    "sampler": st.dictionaries(st.sampled_from(["name", "n_startup_trials"]), values, max_size=2),
}
configs = st.one_of(
    st.dictionaries(st.sampled_from([*FIELDS, "bogus"]), values, max_size=6),
    st.fixed_dictionaries(
        {k: st.just(v) for k, v in VALID.items()},
        optional={**{f: values for f in FIELDS if f not in VALID}, **nested},
    ),
)
NAME = r"[^\W\d]\w*"  # a Python identifier, Unicode letters included
KEY = r"\[(?:\d+|'[^']*'|\"[^\"]*\")\]"
PATH = re.compile(
    rf"^cfg\.yaml: (\(top level\)|(?:{NAME}|{KEY})(?:\.{NAME}|{KEY})*)(?: |\[\d+\] |: )"
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_random_configs_load_or_name_a_field(raw: dict) -> None:
    try:
        config = config_from_dict(raw, source="cfg.yaml")
    except ConfigError as e:
        lines = str(e).splitlines()
        assert lines
        for line in lines:
            assert PATH.match(line) or re.match(r"^cfg\.yaml: … and \d+ more problem", line), line
    else:
        assert isinstance(config, SearchConfig)
