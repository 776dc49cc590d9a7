"""SearchConfig: one YAML file describes a whole search; validated here, at the boundary.

Errors name the file and the field, and say what is wrong and what was given::

    search.yaml: space.prune.ratios[2] must be in [0, 1), got 1.5
"""

from tightfit.config._parts import *  # noqa: F403  (the sections: _parts.__all__)
from tightfit.config._parts import __all__ as _sections
from tightfit.config._search import (
    ConfigLike,
    SearchConfig,
    as_config,
    config_from_dict,
    load_config,
)

__all__ = [*_sections, "ConfigLike", "SearchConfig", "as_config", "config_from_dict", "load_config"]
