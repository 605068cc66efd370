"""Base deep-hashing losses, one file each, registered by name.

Every module in this package that defines a NestedLoss subclass decorated with
@register("name") is imported here, so adding a loss is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

from nhl_fast.losses.base import NestedLoss, PerLengthLoss, UnsupervisedNestedLoss, multi_hot

_REGISTRY: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available(unsupervised: Optional[bool] = None) -> list[str]:
    """The registered names; unsupervised=True / False: only the two-view losses / only those with labels."""
    return sorted(n for n, cls in _REGISTRY.items()
                  if unsupervised is None or bool(getattr(cls, "unsupervised", False)) == unsupervised)


def get_loss(name: str, bit_list, **kwargs) -> NestedLoss:
    """An instance of the registered loss `name` for these code lengths."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown base_loss {name!r}; valid names: {', '.join(available())}")
    return _REGISTRY[key](bit_list, **kwargs)


for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["NestedLoss", "PerLengthLoss", "UnsupervisedNestedLoss", "multi_hot", "register", "available", "get_loss"]
