"""Inputs for the reward contract check: what a policy may write, against the ground truths of each task.

Model outputs cover what breaks rewards in practice: empty and huge replies, unicode,
unclosed, nested and repeated think/answer tags, boxes with the wrong count, NaN,
negative, swapped or out-of-range coordinates, and the same box in every coordinate
convention and number notation. Ground truths follow the data_source's task
(grounding, report, vqa, change action), in the forms verl hands over (JSON text,
lists, parquet's numpy arrays), or come from the rows of a real data file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

BOX = "[0.12, 0.34, 0.56, 0.78]"
LONG_CHARS = 200_000  # ten times what the built-in rewards read; a reward must not choke on it


def _outputs() -> tuple[tuple[str, str], ...]:
    ans = lambda text: f"<think>Right lower zone opacity.</think><answer>{text}</answer>"  # noqa: E731
    return (
        ("empty answer", ""),
        ("whitespace only", " \n\t "),
        ("well-formed answer", ans(f"Nodule located at the coordinates {BOX}.")),
        ("no-finding answer", ans("No abnormalities or lesions are detected on this Chest X-ray.")),
        ("plain text, no tags", "The heart is enlarged."),
        ("very long reasoning", "<think>" + "the lungs are clear " * (LONG_CHARS // 20) + f"</think><answer>{BOX}</answer>"),
        ("very long answer", "<answer>" + "effusion, " * (LONG_CHARS // 10) + "</answer>"),
        ("one huge number", "<answer>[" + "9" * 5000 + ", 0.1, 0.2, 0.3]</answer>"),
        ("deeply nested brackets", "[" * 20_000 + "]" * 20_000),
        ("many boxes", "<answer>" + ", ".join([BOX] * 2000) + "</answer>"),
        ("unicode (CJK, emoji, accents)", ans(f"结节 🫁 épanchement pleural à droite {BOX}")),
        ("right-to-left and zero-width", ans("\u202eتجمع سوائل\u200b\u200d\ufeff [0.1,\u200b 0.2, 0.5, 0.6]")),
        ("replacement and control characters", "\ufffd\x00\x07\x1b[31m<answer>\x00" + BOX + "\ufffd</answer>"),
        ("unclosed think", "<think>I look at the left lung and then"),
        ("unclosed answer", f"<think>ok</think><answer>Nodule at {BOX}"),
        ("closing tags only", f"</think></answer>{BOX}</answer>"),
        ("nested think", f"<think><think>a</think>b</think><answer>{BOX}</answer>"),
        ("nested answer", f"<answer><answer>{BOX}</answer></answer>"),
        ("two answers", f"<answer>[0.1, 0.1, 0.2, 0.2]</answer><answer>{BOX}</answer>"),
        ("answer inside think", f"<think><answer>{BOX}</answer></think>"),
        ("upper-case tags", f"<THINK>x</THINK><ANSWER>{BOX}</ANSWER>"),
        ("box with 3 numbers", ans("[0.12, 0.34, 0.56]")),
        ("box with 5 numbers", ans("[0.12, 0.34, 0.56, 0.78, 0.9]")),
        ("box with words", ans("[x1, y1, x2, y2]")),
        ("swapped corners", ans("[0.56, 0.78, 0.12, 0.34]")),
        ("zero-area box", ans("[0.3, 0.3, 0.3, 0.3]")),
        ("NaN and inf", ans("[nan, 0.2, inf, 0.6] [NaN, -inf, 1e999, 0.5]")),
        ("negative box", ans("[-0.2, -0.1, 0.3, 0.4]")),
        ("out of range norm1", ans("[1.5, 2.0, 3.0, 4.0]")),
        ("beyond any image", ans("[5000, 6000, 90000, 99999]")),
        ("float extremes", ans("[1e-320, 5e-324, 1.7976931348623157e308, 1e308]")),
        ("unclosed box", ans("[0.12, 0.34, 0.56,")),
        ("norm1 box", ans("[0.12, 0.34, 0.56, 0.78]")),
        ("norm1000 box", ans("[120, 340, 560, 780]")),
        ("pixel box", ans("[123, 261, 573, 599]")),
        ("point pair", ans("(0.12, 0.34), (0.56, 0.78)")),
        ("bbox_2d JSON", ans('[{"bbox_2d": [120, 340, 560, 780], "label": "nodule"}]')),
        ("scientific notation", ans("[1.2e-1, 3.4E-1, 5.6e-01, 7.8e-1]")),
        ("no leading zeros", ans("[.12, .34, .56, .78]")),
        ("decimal commas", ans("[0,12; 0,34; 0,56; 0,78]")),
        ("percentages", ans("[12%, 34%, 56%, 78%]")),
        ("full-width digits", ans("[０.１２, ０.３４, ０.５６, ０.７８]")),
        ("Arabic-Indic digits", ans("[٠٫١٢, ٠٫٣٤, ٠٫٥٦, ٠٫٧٨]")),
        ("thousands separators", ans("[1,200, 3,400, 5,600, 7,800]")),
        ("multiple-choice letter", ans("B) pleural effusion")),
        ("yes", ans("Yes.")),
        ("action vector", ans("[0.30, 0.40, 0.20]")),
    )


OUTPUTS: tuple[tuple[str, str], ...] = _outputs()

_NP_TRUTH: Any = None


def _numpy_truth() -> Any:
    """Ground truth as parquet returns a nested list: an object array of float arrays."""
    global _NP_TRUTH
    if _NP_TRUTH is None:
        import numpy as np

        _NP_TRUTH = np.empty(1, dtype=object)
        _NP_TRUTH[0] = np.array([0.1, 0.2, 0.5, 0.6])
    return _NP_TRUTH


def truths_for(data_source: str) -> list[tuple[str, Any]]:
    """(name, ground truth) pairs for the task a data_source names; every kind for an unknown task."""
    grounding = [("one true box", "[[0.1, 0.2, 0.5, 0.6]]"),
                 ("two true boxes", "[[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]]"),
                 ("no finding", "[]"),
                 ("box as a list", [[0.1, 0.2, 0.5, 0.6]]),
                 ("box as parquet's numpy array", _numpy_truth())]
    report = [("reference report", "Small left pleural effusion. No pneumothorax. Heart size is normal.")]
    vqa = [("yes/no answer", "yes"), ("multiple-choice answer", "B")]
    action = [("action vector", "[0.3, 0.4, 0.2]")]
    ds = data_source.lower()
    if "action" in ds:
        return action
    if "grounding" in ds:
        return grounding
    if "report" in ds or "caption" in ds:
        return report
    if "vqa" in ds:
        return vqa
    return grounding + report + vqa + action


EXTRA_INFO = {"width": 1024, "height": 768, "index": 0, "num_turns": 2, "rollout_reward_scores": {}}


@dataclass(frozen=True)
class Probe:
    """One reward call's input and a name for it."""

    name: str
    data_source: str
    solution: str
    ground_truth: Any
    extra_info: dict

    def describe(self) -> str:
        """How a report names this input."""
        return f"{self.name} [data_source {self.data_source}]"


def probes_for(data_sources: Sequence[str], rows: Sequence[dict] | None = None,
               ground_truths: Sequence[Any] | None = None) -> list[Probe]:
    """Every output against the ground truths of each data source (or each matching row, or the given truths).

    Rows are dicts with data_source, ground_truth, extra_info and optionally a
    `solution` (a real rollout, checked as one more output) and a `name`.
    """
    out = []
    for ds in data_sources:
        if rows:
            cases = [(r.get("name", f"row {i}"), r["ground_truth"], {**EXTRA_INFO, **dict(r.get("extra_info") or {})},
                      r.get("solution")) for i, r in enumerate(rows) if str(r["data_source"]) == ds]
        elif ground_truths:
            cases = [(f"ground truth {gt!r:.60}", gt, EXTRA_INFO, None) for gt in ground_truths]
        else:
            cases = [(name, gt, EXTRA_INFO, None) for name, gt in truths_for(ds)]
        for case, gt, info, solution in cases:
            outputs = OUTPUTS + ((("the row's own solution", solution),) if isinstance(solution, str) else ())
            out += [Probe(f"output '{name}' x {case}", ds, text, gt, info) for name, text in outputs]
    return out
