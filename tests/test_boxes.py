"""Box parsing, conventions, IoU and matching (medrl.boxes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medrl import boxes as B


def test_radvlm_answer_with_several_boxes_and_findings():
    text = ("There is a nodule located at the coordinates [0.12, 0.34, 0.56, 0.78] and [0.6, 0.1, 0.9, 0.3]; "
            "an effusion located at the coordinates [0.05, 0.7, 0.4, 0.95].")
    assert B.truth_boxes_in_text(text) == [(0.12, 0.34, 0.56, 0.78), (0.6, 0.1, 0.9, 0.3), (0.05, 0.7, 0.4, 0.95)]


def test_pixel_truth_boxes_normalised_by_image_size():
    assert B.truth_boxes_in_text("at [64, 32, 128, 96]", width=256, height=128) == [(0.25, 0.25, 0.5, 0.75)]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("at [0.1, 0.2, 0.3]", "box with 3 numbers"),
        ("at [nan, 0.2, 0.3, 0.4]", "box with NaN or infinite coordinate"),
        ("at [0.5, 0.2, 0.3, 0.4]", "box with x2 < x1 or y2 < y1"),
        ("at [10, 20, 30, 40]", "coordinates above 1 with no known image size"),
        ("at [10, 20, 300, 40]", "box outside the image"),
    ],
)
def test_malformed_truth_boxes_raise_with_reason(text, reason):
    with pytest.raises(B.BoxError) as err:
        B.truth_boxes_in_text(text, width=None if "no known" in reason else 100, height=None if "no known" in reason else 100)
    assert str(err.value) == reason


def test_lenient_parse_reads_model_formats():
    text = ('<answer>{"bbox_2d": [10, 20, 30, 40]} <|box_start|>(100,200),(300,400)<|box_end|> '
            '[[0.1,0.2,0.3,0.4]] [0.9, 0.9, 0.1, 0.1] [1,2,3]</answer>')
    assert B.parse_boxes(text) == [
        (10.0, 20.0, 30.0, 40.0),
        (100.0, 200.0, 300.0, 400.0),
        (0.1, 0.2, 0.3, 0.4),
        (0.1, 0.1, 0.9, 0.9),  # swapped corners are reordered
    ]


def test_conventions_round_trip_and_auto_rule():
    box = (0.1, 0.2, 0.5, 0.6)
    for conv in ("norm1", "norm1000", "abs", "abs_resized"):
        there = B.from_norm1(box, conv, width=640, height=480)
        back = B.to_norm1(there, conv, width=640, height=480)
        assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(box, back)), conv
    assert B.resolve_convention((0.1, 0.2, 0.5, 0.6), "auto", None, None) == "norm1"
    assert B.resolve_convention((100, 200, 500, 400), "auto", 640, 480) == "abs"
    assert B.resolve_convention((100, 200, 900, 700), "auto", 640, 480) == "norm1000"
    assert B.resolve_convention((100, 200, 900, 700), "auto", None, None) == "norm1000"
    with pytest.raises(B.BoxError):
        B.to_norm1((100, 200, 5000, 700), "auto")
    with pytest.raises(ValueError):
        B.to_norm1(box, "pixels")


@pytest.mark.parametrize("h, w", [(1024, 768), (2048, 2500), (30, 40), (512, 512), (3000, 200)])
@pytest.mark.parametrize("min_px, max_px", [(3136, 12845056), (3136, 1003520), (200704, 1003520)])
def test_smart_resize_matches_transformers(h, w, min_px, max_px):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    assert B.smart_resize(h, w, min_pixels=min_px, max_pixels=max_px) == smart_resize(
        h, w, factor=28, min_pixels=min_px, max_pixels=max_px
    )


def test_abs_resized_uses_processor_size_not_original():
    # A 1000x800 (HxW) image resized for Qwen2.5-VL within 1003520 pixels.
    rh, rw = B.smart_resize(1000, 800, max_pixels=1003520)
    box = B.to_norm1((0, 0, rw / 2, rh / 2), "abs_resized", width=800, height=1000, max_pixels=1003520)
    assert box == pytest.approx((0, 0, 0.5, 0.5))


def test_iou_closed_form():
    assert B.iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert B.iou((0, 0, 1, 1), (1, 1, 2, 2)) == 0.0
    assert B.iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)
    assert B.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_hungarian_beats_greedy():
    # Greedy would pair pred 0 with true 0 (0.6) and leave pred 1 with a poor match.
    true = [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.6, 1.0)]
    pred = [(0.0, 0.0, 0.6, 1.0), (0.0, 0.0, 0.9, 1.0)]
    pairs = B.match_boxes(pred, true)
    assert {(p, t) for p, t, _ in pairs} == {(0, 1), (1, 0)}
    assert sum(v for *_, v in pairs) == pytest.approx(1.0 + 0.9)


def test_stored_ground_truth_shapes_read_strictly():
    expected = [(0.1, 0.2, 0.3, 0.4)]
    assert B.read_truth_boxes("[[0.1, 0.2, 0.3, 0.4]]") == expected
    assert B.read_truth_boxes([[0.1, 0.2, 0.3, 0.4]]) == expected
    assert B.read_truth_boxes([0.1, 0.2, 0.3, 0.4]) == expected
    assert B.read_truth_boxes({"bbox_2d": [0.1, 0.2, 0.3, 0.4]}) == expected
    assert B.read_truth_boxes(np.array([np.array([0.1, 0.2, 0.3, 0.4])], dtype=object)) == expected
    assert B.read_truth_boxes(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32))[0] == pytest.approx(expected[0])
    assert B.read_truth_boxes("[]") == [] and B.read_truth_boxes(None) == [] and B.read_truth_boxes(np.array([])) == []
    assert B.read_truth_boxes([[16, 32, 48, 64]], width=64, height=128) == [(0.25, 0.25, 0.75, 0.5)]
    assert B.read_truth_boxes([[0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]], zero_box_is_empty=True) == expected
    assert B.format_boxes(expected) == "[[0.1,0.2,0.3,0.4]]"


@pytest.mark.parametrize("value, reason", [
    ("[[0.1,", "boxes are not JSON"),
    ("no finding", "boxes are not JSON"),
    (7, "boxes are int, not a list of boxes"),
    ([[0.1, 0.2, 0.3]], "box with 3 numbers"),
    ([[0.5, 0.2, 0.3, 0.4]], "box with x2 < x1 or y2 < y1"),
    ([["a", 0.2, 0.3, 0.4]], "box ['a', 0.2, 0.3, 0.4] is not a list of numbers"),
    ([[10, 20, 30, 40]], "coordinates above 1 with no known image size"),
    ([[0.2, 0.2, 0.2, 0.4]], "box with zero width or height"),
    ([[0.1, 0.2, 0.10001, 0.4]], "box with zero width or height"),  # zero once stored with 4 decimals
    ("[[0.1, 0.2, NaN, 0.4]]", "box with NaN or infinite coordinate"),
])
def test_stored_ground_truth_problems_name_the_reason(value, reason):
    with pytest.raises(B.BoxError) as err:
        B.read_truth_boxes(value)
    assert str(err.value) == reason


def test_box_text_writes_exactly_the_stored_truth():
    assert B.box_text((0.1, 0.25, 1.0, 0.0)) == "[0.10, 0.25, 1.00, 0.00]"  # RadVLM's two decimals
    assert B.box_text((0.203125, 0.5, 0.71875, 0.6)) == "[0.2031, 0.50, 0.7188, 0.60]"  # a pixel box's 4 digits
    box = B.read_truth_boxes([[13, 5, 46, 39]], width=64, height=64)[0]
    assert B.truth_boxes_in_text(B.box_text(box)) == [box]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=400) | st.from_regex(r"[\[\]\(\),.0-9eE+\- nai]{0,300}"))
def test_lenient_parsing_never_raises_and_yields_ordered_finite_boxes(text):
    for b in B.parse_boxes(text):
        assert len(b) == 4 and all(math.isfinite(v) for v in b)
        assert b[0] <= b[2] and b[1] <= b[3]
    try:
        B.read_truth_boxes(text)  # the strict reader raises BoxError and nothing else
    except B.BoxError:
        pass


_box = st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4).map(lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))


@settings(max_examples=200, deadline=None)
@given(st.lists(_box, min_size=1, max_size=3), st.lists(_box, min_size=1, max_size=3))
def test_small_exact_matching_equals_hungarian(pred, true):
    from scipy.optimize import linear_sum_assignment

    pairs = B.match_boxes(pred, true)
    assert len({p for p, _, _ in pairs}) == len(pairs) == len({t for _, t, _ in pairs})  # one-to-one
    m = np.array([[B.iou(p, t) for t in true] for p in pred])
    rows, cols = linear_sum_assignment(m, maximize=True)
    assert sum(v for *_, v in pairs) == pytest.approx(m[rows, cols].sum(), abs=1e-9)


def test_one_convention_check_for_every_reader():
    """iou, enhanced and change raise the same clear error on an unknown convention; `medrl eval` offers the list."""
    from medrl.evaluation.commands import register
    from medrl.rewards import change, enhanced, iou

    assert B.check_convention("abs_resized") == "abs_resized"
    for module in (iou, enhanced, change):
        with pytest.raises(ValueError, match=r"box_convention: unknown box convention 'pixels'; expected one of "
                                             r"norm1, norm1000, abs, abs_resized, auto"):
            module.compute_score("medrl/grounding", "<answer>[1, 2, 3, 4]</answer>", "[]", {},
                                 box_convention="pixels")
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    action = next(a for a in sub.choices["eval"]._actions if "--box-convention" in a.option_strings)
    assert tuple(action.choices) == B.CONVENTIONS
