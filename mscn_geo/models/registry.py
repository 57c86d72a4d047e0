"""Build models by name, the way timm's ``create_model`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(factory: ModelFactory) -> ModelFactory:
    """Decorator: make ``factory`` buildable as ``create_model(factory.__name__)``."""
    _REGISTRY[factory.__name__] = factory
    return factory


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered architecture with random weights.

    Args:
        name: e.g. ``"mscn_resnet50"``; see :func:`list_models`.
        num_classes: size of the classifier output.
        in_chans: input bands.
        **kwargs: architecture options (``dim``, ``k1``, ``k2``, ...).

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    return factory(num_classes=num_classes, in_chans=in_chans, **kwargs)
