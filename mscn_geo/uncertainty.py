"""How sure the model is, per tile or cell, and the ``uncertain`` class.

All functions take class probabilities with classes on the last axis
(``(..., classes)``, rows of NaN for tiles/cells without a result) and return
one value per tile/cell (NaN where there is no result).
"""

from __future__ import annotations

import math

import numpy as np

from mscn_geo.errors import OptionError

__all__ = [
    "NODATA_CLASS",
    "UNCERTAIN_CLASS",
    "UNCERTAIN_COLOUR",
    "UNCERTAIN_NAME",
    "check_min_confidence",
    "confidence",
    "entropy",
    "label",
    "margin",
]

#: Raster value of nodata (no valid pixel, or outside the area classified).
NODATA_CLASS = 255
#: Raster value, name and colour of cells whose confidence is below ``--min-confidence``.
UNCERTAIN_CLASS = 254
UNCERTAIN_NAME = "uncertain"
UNCERTAIN_COLOUR = (255, 0, 255)  # magenta: no land-use colour is near it


def check_min_confidence(value: float | None) -> None:
    """Raise :class:`OptionError` unless ``value`` is None or in 0..1."""
    if value is not None and not (0.0 <= value <= 1.0):  # also refuses NaN
        raise OptionError(
            f"min_confidence must be between 0 and 1, got {value:g}", field="min_confidence"
        )


def confidence(probs: np.ndarray) -> np.ndarray:
    """Top-1 probability."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[-1] == 0:
        return np.full(probs.shape[:-1], np.nan, np.float32)
    return probs.max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability (1 for a single-class model)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[-1] < 2:
        return np.where(np.isnan(confidence(probs)), np.nan, 1.0).astype(np.float32)
    top2 = np.partition(probs, -2, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]).astype(np.float32)


def entropy(probs: np.ndarray, normalised: bool = True) -> np.ndarray:
    """Shannon entropy of the class distribution.

    Args:
        normalised: divide by log(classes), so 0 is certain and 1 is uniform
            whatever the number of classes; else in nats.
    """
    probs = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    h = -terms.sum(axis=-1)
    h = np.where(np.isnan(probs).any(axis=-1), np.nan, np.maximum(h, 0.0))
    k = probs.shape[-1]
    if normalised and k > 1:
        h = h / math.log(k)
    return h.astype(np.float32)


def label(probs: np.ndarray, min_confidence: float | None = None) -> np.ndarray:
    """uint8 class ids: argmax; :data:`NODATA_CLASS` without a result;
    :data:`UNCERTAIN_CLASS` where the top-1 probability is below ``min_confidence``."""
    probs = np.asarray(probs)
    missing = np.isnan(probs).any(axis=-1)
    ids = np.where(missing, NODATA_CLASS, np.nan_to_num(probs, nan=-1.0).argmax(axis=-1))
    if min_confidence is not None:
        ids = np.where(~missing & (confidence(probs) < min_confidence), UNCERTAIN_CLASS, ids)
    return ids.astype(np.uint8)
