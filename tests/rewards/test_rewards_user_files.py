"""Users' reward files in specs: loading by path, composition, clear errors at spec load, other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medrl.cli import main
from medrl.rewards import compose, iou
from medrl.rewards.user_reward import RewardFileError, load_reward_file

# Counts the boxes in the reply; `per_box` is a per-term keyword argument from the spec.
LESION = '''
from __future__ import annotations

from dataclasses import dataclass

from medrl.boxes import parse_boxes
from helpers import clip  # a module next to this file

KEYS = ("score", "n_boxes")


@dataclass
class Count:  # dataclasses look their module up by name: the loader must register it
    n: int


def compute_score(data_source, solution_str, ground_truth, extra_info=None, per_box=0.25, **kwargs):
    n = len(parse_boxes(solution_str))
    return {"score": clip(n * per_box), "n_boxes": float(n)}


def tagged(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 if "<answer>" in solution_str else 0.0
'''
HELPERS = "def clip(x):\n    return max(0.0, min(1.0, x))\n"
SOLUTION = "<think>x</think><answer>[0.1, 0.2, 0.5, 0.6] and [0.6, 0.6, 0.7, 0.7]</answer>"
TRUTH = "[[0.1,0.2,0.5,0.6]]"


@pytest.fixture()
def project(tmp_path):
    """A user's project: rewards/lesion.py (+ helpers.py) and specs/grounding.yaml pointing at it."""
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "lesion.py").write_text(LESION)
    (tmp_path / "rewards" / "helpers.py").write_text(HELPERS)
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "grounding.yaml"
    spec.write_text(textwrap.dedent("""
        routes:
          medrl/grounding:
            - {name: iou, weight: 0.5}
            - {path: ../rewards/lesion.py, name: compute_score, weight: 0.5, per_box: 0.125}
          medrl/report:
            bleu: 0.5
            tag: {path: ../rewards/lesion.py, name: tagged, weight: 0.5}
    """))
    return tmp_path, spec


def test_spec_composes_a_user_file_relative_to_the_spec(project, tmp_path_factory, monkeypatch):
    root, spec = project
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # the path resolves against the spec, not the cwd
    res = compose.compute_score("medrl/grounding", SOLUTION, TRUTH, {}, spec=str(spec))
    iou_score = iou.compute_score("medrl/grounding", SOLUTION, TRUTH, {})["score"]
    assert res["lesion"] == 2 * 0.125 and res["lesion/n_boxes"] == 2.0
    assert res["score"] == pytest.approx(0.5 * iou_score + 0.5 * 0.25)
    # The mapping form labels the term by its key; a bare float return is the score.
    report = compose.compute_score("medrl/report", "<answer>Effusion.</answer>", "Effusion.", {}, spec=str(spec))
    assert report["tag"] == 1.0 and report["score"] == pytest.approx(1.0)
    assert tuple(res) == tuple(report) == compose.load_spec(str(spec)).keys  # verl needs one key set


def test_reward_kwargs_for_other_rewards_do_not_reach_a_function_without_kwargs(project):
    _, spec = project
    # box_convention is meant for iou; `tagged` takes no **kwargs and must not receive it.
    res = compose.compute_score("medrl/report", "<answer>x</answer>", "x", {}, spec=str(spec), box_convention="norm1")
    assert res["tag"] == 1.0


def test_file_target_labels_and_defaults(project):
    root, _ = project
    r = load_reward_file(root / "rewards" / "lesion.py")
    assert (r.label, r.function, r.keys, r.score_range, r.accepts) == ("lesion", "compute_score", KEYS_LESION,
                                                                      (0.0, 1.0), None)
    t = load_reward_file(root / "rewards" / "lesion.py", "tagged")
    assert t.label == "lesion.tagged" and t.keys is None
    assert t.accepts == frozenset({"data_source", "solution_str", "ground_truth", "extra_info"})
    spec = compose.load_spec(f"{root}/rewards/lesion.py:tagged")
    assert compose.compute_score("any/source", "<answer>a</answer>", "", {}, spec=spec)["score"] == 1.0


KEYS_LESION = ("score", "n_boxes")


@pytest.mark.parametrize("term, source, message", [
    ("{path: missing.py}", None, r"reward spec .*spec.yaml: .*reward file .*missing.py: no such file"),
    ("{path: r.py, name: score_it}", "def compute_score(data_source, solution_str, ground_truth, extra_info=None):"
                                      "\n    return 0.0\n",
     r"r.py: no function 'score_it'; functions defined there: \['compute_score'\]"),
    ("{path: r.py}", "def compute_score(text, truth):\n    return 0.0\n",
     r"r.py:compute_score: signature compute_score\(text, truth\) cannot be called the way verl calls a reward"),
    ("{path: r.py}", "def compute_score(data_source, solution_str, ground_truth, extra_info, image):\n    return 0\n",
     r"cannot be called the way verl calls a reward, .*: missing a required argument: 'image'"),
    ("{path: r.py}", "import numpy\nraise RuntimeError('no GPU here')\n",
     r"r.py: importing it failed: RuntimeError: no GPU here"),
    ("{path: r.py}", "def compute_score(data_source, solution_str,\n", r"r.py: importing it failed: SyntaxError"),
    ("{path: r.py, weight: 1, thresh: 0.5}",
     "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n",
     r"takes no keyword argument\(s\) \['thresh'\]"),
    ("{path: r.py}", "KEYS = ('n', 'score')\ndef compute_score(data_source, solution_str, ground_truth, "
                     "extra_info=None, **kw):\n    return 0.0\n", r"KEYS must be a tuple of strings starting with"),
    ("{path: r.py}", "SCORE_RANGE = (1, 0)\ndef compute_score(data_source, solution_str, ground_truth, "
                     "extra_info=None, **kw):\n    return 0.0\n", r"SCORE_RANGE must be finite with low <= high"),
    ("{path: r.py}", "compute_score = 3\n", r"'compute_score' is a int, not a function"),
    ("{path: iou.py}", None, r"label 'iou' is a built-in reward; give the term another label"),
])
def test_broken_user_files_fail_at_spec_load_naming_file_and_problem(tmp_path, term, source, message):
    if source is not None:
        (tmp_path / "r.py").write_text(source)
    (tmp_path / "iou.py").write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                     "    return 0.0\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"routes:\n  medrl/grounding: [{term}]\n")
    with pytest.raises(ValueError, match=message) as err:
        compose.load_spec(str(spec))
    assert str(tmp_path) in str(err.value)  # the file is named by its full path
    # The reward tools say the same and exit non-zero instead of a traceback.
    with pytest.raises(SystemExit, match=message):
        main(["reward", "explain", "--reward", str(spec), "--solution", "x", "--ground-truth", "[]"])
    assert main(["check", str(tmp_path / "train.parquet"), "--reward_spec", str(spec)]) == 2  # before any row


def test_one_label_cannot_name_two_files(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "lesion.py").write_text("def compute_score(data_source, solution_str, ground_truth, "
                                                "extra_info=None):\n    return 0.0\n")
    spec = {"routes": {"x": [{"path": str(tmp_path / "a" / "lesion.py")}, {"path": str(tmp_path / "b" / "lesion.py")}]}}
    with pytest.raises(ValueError, match=r"label 'lesion' names two rewards"):
        compose.load_spec(spec)
    spec["routes"]["x"][1]["label"] = "lesion_b"
    assert compose.load_spec(spec).keys == ("score", "lesion", "lesion_b")


def test_async_user_function_in_sync_and_async_paths(tmp_path):
    import asyncio

    (tmp_path / "judge_like.py").write_text(
        "import asyncio\n\nasync def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
        "    await asyncio.sleep(0)\n    return {'score': 0.75}\n")
    spec = {"routes": {"*": [{"path": str(tmp_path / "judge_like.py"), "weight": 1.0}]}}
    assert compose.compute_score("x", "a", "b", {}, spec=spec)["score"] == 0.75
    assert asyncio.run(compose.compute_score_async("x", "a", "b", {}, spec=spec))["score"] == 0.75


def test_loaded_in_a_fresh_process_from_another_folder(project, tmp_path_factory):
    # verl's reward workers are other processes with their own cwd: only the spec path travels.
    _, spec = project
    code = ("import json, sys; from medrl.rewards import compose; "
            "print(json.dumps(compose.compute_score('medrl/grounding', sys.argv[1], sys.argv[2], {}, spec=sys.argv[3])))")
    out = subprocess.run([sys.executable, "-c", code, SOLUTION, TRUTH, str(spec)], capture_output=True, text=True,
                         cwd=tmp_path_factory.mktemp("worker"), env={**os.environ}, check=True)
    res = json.loads(out.stdout)
    here = compose.compute_score("medrl/grounding", SOLUTION, TRUTH, {}, spec=str(spec))
    assert res["lesion/n_boxes"] == 2.0
    # The same numbers; rewards the route does not use are NaN ("does not apply") on both sides.
    assert json.dumps(res, sort_keys=True) == json.dumps(here, sort_keys=True)


def test_verl_loads_the_composed_spec_with_a_user_file(project, repo_root):
    # verl's own loader: custom_reward/medrl_reward.py by path, reward_kwargs.spec, keyword call.
    import verl.trainer.ppo.reward as verl_reward
    from omegaconf import OmegaConf

    _, spec = project
    cfg = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": str(repo_root / "custom_reward" / "medrl_reward.py"), "name": "compute_score",
        "reward_kwargs": {"spec": str(spec)}}}})
    fn = verl_reward.get_custom_reward_fn(cfg)
    res = fn(data_source="medrl/grounding", solution_str=SOLUTION, ground_truth=TRUTH,
             extra_info={"num_turns": 2, "rollout_reward_scores": {}})
    assert res["lesion/n_boxes"] == 2.0 and res["lesion"] == 0.25


def test_score_and_explain_accept_a_reward_file(project, tmp_path, capsys):
    root, spec = project
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text("\n".join(json.dumps({"data_source": "medrl/grounding", "solution": s, "ground_truth": TRUTH})
                                  for s in (SOLUTION, "<answer>[0.1, 0.2, 0.5, 0.6]</answer>", "nothing")) + "\n")
    out = tmp_path / "scores.jsonl"
    lesion = str(root / "rewards" / "lesion.py")
    assert main(["reward", "score", "--reward", lesion, "--input", str(rollouts), "--output", str(out),
                 "--histogram", str(tmp_path / "h.png")]) == 0
    assert [json.loads(line)["lesion/n_boxes"] for line in out.read_text().splitlines()] == [2.0, 1.0, 0.0]
    assert main(["reward", "score", "--reward", str(spec), "--input", str(rollouts), "--output", str(out),
                 "--histogram", str(tmp_path / "h.png")]) == 0
    assert json.loads(out.read_text().splitlines()[0])["lesion"] == 0.25
    capsys.readouterr()
    assert main(["reward", "explain", "--reward", f"{lesion}:tagged", "--solution", "<answer>x</answer>",
                 "--ground-truth", "x"]) == 0
    shown = capsys.readouterr().out
    assert "1 x lesion.tagged" in shown and "lesion.tagged" in shown.split("route")[-1]


def test_eval_box_convention_keeps_a_users_file_in_the_spec(project):
    """`medrl eval --box-convention norm1 --reward spec.yaml` with a user's file: the file stays its term's reward."""
    from medrl.evaluation.evaluate import EvalOptions, score_rows
    from medrl.evaluation.rows import EvalRow

    _, spec = project
    over = compose.with_reward_kwargs(str(spec), box_convention="norm1000", per_box=0.5)
    # The user's term keeps its file and gets the keyword its function names; iou gets the convention.
    lesion = next(t for t in over.routes[0].terms if t.name == "lesion")
    assert lesion.entry is not None and lesion.kwargs["per_box"] == 0.5
    assert compose.reward_kwargs(over, "iou", "medrl/grounding")["box_convention"] == "norm1000"
    answer = "<answer>[100, 200, 500, 600]</answer>"
    assert compose.compute_score("medrl/grounding", answer, TRUTH, {}, spec=over)["score"] == pytest.approx(
        0.5 * 1.0 + 0.5 * 0.5)
    row = EvalRow(key="0:a", index=0, data_source="medrl/grounding", messages=[], images=[], ground_truth=TRUTH,
                  ability="grounding")
    (rec,) = score_rows([row], {"0:a": answer}, EvalOptions(reward=str(spec), box_convention="norm1000"))
    assert rec["reward"]["lesion/n_boxes"] == 1.0 and rec["metrics"]["iou"] == pytest.approx(1.0)
