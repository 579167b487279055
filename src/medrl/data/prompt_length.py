"""Exact prompt length at dataset scale: verl's count without decoding a single image.

verl (0.9.1) counts a multimodal prompt in three steps, both in `RLHFDataset`'s length
filter and in the agent loop that builds the rollout's prompt:
1. `_build_messages` turns each `<image>` into an image block; the processor's chat
   template renders the conversation with one image token per image;
2. qwen_vl_utils' `fetch_image` resizes every image with its `smart_resize`
   (factor = 2 x the processor's patch size, the row's own min/max pixels);
3. the processor resizes again with its own rule and expands each image token
   into as many tokens as the resized image has merged patches, then tokenizes.

Image tokens are special tokens, cut out before BPE, so the count is additive: the
tokens of the rendered text (one image token per image) plus, per image, its token
count minus one. This module computes exactly that: the rendered text is tokenized
in batches with the fast tokenizer, and each image's token count comes from its
size (read from the header only) through the very `smart_resize` functions verl and
the processor run. Rows it cannot count this way (video or audio, remote images,
text with literal image tokens) are reported as `fallback` so callers count them
through verl itself. `medrl check` proves the equality on every run by loading a
sample of rows through verl's `RLHFDataset`.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from typing import Any, Sequence

from medrl.data import image_header as ih


def load_processor(path: str):
    """AutoProcessor of a local model folder (no hub)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, local_files_only=True)


_MEDIA_RE = re.compile("(<image>|<video>|<audio>)")
_QWEN_PLACEHOLDER = "<|placeholder|>"  # Qwen processors turn any literal one into an image token
BATCH = 4096  # rows counted per batch


@dataclass(frozen=True)
class Count:
    """One row's prompt length, or why it has none."""

    tokens: int | None  # the exact count; None when error or fallback
    error: str | None = None  # the row will not load or count in verl either
    fallback: str | None = None  # the fast path cannot count it: count it through verl instead
    image_tokens: int = 0  # tokens its images expand to (included in `tokens`)


class CountError(ValueError):
    """A row that verl would fail on; the message says why."""


class Fallback(Exception):
    """A row outside what the fast path covers; the message says why."""


def build_messages(prompt: Sequence[dict], n_images: int, n_videos: int = 0, n_audios: int = 0) -> list[dict]:
    """verl's `_build_messages` with image blocks that carry no image (the template needs only their type)."""
    messages = [dict(m) for m in prompt]
    if not (n_images or n_videos or n_audios):
        return messages
    seen = {"<image>": 0, "<video>": 0, "<audio>": 0}
    for m in messages:
        content = m.get("content")
        if not isinstance(content, str):
            continue
        blocks = []
        for seg in _MEDIA_RE.split(content):
            if not seg:
                continue
            if seg in seen:
                seen[seg] += 1
                blocks.append({"type": seg[1:-1]})
            else:
                blocks.append({"type": "text", "text": seg})
        m["content"] = blocks
    for tag, n in (("<image>", n_images), ("<video>", n_videos), ("<audio>", n_audios)):
        if seen[tag] != n:
            raise CountError(f"{seen[tag]} {tag} in the prompt for {n} {tag[1:-1]}(s)")
    if n_videos or n_audios:
        raise Fallback("video or audio")
    return messages


def image_source(img: Any) -> tuple[dict, str | bytes]:
    """(the dict fetch_image reads its resize settings from, the file path or bytes to take the size from)."""
    if isinstance(img, str):
        img = {"image": img}
    if not isinstance(img, dict):
        raise CountError(f"image entry is {type(img).__name__}, not a dict or path")
    if "bytes" in img:  # verl opens the bytes whenever the key exists
        data = img["bytes"]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CountError(f"image bytes is {type(data).__name__}")
        return img, bytes(data)
    ref = img.get("image") if "image" in img else img.get("image_url")
    if not isinstance(ref, str):
        raise CountError(f"image entry has no bytes and no image path (keys {sorted(img)})")
    if ref.startswith(("http://", "https://")):
        raise Fallback("remote image")
    if ref.startswith("file://"):
        return img, ref[7:]
    if ref.startswith("data:image"):
        if "base64," not in ref:
            raise CountError("data URI without base64 payload")
        return img, base64.b64decode(ref.split("base64,", 1)[1])
    return img, ref


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays from pandas
        return list(value.tolist())
    return [value]


def _hashable(content: Any) -> Any:
    return content if isinstance(content, str) else repr(content)


class PromptCounter:
    """Counts prompts exactly as verl does, from the processor's template, tokenizer and resize rules."""

    def __init__(self, processor: Any, image_patch_size: int | None = None, cache_size: int = 65536):
        from qwen_vl_utils import vision_process

        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        image_processor = getattr(processor, "image_processor", None)
        # verl's RLHFDataset and agent loop: data.image_patch_size, else the processor's own patch size.
        self.patch_size = image_patch_size or getattr(image_processor, "patch_size", 14)
        self.qvu = vision_process
        self.image_token = getattr(processor, "image_token", None)
        self.images = ih.ImageChecks(cache_size)
        self.tokens_cache = ih.LRU(cache_size)
        self.stats = {"rows": 0, "text_cache_hits": 0}

    @classmethod
    def from_path(cls, path: str, image_patch_size: int | None = None) -> "PromptCounter":
        """A counter for a local model folder's processor."""

        return cls(load_processor(str(path)), image_patch_size)

    def image_tokens(self, height: int, width: int, ele: dict) -> int:
        """Tokens one image of this size becomes: fetch_image's resize, then the processor's."""
        qvu = self.qvu
        factor = int(self.patch_size * qvu.SPATIAL_MERGE_SIZE)
        # The same lines as qwen_vl_utils.fetch_image (0.0.14), so the same defaults and errors.
        if "resized_height" in ele and "resized_width" in ele:
            h, w = qvu.smart_resize(ele["resized_height"], ele["resized_width"], factor=factor)
        else:
            min_pixels = ele.get("min_pixels", qvu.IMAGE_MIN_TOKEN_NUM * factor ** 2)
            max_pixels = ele.get("max_pixels", qvu.IMAGE_MAX_TOKEN_NUM * factor ** 2)
            h, w = qvu.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return self._processor_tokens(h, w)

    @functools.lru_cache(maxsize=65536)
    def _processor_tokens(self, height: int, width: int) -> int:
        proc = self.processor
        if hasattr(proc, "_get_num_multimodal_tokens"):
            # The processor's own count from a size (what vLLM uses to plan its placeholders).
            return int(proc._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"][0])
        raise Fallback(f"{type(proc).__name__} cannot count image tokens from a size")

    def _image_tokens_of(self, images: list) -> int:
        """Tokens all of a row's images expand to; raises CountError / Fallback."""
        total = 0
        for k, img in enumerate(images):
            ele, source = image_source(img)
            checked = self.images.check(source)
            if checked.problem:  # verl's fetch_image fails on it too
                raise CountError(f"image {k}: {checked.problem}")
            width, height = checked.size
            try:
                total += self.image_tokens(height, width, ele)
            except Fallback:
                raise
            except Exception as exc:  # whatever the resize rules raise, verl raises too
                raise CountError(f"image {k}: {type(exc).__name__}: {exc}") from exc
        return total

    def count_rows(self, rows: Sequence[dict], prompt_key: str = "prompt", image_key: str = "images") -> list[Count]:
        """Exact prompt token counts of many rows (new texts rendered and tokenized in one batch)."""
        if len(rows) > BATCH:  # bounded batches: a batch's texts must all fit in the cache
            return [c for k in range(0, len(rows), BATCH)
                    for c in self.count_rows(rows[k:k + BATCH], prompt_key, image_key)]
        out: list[Count | None] = [None] * len(rows)
        todo: list[tuple] = []  # (row index, text key, prompt, image tokens, image count)
        for i, row in enumerate(rows):
            self.stats["rows"] += 1
            images = _as_list(row.get(image_key))
            prompt = row[prompt_key]
            # The rendered text depends on the messages and the media counts only: rows sharing
            # them (templated questions) are rendered and tokenized once.
            key = (len(images), len(_as_list(row.get("videos"))), len(_as_list(row.get("audios"))),
                   tuple((m.get("role"), _hashable(m.get("content"))) for m in prompt))
            try:
                extra = self._image_tokens_of(images)
            except CountError as exc:
                out[i] = Count(None, error=str(exc))
                continue
            except Fallback as exc:
                out[i] = Count(None, fallback=str(exc))
                continue
            todo.append((i, key, prompt, extra, len(images)))
        self._count_text(todo)
        for i, key, _, extra, n_images in todo:
            text = self.tokens_cache.get(key)
            if isinstance(text, Count):  # an error or fallback of the text itself
                out[i] = text
            else:
                out[i] = Count(text + extra - n_images, image_tokens=extra)
        return out  # type: ignore[return-value]

    def _count_text(self, todo: list) -> None:
        """Render and tokenize the texts not seen before (one batch)."""
        new: dict[Any, list[dict]] = {}
        for _, key, prompt, _, _ in todo:
            if key in self.tokens_cache:
                self.tokens_cache.move_to_end(key)
                self.stats["text_cache_hits"] += 1
            elif key not in new:
                try:
                    new[key] = build_messages(prompt, *key[:3])
                except CountError as exc:
                    self.tokens_cache.put(key, Count(None, error=str(exc)))
                except Fallback as exc:
                    self.tokens_cache.put(key, Count(None, fallback=str(exc)))
        if not new:
            return
        keys = list(new)
        texts = self._render([new[k] for k in keys])
        with_images, without = [], []
        for key, text in zip(keys, texts):
            n_images = key[0]
            if isinstance(text, Count):
                self.tokens_cache.put(key, text)
            elif n_images and (_QWEN_PLACEHOLDER in text or text.count(self.image_token or "\0") != n_images):
                self.tokens_cache.put(key, Count(None, fallback="prompt text holds literal image tokens"))
            else:
                (with_images if n_images else without).append((key, text))
        # verl: text-only prompts are tokenized without special tokens; the processor call that
        # counts prompts with images uses the tokenizer's default (add_special_tokens=True).
        for group, special in ((with_images, True), (without, False)):
            if group:
                ids = self.tokenizer([t for _, t in group], add_special_tokens=special,
                                     return_attention_mask=False)["input_ids"]
                for (key, _), seq in zip(group, ids):
                    self.tokens_cache.put(key, len(seq))

    def _render(self, conversations: list[list[dict]]) -> list[str | Count]:
        try:
            return list(self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False))
        except Exception:  # one bad conversation fails the batch: render one by one to find it
            out: list[str | Count] = []
            for conv in conversations:
                try:
                    out.append(self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False))
                except Exception as exc:  # the template's own error: verl fails on this row too
                    out.append(Count(None, error=f"chat template: {type(exc).__name__}: {exc}"))
            return out
