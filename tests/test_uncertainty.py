"""confidence, margin, entropy and the uncertain class, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mscn_geo.errors import OptionError
from mscn_geo.uncertainty import check_min_confidence, confidence, entropy, label, margin

PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [1 / 3, 1 / 3, 1 / 3],
        [0.0, 1.0, 0.0],
        [np.nan, np.nan, np.nan],  # no result (all-nodata tile)
    ],
    dtype=np.float32,
)


def test_measures_by_hand() -> None:
    np.testing.assert_allclose(confidence(PROBS), [0.7, 1 / 3, 1.0, np.nan], atol=1e-6)
    np.testing.assert_allclose(margin(PROBS), [0.5, 0.0, 1.0, np.nan], atol=1e-6)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(entropy(PROBS, normalised=False), [h, math.log(3), 0, np.nan], 1e-6)
    np.testing.assert_allclose(entropy(PROBS), [h / math.log(3), 1.0, 0.0, np.nan], atol=1e-6)
    # Works on cell grids too: (rows, cols, classes).
    assert margin(PROBS.reshape(2, 2, 3)).shape == (2, 2)


def test_label_with_and_without_min_confidence() -> None:
    np.testing.assert_array_equal(label(PROBS), [0, 0, 1, 255])
    np.testing.assert_array_equal(label(PROBS, 0.5), [0, 254, 1, 255])
    np.testing.assert_array_equal(label(PROBS, 0.7), [0, 254, 1, 255])  # 0.7 is not below 0.7
    np.testing.assert_array_equal(label(PROBS, 0.0), [0, 0, 1, 255])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_min_confidence_outside_0_1_is_an_option_error(bad: float) -> None:
    with pytest.raises(OptionError, match="min_confidence must be between 0 and 1"):
        check_min_confidence(bad)
    check_min_confidence(None)
    check_min_confidence(1.0)
