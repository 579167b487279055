"""One LLaVA record -> verl RL rows (and SFT rows) for the grounding, report and vqa tasks.

Multi-turn policy (`turns`):
- ``expand`` (default): one row per gpt turn; the turns before it are the prompt's context.
  Nothing is lost and no row sees its own answer.
- ``last``: one row for the last gpt turn, with every earlier turn as context.
- ``first``: one row for the first gpt turn; the later turns are dropped and counted
  in the summary under ``turns_dropped``.
A trailing human turn with no answer is counted in ``turns_dropped`` too.

When `instruction` is on, every user turn that has an answer gets a short instruction
to answer as ``<think>...</think><answer>...</answer>``; context answers and SFT
targets are written in that same form, so SFT teaches the format that RL rewards.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrl.boxes import BoxError, box_text, find_box_candidates, truth_boxes_of, truth_json
from medrl.data import rejects
from medrl.data.images import ImageInfo, ImageOptions, load_image
from medrl.data.readers import SourceRecord
from medrl.data.rejects import RejectError
from medrl.no_finding import states_no_finding
from medrl.rewards.answer import reply

TASKS = ("grounding", "report", "vqa")
TURN_POLICIES = ("expand", "last", "first")
DEFAULT_DATA_SOURCE = {task: f"medrl/{task}" for task in TASKS}
IMAGE_TOKEN = "<image>"

INSTRUCTIONS = {
    "grounding": (
        "First think step by step inside <think> </think>, then give your final answer inside "
        "<answer> </answer>: the bounding box of each finding as [x1, y1, x2, y2] with coordinates "
        "in [0, 1], or 'No finding' if there is none."
    ),
    "report": (
        "First think step by step inside <think> </think>, then write the report inside <answer> </answer>."
    ),
    "vqa": "First think step by step inside <think> </think>, then give a short answer inside <answer> </answer>.",
}
SFT_THINK = {
    "grounding": "I look over both lung fields and the mediastinum for focal abnormalities.",
    "report": "I review the lungs, pleura, heart and mediastinum in turn.",
    "vqa": "I look at the region the question is about.",
}

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "model": "assistant", "system": "system"}
DATASET_KEYS = ("dataset", "dataset_name", "source", "data_source")
SIZE_KEYS = (("width", "height"), ("image_width", "image_height"), ("img_width", "img_height"))

@dataclass(frozen=True)
class RecordOptions:
    """Everything that decides how a record becomes rows."""

    task: str = "grounding"
    turns: str = "expand"
    instruction: bool = True
    data_source: str | None = None
    dataset_key: str | None = None  # None: the first of DATASET_KEYS present
    vqa_max_words: int = 10  # 0 disables the check
    sft: bool = False
    sft_think: str | None = None
    images: ImageOptions = field(default_factory=ImageOptions)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.turns not in TURN_POLICIES:
            raise ValueError(f"unknown turn policy {self.turns!r}; expected one of {TURN_POLICIES}")


@dataclass
class RecordResult:
    """The rows one record produced and the turns it left out (counted, never silent)."""

    rows: list[dict]
    sft_rows: list[dict]
    dropped: Counter

    def with_extra(self, **extra) -> "RecordResult":
        """Add the same extra_info keys to every row (RL and SFT); returns self."""
        for row in self.rows + self.sft_rows:
            row["extra_info"].update(extra)
        return self


def record_id(data: dict, source: str, position: int) -> str:
    """The record's own id, or `<file>:<position>` when it has none."""
    rid = data.get("id")
    if rid is None or rid == "":
        return f"{Path(source).name}:{position}"
    return str(rid)


def record_dataset(data: dict, key: str | None = None) -> str:
    """The record's dataset tag ("" when it has none)."""
    keys = (key,) if key else DATASET_KEYS
    for k in keys:
        v = data.get(k)
        if isinstance(v, str) and v:
            return v
    return ""


def record_size(data: dict) -> tuple[int | None, int | None]:
    """Image width/height written in the record itself, if any."""
    for wk, hk in SIZE_KEYS:
        w, h = data.get(wk), data.get(hk)
        if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
            return int(w), int(h)
    return None, None


def parse_conversation(data: Any) -> list[dict]:
    """Validated chat messages [{role, content}] from a LLaVA record's `conversations`."""
    if not isinstance(data, dict):
        raise RejectError(rejects.NOT_AN_OBJECT, type(data).__name__)
    conv = data.get("conversations", data.get("messages"))
    if isinstance(conv, str):  # parquet exports sometimes store it as a JSON string
        import json

        try:
            conv = json.loads(conv)
        except ValueError as exc:
            raise RejectError(rejects.MALFORMED_CONVERSATION, f"conversations string is not JSON: {exc}") from exc
    if conv is None or (hasattr(conv, "__len__") and len(conv) == 0):
        raise RejectError(rejects.NO_CONVERSATIONS)
    if not isinstance(conv, (list, tuple)):
        raise RejectError(rejects.MALFORMED_CONVERSATION, f"conversations is {type(conv).__name__}, not a list")
    messages = []
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RejectError(rejects.MALFORMED_CONVERSATION, f"turn {k} is not an object")
        who = turn["from"] if "from" in turn else turn.get("role")
        text = turn["value"] if "value" in turn else turn.get("content")
        role = ROLES.get(who) if type(who) is str else None  # ROLES' keys are lower case: most speakers hit here
        if role is None and who is not None:
            role = ROLES.get(str(who).lower())
        if role is None:
            raise RejectError(rejects.MALFORMED_CONVERSATION, f"turn {k} has unknown speaker {who!r}")
        if not isinstance(text, str):
            raise RejectError(rejects.MALFORMED_CONVERSATION, f"turn {k} has no text value")
        messages.append({"role": role, "content": text})
    expected = "user"
    for k, m in enumerate(messages):
        if m["role"] == "system":
            if k != 0:
                raise RejectError(rejects.MALFORMED_CONVERSATION, f"turn {k}: system message not first")
            continue
        if m["role"] != expected:
            raise RejectError(rejects.MALFORMED_CONVERSATION, f"turn {k}: expected {expected}, got {m['role']}")
        expected = "assistant" if expected == "user" else "user"
    if not any(m["role"] == "assistant" for m in messages):
        raise RejectError(rejects.NO_ANSWER)
    return messages


def image_specs(data: dict) -> list:
    """The record's image references (`images` list or a single `image`)."""
    spec = data.get("images", data.get("image"))
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [s for s in spec if s is not None]
    if hasattr(spec, "tolist") and not isinstance(spec, (bytes, str)):
        return list(spec.tolist())
    return [spec]


def fit_placeholders(messages: list[dict], n_images: int) -> list[dict]:
    """Make the `<image>` count equal the image count (adds them to the first user turn if none)."""
    count = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if count == n_images:
        return messages
    if count == 0:
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages = [dict(m) for m in messages]
        messages[first_user]["content"] = IMAGE_TOKEN * n_images + "\n" + messages[first_user]["content"]
        return messages
    raise RejectError(rejects.PLACEHOLDER_MISMATCH, f"{count} <image> for {n_images} image(s)")


def grounding_truth(answer: str, width: int | None, height: int | None, rewrite: bool = True) -> tuple[str, str]:
    """(ground-truth JSON of [0,1] boxes, answer text with its boxes rewritten as the truth stores them).

    A box-less answer is a no-finding truth when it states no finding by the rewards' rule
    (`medrl.no_finding`), and a reject otherwise.
    """
    cands = find_box_candidates(answer, limit=10_000)
    try:
        boxes = truth_boxes_of(cands, width, height)
    except BoxError as exc:
        raise RejectError(str(exc), answer[:200]) from exc
    if not boxes:
        if not states_no_finding(answer):
            raise RejectError(rejects.NOT_GROUNDING, answer[:200])
        return "[]", answer.strip()
    if not rewrite:
        return truth_json(boxes), answer
    text = answer
    for cand, box in sorted(zip(cands, boxes), key=lambda cb: -cb[0].start):
        text = text[: cand.start] + box_text(box) + text[cand.end:]
    return truth_json(boxes), text.strip()


def answer_truth(task: str, answer: str, opts: RecordOptions) -> str:
    """Reference text of a report / vqa answer."""
    text = answer.strip()
    if not any(c.isalnum() for c in text):  # no word: nothing a text reward can match
        raise RejectError(rejects.EMPTY_ANSWER, text[:80])
    if task == "vqa" and opts.vqa_max_words and len(text.split()) > opts.vqa_max_words:
        raise RejectError(rejects.VQA_TOO_LONG, f"{len(text.split())} words > {opts.vqa_max_words}: {text[:120]}")
    return text


def sft_reply(answer: str, opts: RecordOptions, default_think: str) -> str:
    """A row's SFT target: the think/answer layout when prompts ask for it, else the bare answer.

    `opts.sft_think` None gives the task's `default_think`; any string, "" too, is the think as given.
    """
    if not opts.instruction:
        return answer
    return reply(default_think if opts.sft_think is None else opts.sft_think, answer)



def _with_instruction(task: str, question: str, opts: RecordOptions) -> str:
    if not opts.instruction:
        return question
    return question.rstrip() + "\n" + INSTRUCTIONS[task]


_dirname = functools.lru_cache(maxsize=256)(os.path.dirname)  # one input file: the same folder for every record


def build_rows(data: Any, source: str, position: int, opts: RecordOptions) -> RecordResult:
    """Convert one LLaVA record into RL rows (+ SFT rows when `opts.sft`); raises RejectError."""
    messages = parse_conversation(data)
    rid = record_id(data, source, position)
    specs = image_specs(data)
    if not specs:
        raise RejectError(rejects.NO_IMAGE, "record has no image or images field")
    messages = fit_placeholders(messages, len(specs))
    base_dir = _dirname(source)
    infos: list[ImageInfo] = [load_image(s, opts.images, base_dir) for s in specs]
    rec_w, rec_h = record_size(data)
    img_w, img_h = infos[0].width, infos[0].height
    # Pixel boxes are relative to the size the record states, else to the image's own size.
    box_w, box_h = (rec_w, rec_h) if rec_w else (img_w, img_h)

    dropped: Counter = Counter()
    if messages[-1]["role"] == "user":
        dropped["trailing question without answer"] += 1
        messages = messages[:-1]
    answer_idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    turn_of = {i: k + 1 for k, i in enumerate(answer_idx)}  # message index -> its answer's turn number
    if opts.turns == "first":
        if len(answer_idx) > 1:
            dropped["later turn dropped by --turns first"] += len(answer_idx) - 1
        messages = messages[: answer_idx[0] + 1]
        answer_idx = answer_idx[:1]
        turn_of = {answer_idx[0]: 1}
        kept = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if kept != len(infos):
            raise RejectError(rejects.PLACEHOLDER_MISMATCH, f"--turns first keeps {kept} <image> of {len(infos)}")

    # Ground truth per answer; any bad answer rejects the whole record (reason counted).
    truths, chat = [], []
    task, n_answers = opts.task, len(answer_idx)
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "assistant":
            turn = turn_of[i]
            try:
                if task == "grounding":
                    # The rewritten text is only shown as context or as an SFT target.
                    shown_needed = opts.sft or turn < n_answers
                    truth, shown = grounding_truth(m["content"], box_w, box_h, rewrite=shown_needed)
                else:
                    truth = shown = answer_truth(task, m["content"], opts)
            except RejectError as exc:
                detail = f"turn {turn}: {exc.detail}" if n_answers > 1 else exc.detail
                raise RejectError(exc.reason, detail) from None
            truths.append(truth)
            # The last answer is in no RL prompt: its think/answer form is only an SFT target.
            content = sft_reply(shown, opts, SFT_THINK[task]) if opts.sft or turn < n_answers else shown
            chat.append({"role": "assistant", "content": content})
        elif role == "user":
            chat.append({"role": "user", "content": _with_instruction(task, m["content"], opts)})
        else:
            chat.append(dict(m))

    targets = answer_idx if opts.turns == "expand" else answer_idx[-1:]
    payloads = [info.payload for info in infos]
    dataset = record_dataset(data, opts.dataset_key)
    base_info = {
        "id": rid, "dataset": dataset, "width": img_w, "height": img_h, "position": position,
        "source": os.path.basename(source), "image": infos[0].origin, "n_turns": n_answers,
    }
    # <image> marks before each message: every image must sit in a row's prompt (a mark only
    # in a later turn would be lost).
    marks_before = [0]
    for m in chat:
        marks_before.append(marks_before[-1] + m["content"].count(IMAGE_TOKEN))
    rows = []
    for i in targets:
        turn = turn_of[i]
        prompt = chat[:i]
        if marks_before[i] != len(payloads):
            raise RejectError(rejects.PLACEHOLDER_MISMATCH, f"turn {turn}: <image> comes after the question")
        rows.append({
            "data_source": opts.data_source or DEFAULT_DATA_SOURCE[opts.task],
            "prompt": prompt,
            "images": payloads,
            "ability": opts.task,
            "reward_model": {"style": "rule", "ground_truth": truths[turn - 1]},
            "extra_info": {**base_info, "turn": turn, "answer": messages[i]["content"],
                           "question": messages[i - 1]["content"]},
        })
    sft_rows = []
    if opts.sft:
        sft_rows.append({
            "messages": chat,
            "images": payloads,
            "data_source": opts.data_source or DEFAULT_DATA_SOURCE[opts.task],
            "extra_info": {**base_info, "turn": len(answer_idx), "answer": messages[answer_idx[-1]]["content"],
                           "question": messages[answer_idx[-1] - 1]["content"]},
        })
    return RecordResult(rows, sft_rows, dropped)


def build_source_rows(item: SourceRecord, opts: RecordOptions) -> RecordResult:
    """The LLaVA builder of a read record (the default `ConvertOptions.builder`); raises RejectError."""
    return build_rows(item.data, item.source, item.position, opts)
