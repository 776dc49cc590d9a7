"""Built-in profiles (YAML files shipped in the package) and user profile files."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tightfit._naming import unknown_name_message
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles._profile import HardwareProfile

_BUILTIN_DIR = Path(__file__).parent / "builtin"


@cache
def _builtin() -> dict[str, HardwareProfile]:
    profiles = {}
    for path in sorted(_BUILTIN_DIR.glob("*.yaml")):
        profile = HardwareProfile.from_yaml(path)
        profiles[profile.name] = profile
    return profiles


def list_profiles() -> list[str]:
    """Names of the built-in hardware profiles."""
    return sorted(_builtin())


def get_profile(name_or_path: str, base_dir: Path | None = None) -> HardwareProfile:
    """A built-in profile by name, or a profile YAML file by path (relative to ``base_dir``)."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.exists():
            raise ConfigError(f"hardware profile file '{path}' does not exist")
        return HardwareProfile.from_yaml(path)
    try:
        return _builtin()[name_or_path]
    except KeyError:
        raise ConfigError(
            unknown_name_message("hardware profile", name_or_path, _builtin())
            + "; or give a path to a profile .yaml file"
        ) from None
