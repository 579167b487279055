"""Routing by data_source, spec forms, registry, and clear errors."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from medrl.rewards import compose, iou

GROUND = ("medrl/grounding", "<think>a</think><answer>[0.1, 0.2, 0.5, 0.6]</answer>", "[[0.1,0.2,0.5,0.6]]")


def test_default_routes_and_helpers():
    assert compose.route_names()[:1] == ["medrl/grounding"]
    assert compose.has_route("medrl/report") and compose.has_route("medrl/vqa")
    assert not compose.has_route("openai/gsm8k")
    res = compose.compute_score(*GROUND)
    assert res["score"] == pytest.approx(1.0) and res["iou"] == 1.0 and res["format"] == 1.0
    res = compose.compute_score("medrl/grounding", "[0.1, 0.2, 0.5, 0.6]", GROUND[2])
    assert res["score"] == pytest.approx(0.9)  # right box, no think/answer format


def test_unknown_source_names_itself_and_the_routes():
    with pytest.raises(compose.UnknownDataSourceError) as err:
        compose.compute_score("vindr/grounding", "x", "[]")
    msg = str(err.value)
    assert "'vindr/grounding'" in msg and "medrl/grounding" in msg and "medrl/vqa" in msg


def test_patterns_exact_first_then_in_order():
    spec = {"routes": {"vindr/*": {"iou": 1.0}, "*": {"format": 1.0}, "vindr/special": {"bleu": 1.0}}}
    assert [t.name for t in compose.route_for("vindr/x", spec).terms] == ["iou"]
    assert [t.name for t in compose.route_for("vindr/special", spec).terms] == ["bleu"]
    assert [t.name for t in compose.route_for("other", spec).terms] == ["format"]
    assert compose.has_route("anything", spec)


def test_spec_forms_give_the_same_result(tmp_path):
    raw = {"routes": {"medrl/grounding": {"iou": 0.5, "format": 0.5}}, "kwargs": {"iou": {"no_finding_score": 0.6}}}
    path = tmp_path / "spec.yaml"
    path.write_text("routes:\n  medrl/grounding: {iou: 0.5, format: 0.5}\nkwargs:\n  iou: {no_finding_score: 0.6}\n")
    results = [compose.compute_score(*GROUND, spec=s) for s in (raw, json.dumps(raw), str(path))]
    assert results[0] == results[1] == results[2]
    nf = compose.compute_score("medrl/grounding", "No abnormalities.", "[]", spec=raw)
    assert nf["iou"] == pytest.approx(0.6) and nf["score"] == pytest.approx(0.3)
    # Per-term kwargs and list form.
    lst = {"routes": {"g": [{"name": "iou", "weight": 1.0, "no_finding_score": 0.2}]}}
    assert compose.compute_score("g", "No abnormalities.", "[]", spec=lst)["score"] == pytest.approx(0.2)
    # A bare reward name routes every source to that reward.
    assert compose.compute_score("whatever", *GROUND[1:], spec="iou")["score"] == 1.0


def test_reward_kwargs_from_verl_reach_rewards():
    res = compose.compute_score("medrl/grounding", "[100, 200, 500, 600]", GROUND[2], {}, box_convention="norm1000")
    assert res["iou"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad,match", [
    ({"routes": {"g": {"nope": 1.0}}}, "unknown reward 'nope'.*iou"),
    ({"routes": {"g": {"iou": -1}}}, "weight"),
    ({"routes": {}}, "no routes"),
    ({"routes": {"g": 3}}, "mapping"),
    ("not/a/file.yaml", "not a file"),
])
def test_bad_specs_are_clear(bad, match):
    with pytest.raises(ValueError, match=match):
        compose.load_spec(bad)


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n  g: {nope: 1}\n")
    with pytest.raises(ValueError, match="bad.yaml.*nope"):
        compose.load_spec(str(path))


def test_registry_extension():
    compose.register_reward("length", lambda ds, sol, gt, info=None, **kw: {"score": min(1.0, len(sol) / 10),
                                                                          "chars": float(len(sol))},
                            keys=("score", "chars"))
    spec = {"routes": {"t": {"length": 0.5, "format": 0.5}}}
    res = compose.compute_score("t", "12345", None, spec=spec)
    assert res["score"] == pytest.approx(0.25) and res["length/chars"] == 5.0
    with pytest.raises(ValueError, match="score"):
        compose.register_reward("bad", lambda *a, **k: {}, keys=("chars",))


def test_async_and_batch_agree_with_sync():
    rows = [GROUND, ("medrl/vqa", "yes", "yes"), ("medrl/report", "no finding", "No finding.")]
    sync = [compose.compute_score(*r) for r in rows]

    async def main():
        return [await compose.compute_score_async(*r) for r in rows]

    assert asyncio.run(main()) == sync
    assert compose.compute_score_batch(*zip(*rows), None) == sync
    assert all(tuple(r) == compose.load_spec(None).keys for r in sync)
    assert sync[0]["iou/n_pred"] == 1.0 and math.isnan(sync[1]["iou/n_pred"])  # absent reward: keys kept, NaN
    assert iou.KEYS[0] == "score"


def test_a_reward_key_means_only_the_rows_whose_route_uses_it():
    """A mixed batch: each reward key's mean over the batch (nanmean) and per data source (verl) covers its rows."""
    import numpy as np
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    ground = [GROUND, ("medrl/grounding", "<answer>[0.1, 0.2, 0.3, 0.4]</answer>", "[[0.1,0.2,0.5,0.6]]")]
    report = [("medrl/report", "<answer>no finding</answer>", "No finding.")] * 3
    rows = ground + report
    outs = compose.compute_score_batch(*zip(*rows), None)
    ious = [compose.compute_score(*r)["iou"] for r in ground]
    assert 0 < min(ious) < max(ious) == 1.0
    assert np.nanmean([o["iou"] for o in outs]) == pytest.approx(np.mean(ious))  # not diluted by report rows
    assert all(math.isnan(o["iou"]) and math.isnan(o["iou/n_pred"]) for o in outs[2:])
    assert all(math.isnan(o["bleu"]) for o in outs[:2]) and [o["bleu"] for o in outs[2:]] == [1.0] * 3
    assert all(math.isfinite(o["score"]) for o in outs)
    # verl's validation metrics are per data source: each shows its own rewards, nothing of the others.
    extra = {k: [o[k] for o in outs] for k in outs[0]}
    metrics = process_validation_metrics([r[0] for r in rows], list(range(len(rows))), extra)
    assert metrics["medrl/grounding"]["iou"]["mean@1"] == pytest.approx(np.mean(ious))
    assert metrics["medrl/report"]["bleu"]["mean@1"] == 1.0
    assert math.isnan(metrics["medrl/report"]["iou"]["mean@1"])


def test_overrides_reach_every_reward_that_takes_them():
    spec = compose.load_spec({"routes": {"medrl/grounding": {"iou": {"weight": 1.0, "box_convention": "norm1"}},
                                         "medrl/report": {"bleu": 1.0}},
                              "kwargs": {"iou": {"box_convention": "norm1"}}})
    row = ("medrl/grounding", "<answer>[100, 200, 500, 600]</answer>", "[[0.1,0.2,0.5,0.6]]")
    assert compose.compute_score(*row, spec=spec)["score"] == 0.0
    over = compose.with_reward_kwargs(spec, box_convention="norm1000")
    assert compose.compute_score(*row, spec=over)["score"] == 1.0  # over the route's own setting too
    assert compose.reward_kwargs(over, "iou", "medrl/grounding") == {"box_convention": "norm1000"}
    assert "box_convention" not in compose.reward_kwargs(over, "bleu", "medrl/report")  # bleu takes no such argument


def test_spec_from_hydra_reward_kwargs():
    """`+reward.custom_reward_function.reward_kwargs.spec={...}` reaches the reward as an OmegaConf mapping."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"spec": {"routes": {"medrl/grounding": [{"name": "iou", "weight": 1.0}]},
                                     "kwargs": {"iou": {"no_finding_score": 0.5}}}})
    kwargs = dict(cfg)  # what verl's get_custom_reward_fn does with reward_kwargs
    res = compose.compute_score("medrl/grounding", "No abnormalities.", "[]", {}, **kwargs)
    assert res["score"] == pytest.approx(0.5)
