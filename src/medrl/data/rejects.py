"""Rejected records: one reason each, counted, and written to a JSONL file next to the output."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from medrl.atomic import atomic_path

# Stable reason keys (the summary counts by these). Box reasons come from
# `medrl.boxes.BoxError` messages, e.g. "box with 3 numbers".
INVALID_JSON = "invalid JSON"
NOT_AN_OBJECT = "record is not an object"
NO_CONVERSATIONS = "no conversations"
MALFORMED_CONVERSATION = "malformed conversation"
NO_ANSWER = "no gpt answer"
EMPTY_ANSWER = "empty answer"
NO_IMAGE = "no image"
PLACEHOLDER_MISMATCH = "<image> count differs from image count"
IMAGE_NOT_FOUND = "image not found"
UNREADABLE_IMAGE = "unreadable image"
NOT_GROUNDING = "no box and no 'no finding' answer"
VQA_TOO_LONG = "vqa answer too long"
PROMPT_TOO_LONG_CHARS = "prompt over the character limit"
PROMPT_TOO_LONG_TOKENS = "prompt over the token limit"
LENGTH_ERROR = "processor failed on the prompt"


@dataclass
class Reject:
    """Why one input record was not converted, and where it came from."""

    reason: str
    detail: str = ""
    source: str = ""
    position: int | None = None  # index of the record in its file (0-based), None when unknown
    id: str | None = None
    offset: int | None = None  # byte offset in the file, when the reader knows it

    def to_json(self) -> str:
        """One JSON line for the rejects file."""
        return json.dumps(asdict(self), ensure_ascii=False, default=str)


class RejectError(Exception):
    """Raised inside the per-record pipeline; carries the reject reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class RejectLog:
    """Counts rejects by reason and streams them to a JSONL file (atomically published on close)."""

    path: Path | None = None
    # Exceptions after which the file is still published: the rejects explain that failure.
    keep_on: tuple[type[BaseException], ...] = ()
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, Reject] = field(default_factory=dict)
    _ctx: Any = None
    _fh: IO | None = None

    def __enter__(self) -> "RejectLog":
        if self.path is not None:
            self._ctx = atomic_path(self.path)
            tmp = self._ctx.__enter__()
            self._fh = open(tmp, "w", encoding="utf-8")
        return self

    def add(self, reject: Reject) -> None:
        """Count one reject and write it out."""
        self.counts[reject.reason] += 1
        self.examples.setdefault(reject.reason, reject)
        if self._fh is not None:
            self._fh.write(reject.to_json() + "\n")

    @property
    def total(self) -> int:
        """Number of rejected records."""
        return sum(self.counts.values())

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh is not None:
            self._fh.close()
            if exc_type is not None and issubclass(exc_type, self.keep_on):
                exc_type = exc = tb = None  # publish; the exception still propagates
            self._ctx.__exit__(exc_type, exc, tb)
