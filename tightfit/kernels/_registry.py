"""Kernels by name; the order of registration is the order of application."""

from __future__ import annotations

from tightfit._naming import unknown_name_message
from tightfit.kernels._base import Kernel

_KERNELS: dict[str, Kernel] = {}


def register_kernel(cls: type[Kernel]) -> type[Kernel]:
    """Class decorator: make a kernel available by its ``name``."""
    _KERNELS[cls.name] = cls()
    ordered = sorted(_KERNELS.values(), key=lambda k: k.order)
    _KERNELS.clear()
    _KERNELS.update((k.name, k) for k in ordered)
    return cls


def registered_kernels() -> list[Kernel]:
    """Every registered kernel, in the order they apply."""
    return list(_KERNELS.values())


def list_kernels() -> list[str]:
    return list(_KERNELS)


def get_kernel(name: str) -> Kernel:
    try:
        return _KERNELS[name]
    except KeyError:
        raise KeyError(unknown_name_message("kernel", name, _KERNELS)) from None


def kernels_for_knob(knob: str) -> Kernel:
    for kernel in _KERNELS.values():
        if kernel.knob == knob:
            return kernel
    raise KeyError(unknown_name_message("knob", knob, [k.knob for k in _KERNELS.values()]))
