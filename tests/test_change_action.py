"""The change action vector (medrl.change_action): the seed's formula, scale-free, and what the converter stores."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medrl.change_action import action_box, action_text, action_vector, change_action



def test_action_vector_matches_the_seed_formula():
    cx, cy, s = action_vector([100, 150, 300, 350], 400, 500)
    assert (cx, cy) == (0.5, 0.5)
    assert s == pytest.approx(math.sqrt(200 * 200 / (400 * 500)))
    assert action_vector([0, 0, 640, 480], 640, 480) == (0.5, 0.5, 1.0)
    assert action_vector([10, 10, 10, 30], 100, 100)[2] == 0.0
    for bad in ([5, 0, 1, 4], [0, 0, math.nan, 1]):
        with pytest.raises(ValueError):
            action_vector(bad, 10, 10)
    with pytest.raises(ValueError):
        action_vector([0, 0, 1, 1], 0, 10)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000), st.data())
def test_action_vector_is_scale_free(w, h, data):
    x1, x2 = sorted(data.draw(st.lists(st.integers(0, w), min_size=2, max_size=2)))
    y1, y2 = sorted(data.draw(st.lists(st.integers(0, h), min_size=2, max_size=2)))
    px = action_vector([x1, y1, x2, y2], w, h)
    norm = action_vector([x1 / w, y1 / h, x2 / w, y2 / h])
    assert px == pytest.approx(norm, abs=1e-12)
    assert all(0.0 <= v <= 1.0 for v in px)


def test_stored_vector_is_the_enclosing_box_rounded_and_its_text_reads_back():
    boxes = [(0.1, 0.2, 0.3, 0.4), (0.5, 0.1, 0.7, 0.3)]
    cx, cy, s = change_action(boxes)
    assert (cx, cy) == (0.4, 0.25) and s == round(math.sqrt(0.6 * 0.3), 4)
    assert change_action([]) is None
    assert [float(v) for v in action_text((cx, cy, s)).strip("[]").split(",")] == [cx, cy, s]
    assert action_box((0.5, 0.5, 0.2)) == pytest.approx((0.4, 0.4, 0.6, 0.6))
