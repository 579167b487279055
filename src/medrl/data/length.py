"""Prompt length: a cheap character cut-off, or exact token counts with the model's own processor.

`count_prompt_tokens` follows verl's own `RLHFDataset` length filter step by step (its
`_build_messages` and `_process_multi_modal_info`, the processor's chat template,
then the processor on text + images): the reference, which decodes every image.
The converter's filter counts with `prompt_length.PromptCounter` instead, which gives
the same numbers from image headers (rows it cannot count go through the reference).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from types import SimpleNamespace

from medrl.data import rejects
from medrl.data.prompt_length import PromptCounter, load_processor
from medrl.data.rejects import RejectError


def prompt_chars(row: dict) -> int:
    """Characters of a row's prompt messages."""
    return sum(len(m["content"]) for m in row["prompt"])


def count_prompt_tokens(row: dict, processor, prompt_key: str = "prompt", image_key: str = "images") -> int:
    """Exact prompt length in tokens (image tokens included), computed as verl's RLHFDataset does."""
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    # Copies: verl's _build_messages writes into the message and image dicts it is given.
    images = [dict(i) if isinstance(i, dict) else i for i in row.get(image_key) or []]
    example = {prompt_key: copy.deepcopy(list(row[prompt_key])), image_key: images}
    shim = SimpleNamespace(image_key=image_key, video_key="videos", audio_key="audios", processor=processor)
    messages = RLHFDataset._build_messages(shim, example, key=prompt_key)
    raw = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    patch = getattr(getattr(processor, "image_processor", None), "patch_size", 14)
    images, videos, audios = RLHFDataset._process_multi_modal_info(messages, patch, {})
    if images is None and videos is None and audios is None:
        ids = processor.tokenizer(text=raw, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return len(ids)
    inputs = build_multimodal_processor_inputs(processor, text=[raw], images=images, videos=videos, audio=audios)
    return int(inputs["input_ids"][0].shape[0])


@dataclass(frozen=True)
class LengthOptions:
    """Prompt-length filter settings (all off by default)."""

    max_prompt_chars: int | None = None
    processor: str | None = None
    max_prompt_tokens: int | None = None

    @property
    def active(self) -> bool:
        """True when any length check is configured."""
        return bool(self.max_prompt_chars) or bool(self.processor and self.max_prompt_tokens)


@functools.lru_cache(maxsize=4)
def prompt_counter(path: str):
    """The fast exact counter of a local model folder (cached per process)."""
    return PromptCounter(load_processor(path))


def length_checks(rows: list[dict], opts: LengthOptions) -> list[tuple[RejectError | None, int | None]]:
    """Per row: (the RejectError its prompt length earns or None, its token count if computed)."""
    out: list[tuple[RejectError | None, int | None]] = [(None, None)] * len(rows)
    if opts.max_prompt_chars:
        for i, row in enumerate(rows):
            n = prompt_chars(row)
            if n > opts.max_prompt_chars:
                out[i] = (RejectError(rejects.PROMPT_TOO_LONG_CHARS, f"{n} chars > {opts.max_prompt_chars}"), None)
    if not (opts.processor and opts.max_prompt_tokens):
        return out
    counts = prompt_counter(opts.processor).count_rows([r for i, r in enumerate(rows) if out[i][0] is None])
    todo = iter(counts)
    for i, row in enumerate(rows):
        if out[i][0] is not None:
            continue
        got = next(todo)
        n = got.tokens
        if got.error:
            out[i] = (RejectError(rejects.LENGTH_ERROR, got.error), None)
            continue
        if got.fallback:  # outside the fast path: count it the slow way, through verl's own steps
            try:
                n = count_prompt_tokens(row, load_processor(opts.processor))
            except (ValueError, TypeError, AssertionError, OSError, RuntimeError) as exc:
                out[i] = (RejectError(rejects.LENGTH_ERROR, f"{type(exc).__name__}: {exc}"), None)
                continue
        if n > opts.max_prompt_tokens:
            out[i] = (RejectError(rejects.PROMPT_TOO_LONG_TOKENS, f"{n} tokens > {opts.max_prompt_tokens}"), n)
        else:
            out[i] = (None, n)
    return out


def check_length(row: dict, opts: LengthOptions) -> int | None:
    """Raise RejectError when the row's prompt is over a limit; return the token count if computed."""
    error, n = length_checks([row], opts)[0]
    if error is not None:
        raise error
    return n
