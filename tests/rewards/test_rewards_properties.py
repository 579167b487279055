"""Property tests: no model output makes a reward raise, leave its range, or change its keys."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from medrl.rewards import bleu, compose, enhanced, f1iou, format as fmt, giou, iou, size, vqa

NUM = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**40, 10**40),
                st.floats(0, 1), st.floats(0, 1000))
BOX_TEXT = st.lists(NUM, min_size=0, max_size=6).map(lambda v: "[" + ", ".join(str(x) for x in v) + "]")
FRAGMENT = st.one_of(
    st.text(max_size=60), BOX_TEXT, st.sampled_from([
        "<think>", "</think>", "<answer>", "</answer>", "[", "]", "((", "))", "{\"bbox_2d\": ", "<|box_start|>",
        "<|box_end|>", "No abnormalities detected.", "no pneumothorax", "cardiomegaly", "Score: 9", "yes", "(B)",
        "1e308", "-0", "nan", "[[[[[[", "]]]]]]", "\x00", "\u202e", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "right lower lobe"]),
)
SOLUTION = st.lists(FRAGMENT, max_size=12).map("".join)
TRUTH = st.one_of(
    st.just("[]"), st.just("[[0.1,0.2,0.5,0.6]]"), st.text(max_size=40), BOX_TEXT,
    st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), max_size=3),
    st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), max_size=3).map(
        lambda b: np.array([np.array(x) for x in b] + [np.zeros(4)], dtype=object)),
    st.none(), st.integers(),
)
INFO = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "width": st.one_of(st.integers(-5, 5000), st.floats(), st.text(max_size=3)),
    "height": st.one_of(st.integers(-5, 5000), st.floats()),
    "max_pixels": st.integers(-1, 10**7), "answer": st.text(max_size=40)}))
CONVENTION = st.sampled_from(["auto", "norm1", "norm1000", "abs", "abs_resized"])

REWARDS = [(iou, (0.0, 1.0)), (bleu, (0.0, 1.0)), (fmt, (0.0, 1.0)), (vqa, (0.0, 1.0)), (enhanced, (0.0, 1.0)),
           (giou, (0.0, 1.0)), (f1iou, (0.0, 1.0)), (size, (0.0, 1.0))]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(res: dict, keys: tuple, lo: float, hi: float, unused: tuple = ()) -> None:
    """Keys, score range, floats; NaN only under the rewards in `unused` (not on the row's route)."""
    assert tuple(res) == keys
    assert lo <= res["score"] <= hi
    assert all(isinstance(v, float) for v in res.values())
    assert all((v != v) == (k.split("/")[0] in unused) for k, v in res.items()), res


@SETTINGS
@given(sol=SOLUTION, gt=TRUTH, info=INFO, conv=CONVENTION)
def test_box_rewards_never_raise(sol, gt, info, conv):
    _check(iou.compute_score("medrl/grounding", sol, gt, info, box_convention=conv), iou.KEYS, 0, 1)
    res = enhanced.compute_score("medrl/grounding", sol, gt, info, box_convention=conv)
    _check(res, enhanced.KEYS, 0, 1)
    assert res["fallbacks"] == 0  # the packaged knowledge is valid: any fallback here is a bug in a part
    for module in (giou, f1iou, size):
        _check(module.compute_score("medrl/grounding", sol, gt, info, box_convention=conv), module.KEYS, 0, 1)


@SETTINGS
@given(sol=SOLUTION, gt=TRUTH)
def test_text_rewards_never_raise(sol, gt):
    for module in (bleu, fmt, vqa):
        _check(module.compute_score("x", sol, gt, None), module.KEYS, 0, 1)


@SETTINGS
@given(sol=st.text(), gt=st.text())
def test_any_unicode(sol, gt):
    for module, (lo, hi) in REWARDS:
        _check(module.compute_score("x", sol, gt, {}), module.KEYS, lo, hi)


@SETTINGS
@given(rows=st.lists(st.tuples(st.sampled_from(["medrl/grounding", "medrl/report", "medrl/vqa"]), SOLUTION, TRUTH),
                     min_size=1, max_size=6))
def test_composed_keys_identical_across_sources(rows):
    keys = compose.load_spec(None).keys
    outs = compose.compute_score_batch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], None)
    for out, row in zip(outs, rows):
        used = {t.name for t in compose.route_for(row[0]).terms}
        _check(out, keys, 0, 1, unused=tuple({k.split("/")[0] for k in keys[1:]} - used))
        assert out == compose.compute_score(row[0], row[1], row[2], None)


def test_huge_and_nested_inputs():
    huge = "<answer>" + "[" * 50_000 + "0.1, 0.2, 0.5, 0.6" + "]" * 50_000 + "</answer>"
    many = "<answer>" + " ".join(["[0.1, 0.2, 0.5, 0.6]"] * 5000) + "</answer>"
    long_words = "effusion " * 200_000
    for sol in (huge, many, long_words, "1" * 100_000, "[1e308, 1e308, 1e309, 1e308]", "[" + "9" * 400 + ",0,1,1]"):
        for module, (lo, hi) in REWARDS:
            _check(module.compute_score("x", sol, json.dumps([[0.1, 0.2, 0.5, 0.6]]), {}), module.KEYS, lo, hi)
    assert iou.compute_score("x", many, "[[0.1,0.2,0.5,0.6]]")["score"] <= 1 / 60  # 1 hit among >= 64 boxes
