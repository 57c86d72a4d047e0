"""Build models by name, the way timm's ``create_model`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


_MIXED_PRECISION: set[str] = set()


def register_model(factory: ModelFactory | None = None, *, mixed_precision: bool = False) -> Any:
    """Decorator: make ``factory`` buildable as ``create_model(factory.__name__)``.

    ``@register_model(mixed_precision=True)``: the model has ``forward_mixed``
    (convolutions in bf16, the rest in float32), known without building it.
    """

    def add(f: ModelFactory) -> ModelFactory:
        _REGISTRY[f.__name__] = f
        if mixed_precision:
            _MIXED_PRECISION.add(f.__name__)
        return f

    return add if factory is None else add(factory)


def has_mixed_precision(name: str) -> bool:
    """Whether the registered architecture ``name`` has ``forward_mixed``."""
    return name in _MIXED_PRECISION


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
