"""`medrl reward new`, then docs/rewards.md's walk-through as a new user does it: edit, test, check, spec, score."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from medrl.cli import main

# The docs' edit (docs/rewards.md): a lesion-count rule (the same text as in "Writing your own reward").
LESION_RULE = textwrap.dedent('''
    from medrl.boxes import parse_boxes
    from medrl.rewards.iou import truth_boxes

    KEYS = ("score", "n_pred", "n_true")
    SCORE_RANGE = (0.0, 1.0)


    def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                      **kwargs: Any) -> dict:
        """1 when the answer draws one box per lesion, 0.5 less for each box too many or too few."""
        answer, _ = answer_section(solution_str)
        n_pred, n_true = len(parse_boxes(answer)), len(truth_boxes(ground_truth))
        return {"score": max(0.0, 1.0 - 0.5 * abs(n_pred - n_true)), "n_pred": float(n_pred), "n_true": float(n_true)}
''')
LESION_CASES = textwrap.dedent('''
    CASES = [
        ("<think>x</think><answer>Nodule at [0.1, 0.2, 0.3, 0.4].</answer>", "[[0.1, 0.2, 0.3, 0.4]]", 1.0),
        ("<answer>[0.1, 0.2, 0.3, 0.4] and [0.5, 0.5, 0.6, 0.6]</answer>", "[[0.1, 0.2, 0.3, 0.4]]", 0.5),
        ("<answer>No abnormalities.</answer>", "[]", 1.0),
        ("", "[[0.1, 0.2, 0.3, 0.4]]", 0.5),
    ]
''')


def pytest_file(path, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)], cwd=cwd,
                          capture_output=True, text=True)


def test_new_writes_a_reward_whose_test_passes_as_written(tmp_path, capsys):
    assert main(["reward", "new", "lesion", "--dir", str(tmp_path / "my_rewards")]) == 0
    reward, test = tmp_path / "my_rewards" / "lesion.py", tmp_path / "my_rewards" / "test_lesion.py"
    text = reward.read_text()
    assert "def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None," \
           in text and 'KEYS = ("score", "has_answer")' in text and "Contract" in text
    assert "medrl reward check" in capsys.readouterr().out  # it says what to do next
    run = pytest_file(test, tmp_path)
    assert run.returncode == 0 and "6 passed" in run.stdout, run.stdout + run.stderr
    # The generated test guards the rule: break it and the test fails.
    reward.write_text(text.replace("1.0 if hit else 0.0", "0.0"))
    assert pytest_file(test, tmp_path).returncode == 1


@pytest.mark.parametrize("name, error", [("iou", "is a built-in reward"), ("test_x", "Python identifier"),
                                         ("lesion-size", "Python identifier")])
def test_new_refuses_bad_names(tmp_path, capsys, name, error):
    assert main(["reward", "new", name, "--dir", str(tmp_path)]) == 2
    assert error in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_new_does_not_overwrite_without_force(tmp_path, capsys):
    assert main(["reward", "new", "lesion", "--dir", str(tmp_path)]) == 0
    (tmp_path / "lesion.py").write_text("# my work\n")
    assert main(["reward", "new", "lesion", "--dir", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err and (tmp_path / "lesion.py").read_text() == "# my work\n"
    assert main(["reward", "new", "lesion", "--dir", str(tmp_path), "--force"]) == 0
    assert "def compute_score" in (tmp_path / "lesion.py").read_text()


def test_new_user_walkthrough(tmp_path, capsys):
    folder = tmp_path / "my_rewards"
    assert main(["reward", "new", "lesion", "--dir", str(folder)]) == 0
    reward, test = folder / "lesion.py", folder / "test_lesion.py"
    # Edit: the rule, and the rule's cases in the test.
    text = reward.read_text()
    reward.write_text(text[:text.index("KEYS = ")] + LESION_RULE.lstrip())
    test.write_text(re.sub(r"CASES = \[.*?\n\]\n", LESION_CASES.lstrip(), test.read_text(), flags=re.S))
    run = pytest_file(test, tmp_path)
    assert run.returncode == 0 and "6 passed" in run.stdout, run.stdout + run.stderr
    capsys.readouterr()
    assert main(["reward", "check", str(reward)]) == 0
    assert "OK: the contract holds" in capsys.readouterr().out
    # A spec next to the rewards composes it with IoU; score a rollouts file with it.
    spec = tmp_path / "grounding.yaml"
    spec.write_text("routes:\n  medrl/grounding:\n    - {name: iou, weight: 0.8}\n"
                    "    - {path: my_rewards/lesion.py, weight: 0.2}\n")
    assert main(["reward", "check", str(spec)]) == 0
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text("\n".join(json.dumps({"data_source": "medrl/grounding", "solution": s,
                                              "ground_truth": "[[0.25, 0.25, 0.5, 0.5]]"})
                                  for s in ("<answer>[0.25, 0.25, 0.5, 0.5]</answer>",
                                            "<answer>[0.25, 0.25, 0.5, 0.5] [0.6, 0.6, 0.7, 0.7]</answer>",
                                            "<answer>nothing</answer>")) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["reward", "score", "--reward", str(spec), "--input", str(rollouts), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["lesion"] for r in rows] == [1.0, 0.5, 0.5]
    assert [r["score"] for r in rows] == pytest.approx([1.0, 0.8 * 0.5 + 0.2 * 0.5, 0.2 * 0.5])
    assert "medrl/grounding" in capsys.readouterr().out
