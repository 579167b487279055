"""Bi-temporal change pairs (LEVIR-CC style) -> two-image verl rows for change grounding and captioning.

Input: a folder written by `datasets.Dataset(Dict).save_to_disk` with columns
`image` (before), `image2` (after), `caption` (a string or a list of strings) and
`bbox` ([x1, y1, x2, y2] in pixels of the image, or in [0, 1]; a list of such boxes;
empty, null or all zeros for "no change"). A DatasetDict's splits are written as
`<split>.parquet`; a single Dataset is split by `--val-fraction` like the LLaVA path.

Rows (each with `<image>` twice, before then after):
- ``grounding`` -> data_source ``medrl/change_grounding``; ground truth: JSON list of
  [0, 1] boxes ("[]" for no change), scored by the IoU reward.
- ``action`` -> data_source ``medrl/change_action``; ground truth: the action vector
  JSON ``[cx, cy, scale]`` of the boxes (`medrl.change_action`, which the reward uses
  too), scored by `medrl.rewards.change`. No-change pairs have no vector: their action
  row is left out and counted.
- ``caption`` -> data_source ``medrl/change_caption``; ground truth: the first caption.
Every row carries the action vector in ``extra_info["action"]`` (null for no change).
Boxes are read with the converters' one strict reader (`medrl.boxes.read_truth_boxes`).
The generated sample lives in `medrl.data.change_sample`.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from medrl.boxes import BoxError, box_text, format_boxes, read_truth_boxes
from medrl.change_action import action_text, change_action
from medrl.data import rejects
from medrl.data.convert import ConvertOptions, convert
from medrl.data.images import load_image
from medrl.data.readers import SourceRecord
from medrl.data.records import IMAGE_TOKEN, RecordResult, sft_reply
from medrl.data.rejects import Reject, RejectError
from medrl.data.writer import FORMAT_EXTRA_FIELDS

CHANGE_TASKS = ("grounding", "action", "caption")
DATA_SOURCES = {"grounding": "medrl/change_grounding", "action": "medrl/change_action",
                "caption": "medrl/change_caption"}
NO_SECOND_IMAGE = "change: no second image"
SIZE_MISMATCH = "change: the two images differ in size"
NO_ROWS = "change: no row for the chosen tasks"

QUESTIONS = {
    "grounding": "The first image was taken before, the second after. Where did the scene change?",
    "action": "The first image was taken before, the second after. Where did the scene change?",
    "caption": "The first image was taken before, the second after. Describe what changed in one sentence.",
}
INSTRUCTIONS = {
    "grounding": ("First think step by step inside <think> </think>, then give your final answer inside "
                  "<answer> </answer>: the bounding box of the changed area as [x1, y1, x2, y2] with "
                  "coordinates in [0, 1], or 'No change' if nothing changed."),
    "action": ("First think step by step inside <think> </think>, then give your final answer inside "
               "<answer> </answer> as [cx, cy, scale]: the centre of the changed area as fractions of the "
               "width and height, and the square root of its area as a fraction of the image area."),
    "caption": "First think step by step inside <think> </think>, then give the sentence inside <answer> </answer>.",
}
SFT_THINK = "I compare the two images region by region."


@dataclass(frozen=True)
class ChangeOptions:
    """Which rows a change pair becomes."""

    tasks: tuple[str, ...] = ("grounding", "caption")

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in CHANGE_TASKS]
        if bad or not self.tasks:
            raise ValueError(f"unknown change task(s) {bad}; expected some of {CHANGE_TASKS}")


def read_arrow(path: str | Path, split: str | None = None) -> Iterator[SourceRecord | Reject]:
    """Records of a `load_from_disk` folder (one split of a DatasetDict, or a Dataset) with undecoded images."""
    import datasets

    ds = _load(path)
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            raise ValueError(f"{path} holds splits {list(ds)}: name one")
        if split not in ds:
            raise ValueError(f"{path} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    for col in ("image", "image2"):
        if col in ds.features and isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))  # keep the stored bytes; decode once, later
    source = f"{path}:{split}" if split else str(path)
    for i, row in enumerate(ds):
        row.setdefault("id", f"{Path(path).name}-{split or 'all'}-{i}")
        yield SourceRecord(row, source, i)


def splits_of(path: str | Path) -> list[str] | None:
    """The split names of a saved DatasetDict, or None for a plain Dataset."""
    import datasets

    ds = _load(path)
    return list(ds) if isinstance(ds, datasets.DatasetDict) else None


def _load(path: str | Path):
    """`datasets.load_from_disk`, with an error that names the folder and what the reader expects."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, IndexError, OSError) as exc:
        raise ValueError(f"{path}: not a datasets.save_to_disk folder of change pairs "
                         f"(image, image2, caption, bbox): {type(exc).__name__}: {exc}") from exc


def _image_spec(value: Any, out_dir: Path | None, name: str, mode: str) -> Any:
    """A `load_image` spec for an Arrow cell (bytes/path dict, PIL image, path); ref mode writes bytes to a file."""
    if value is None:
        return None
    if hasattr(value, "save") and hasattr(value, "size"):  # a decoded PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        value = {"bytes": buf.getvalue()}
    if mode == "ref" and isinstance(value, dict) and value.get("bytes"):
        path = value.get("path")
        if not (path and Path(path).is_absolute() and Path(path).is_file()):
            from medrl.atomic import atomic_path

            safe = re.sub(r"[^\w.-]+", "_", name)  # ids may hold slashes or spaces
            target = (out_dir or Path(".")) / "images" / f"{safe}.png"
            if not target.is_file():
                with atomic_path(target) as tmp:
                    tmp.write_bytes(bytes(value["bytes"]))
            return str(target.resolve())
        return path
    if isinstance(value, dict) and not value.get("bytes") and not value.get("path"):
        return None
    return value


def change_boxes(bbox: Any, width: int, height: int) -> list[tuple[float, float, float, float]]:
    """[0, 1] boxes of a `bbox` cell (pixels or [0, 1]; one box or a list); [] for no change; raises RejectError."""
    try:
        return read_truth_boxes(bbox, width, height, zero_box_is_empty=True)  # all zeros: LEVIR-CC's "no change"
    except BoxError as exc:
        raise RejectError(str(exc), f"bbox {str(bbox)[:120]} in a {width}x{height} image") from None


def _caption(value: Any) -> str:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        value = next((c for c in value if isinstance(c, str) and c.strip()), "")
    return value.strip() if isinstance(value, str) else ""


def build_change_rows(item: SourceRecord, opts: ChangeOptions, rec_opts, out_dir: Path | None = None) -> RecordResult:
    """Rows of one change pair (raises RejectError with a reason)."""
    data = item.data
    if not isinstance(data, dict):
        raise RejectError(rejects.NOT_AN_OBJECT, type(data).__name__)
    rid = str(data.get("id"))
    mode = rec_opts.images.mode
    specs = [_image_spec(data.get("image"), out_dir, f"{rid}_A", mode),
             _image_spec(data.get("image2"), out_dir, f"{rid}_B", mode)]
    if specs[0] is None:
        raise RejectError(rejects.NO_IMAGE, "no `image` (before) in the pair")
    if specs[1] is None:
        raise RejectError(NO_SECOND_IMAGE, "no `image2` (after) in the pair")
    infos = [load_image(s, rec_opts.images, None) for s in specs]
    if mode == "ref" and infos[0].width is None:  # sizes are needed for pixel boxes
        infos = [load_image(s, replace(rec_opts.images, verify=True), None) for s in specs]
    (w, h), (w2, h2) = (infos[0].width, infos[0].height), (infos[1].width, infos[1].height)
    if (w, h) != (w2, h2):
        raise RejectError(SIZE_MISMATCH, f"before {w}x{h}, after {w2}x{h2}")
    boxes = change_boxes(data.get("bbox"), w, h)
    action = change_action(boxes)
    caption = _caption(data.get("caption"))
    dropped: Counter = Counter()
    rows, sft_rows = [], []
    base = {"id": rid, "dataset": str(data.get("dataset") or "change"), "width": w, "height": h, "turn": 1,
            "n_turns": 1, "position": item.position, "source": item.source, "image": infos[0].origin,
            "image2": infos[1].origin, "action": list(action) if action else None}
    for task in opts.tasks:
        if task == "grounding":
            truth = format_boxes(boxes)
            shown = " and ".join(box_text(b) for b in boxes) or "No change."
        elif task == "action":
            if action is None:
                dropped["no-change pair: no action row"] += 1
                continue
            truth = shown = action_text(action)
        else:
            if not caption:
                dropped["pair without caption: no caption row"] += 1
                continue
            truth = shown = caption
        question = QUESTIONS[task]
        text = f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\n{question}"
        if rec_opts.instruction:
            text += "\n" + INSTRUCTIONS[task]
        prompt = [{"role": "user", "content": text}]
        extra = {**base, "task_type": f"change_{task}", "question": question, "answer": shown}
        rows.append({"data_source": rec_opts.data_source or DATA_SOURCES[task], "prompt": prompt,
                     "images": [i.payload for i in infos], "ability": f"change_{task}",
                     "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": extra})
        if rec_opts.sft:
            target = sft_reply(shown, rec_opts, SFT_THINK)
            sft_rows.append({"messages": prompt + [{"role": "assistant", "content": target}],
                             "images": [i.payload for i in infos],
                             "data_source": rec_opts.data_source or DATA_SOURCES[task], "extra_info": dict(extra)})
    if not rows:
        raise RejectError(NO_ROWS, f"tasks {list(opts.tasks)}: {dict(dropped)}")
    return RecordResult(rows, sft_rows, dropped)


def prepare_change(opts: ConvertOptions, change: ChangeOptions = ChangeOptions()) -> list[dict]:
    """Convert change pairs from `opts.inputs` (load_from_disk folders); one summary per split written."""
    # Module-level builder and reader (partials): worker processes can receive them.
    opts = replace(opts, builder=partial(build_change_rows, opts=change, rec_opts=opts.record,
                                         out_dir=Path(opts.output_dir)),
                   reader=read_arrow, extra_fields=FORMAT_EXTRA_FIELDS, task_label="change " + "+".join(change.tasks))
    splits = [splits_of(p) for p in opts.inputs]
    if all(s is None for s in splits):
        return [convert(opts)]
    if any(s is None for s in splits):
        raise ValueError("mix of DatasetDict and Dataset folders: convert them separately")
    names = sorted({n for s in splits for n in s}, key=lambda n: (n != "train", n))
    return [convert(replace(opts, inputs=[p for p, s in zip(opts.inputs, splits) if name in s], split_name=name,
                            val_fraction=0.0, reader=partial(read_arrow, split=name)))
            for name in names]
