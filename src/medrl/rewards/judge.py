"""VLM-as-judge reward: an OpenAI-compatible chat endpoint (e.g. `vllm serve` of a Qwen-VL) rates the answer.

The judge sees the image (when `extra_info` names one and `send_image` is on), the
question, the reference and the answer section, with a per-category prompt
(judge_prompts.yaml: grounding, report, vqa, change, default) chosen by the kwarg
`category`, else `extra_info["category"]`, else the data_source (`*grounding*`,
`*report*`/`*caption*`, `*vqa*`, `*change*`). Its reply is parsed for `Score: 8.5`,
`8.5/10`, `Rating: 8.5` or a bare `8.5` and mapped to [0, 1] (x / 10, or x / denominator).
When nothing parses, or every attempt fails, the score is `default_score` and
`judge_default` / `judge_error` say so. Requests have a timeout, retries with
exponential back-off (connection errors, timeouts, HTTP 429/5xx), and at most
`max_concurrency` in flight per endpoint. Range [0, 1].

Settings are reward kwargs (`base_url`, `model`, `api_key`, `timeout`, `retries`,
`backoff`, `max_concurrency`, `default_score`, `max_tokens`, `temperature`,
`send_image`, `category`, `prompts`, `structured` (vLLM: reply forced to `Score: N`)), with `MEDRL_JUDGE_URL`, `MEDRL_JUDGE_MODEL`
and `MEDRL_JUDGE_API_KEY` as fallbacks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from medrl.boxes import BoxError, format_boxes, read_truth_boxes
from medrl.rewards.answer import answer_section
from medrl.rewards.tasks import task_in

logger = logging.getLogger(__name__)

KEYS = ("score", "judge_raw", "judge_parsed", "judge_default", "judge_error", "judge_attempts")
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_NUM = r"[-+]?\d{1,6}(?:\.\d{1,6})?"
# The reply form vLLM's structured outputs enforce with `structured: true` (parsed by _LABELLED_RE).
STRUCTURED_REPLY = r"Score: (10(\.0)?|[0-9](\.[0-9])?)"
_LABELLED_RE = re.compile(rf"(?:score|rating|grade)\s*[:=]?\s*({_NUM})(?:\s*(?:/|out\s+of)\s*({_NUM}))?", re.I)
_RATIO_RE = re.compile(rf"({_NUM})\s*(?:/|out\s+of)\s*({_NUM})", re.I)
_BARE_RE = re.compile(rf"\s*({_NUM})\s*[.!]?\s*")


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask the judge."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_concurrency: int = 8
    default_score: float = 0.5
    max_tokens: int = 128
    temperature: float = 0.0
    send_image: bool = True
    category: str | None = None
    prompts: str | None = None
    # vLLM servers only: constrain the reply to `Score: N` with vLLM's structured outputs, so even
    # a weak or small judge always answers in a form that parses (`structured_outputs` is a vLLM
    # extension of the OpenAI API; other servers refuse unknown fields, so it is off by default).
    structured: bool = False


def config_from(kwargs: dict) -> JudgeConfig:
    """A JudgeConfig from reward kwargs, then the MEDRL_JUDGE_* environment, then defaults."""
    names = {f.name for f in fields(JudgeConfig)}
    values = {k: v for k, v in kwargs.items() if k in names and v is not None}
    env = {"base_url": "MEDRL_JUDGE_URL", "model": "MEDRL_JUDGE_MODEL", "api_key": "MEDRL_JUDGE_API_KEY"}
    for key, var in env.items():
        if key not in values and os.environ.get(var):
            values[key] = os.environ[var]
    cfg = JudgeConfig(**values)
    if not 0.0 <= float(cfg.default_score) <= 1.0:
        raise ValueError(f"judge reward: default_score must be in [0, 1], got {cfg.default_score!r}")
    if int(cfg.max_concurrency) < 1 or int(cfg.retries) < 0 or float(cfg.timeout) <= 0:
        raise ValueError("judge reward: need max_concurrency >= 1, retries >= 0 and timeout > 0")
    return cfg


def parse_score(reply: str, scale: float = 10.0) -> float | None:
    """A judge reply's score mapped to [0, 1], or None when no score can be read."""
    if not isinstance(reply, str):
        return None
    text = reply[:8000]
    cut = text.lower().rfind("</think>")
    if cut >= 0:
        text = text[cut + len("</think>"):]
    text = text.replace("*", "")  # markdown bold around "Score"
    for regex in (_LABELLED_RE, _RATIO_RE):
        found = regex.findall(text)
        if found:
            num, den = found[-1]  # the final verdict, after any justification
            return _to_unit(num, den or None, scale)
    m = _BARE_RE.fullmatch(text)
    return _to_unit(m.group(1), None, scale) if m else None


def _to_unit(num: str, den: str | None, scale: float) -> float | None:
    value, top = float(num), float(den) if den else scale
    if top <= 0 or not 0.0 <= value <= top:
        return None
    return value / top


@lru_cache(maxsize=8)
def load_prompts(path: str | None = None) -> dict:
    """The judge prompts from `path` or the packaged judge_prompts.yaml (checked for the needed keys)."""
    if path:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    else:
        raw = yaml.safe_load(resources.files("medrl.rewards").joinpath("judge_prompts.yaml").read_text("utf-8"))
    where = path or "medrl/rewards/judge_prompts.yaml"
    if not isinstance(raw, dict) or not isinstance(raw.get("categories"), dict) or "default" not in raw["categories"]:
        raise ValueError(f"{where}: needs 'system', 'user' and 'categories' with a 'default' entry")
    if not isinstance(raw.get("system"), str) or not isinstance(raw.get("user"), str):
        raise ValueError(f"{where}: 'system' and 'user' must be strings")
    return raw


def pick_category(data_source: Any, extra_info: Any, cfg: JudgeConfig, prompts: dict) -> str:
    """The prompt category: kwarg, then extra_info["category"], then the data_source pattern, then default."""
    cats = prompts["categories"]
    for cand in (cfg.category, extra_info.get("category") if isinstance(extra_info, dict) else None):
        if isinstance(cand, str) and cand in cats:
            return cand
    return task_in(data_source, cats) or "default"


def _image_url(extra_info: Any) -> str | None:
    """A URL for the row's image: http(s)/data URLs as they are, local files as base64 data URLs."""
    if not isinstance(extra_info, dict):
        return None
    value = next((extra_info[k] for k in ("image", "image_path", "images") if extra_info.get(k) is not None), None)
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("image") or value.get("path")
    if not isinstance(value, str):
        return None
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = value[len("file://"):] if value.startswith("file://") else value
    try:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            return None
        with open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
    except OSError:
        return None
    mime = mimetypes.guess_type(path)[0] or "image/png"
    return f"data:{mime};base64,{data}"


def build_messages(data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any,
                   cfg: JudgeConfig) -> list[dict]:
    """The chat messages for one judgement."""
    prompts = load_prompts(cfg.prompts)
    category = pick_category(data_source, extra_info, cfg, prompts)
    info = extra_info if isinstance(extra_info, dict) else {}
    question = next((str(info[k]) for k in ("question", "prompt", "problem") if info.get(k)), "(not given)")
    if isinstance(ground_truth, str):
        reference = ground_truth
    else:
        try:
            boxes = read_truth_boxes(ground_truth)
        except BoxError:
            boxes = []
        reference = format_boxes(boxes, 3) if boxes else str(ground_truth)
    answer, _ = answer_section(solution_str)
    text = prompts["user"]
    for key, value in (("instructions", str(prompts["categories"][category].get("instructions", ""))),
                       ("question", question[:4000]), ("reference", reference[:8000]), ("answer", answer[:8000])):
        text = text.replace("{" + key + "}", value)  # plain replace: answers may contain braces
    content: list[dict] = []
    url = _image_url(info) if cfg.send_image else None
    if url:
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": content}]


class _RetryableError(Exception):
    """A failure worth another attempt (connection, timeout, HTTP 429/5xx, garbled body)."""


def _request(cfg: JudgeConfig, messages: list[dict]) -> str:
    """One chat-completion request; returns the reply text. Raises _RetryableError or urllib.error.HTTPError."""
    payload = {"model": cfg.model, "messages": messages, "max_tokens": int(cfg.max_tokens),
               "temperature": float(cfg.temperature)}
    if _truthy(cfg.structured):
        payload["structured_outputs"] = {"regex": STRUCTURED_REPLY}
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    req = urllib.request.Request(cfg.base_url.rstrip("/") + "/chat/completions",
                                 data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=float(cfg.timeout)) as resp:
            body = json.loads(resp.read(4_000_000).decode("utf-8", "replace"))
        return str(body["choices"][0]["message"]["content"] or "")
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise _RetryableError(f"HTTP {exc.code}") from exc
        raise
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        raise _RetryableError(str(exc)) from exc
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _RetryableError(f"unreadable reply: {exc}") from exc


def _truthy(value: Any) -> bool:
    """A reward kwarg read as a boolean (Hydra may pass "false" as a string)."""
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


def _delay(cfg: JudgeConfig, attempt: int) -> float:
    base = min(float(cfg.max_backoff), float(cfg.backoff) * 2 ** attempt)
    return base * (0.5 + random.random() / 2)  # jitter: retries from many workers do not align


def _result(reply: str | None, attempts: int, cfg: JudgeConfig) -> dict:
    value = parse_score(reply) if reply is not None else None
    score = float(cfg.default_score) if value is None else value
    return {"score": score, "judge_raw": -1.0 if value is None else value,
            "judge_parsed": 0.0 if value is None else 1.0, "judge_default": 1.0 if value is None else 0.0,
            "judge_error": 1.0 if reply is None else 0.0, "judge_attempts": float(attempts)}


_SYNC_LIMITS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SYNC_LOCK = threading.Lock()


def _sync_limit(cfg: JudgeConfig) -> threading.BoundedSemaphore:
    key = (cfg.base_url, int(cfg.max_concurrency))
    with _SYNC_LOCK:
        return _SYNC_LIMITS.setdefault(key, threading.BoundedSemaphore(int(cfg.max_concurrency)))


def ask(cfg: JudgeConfig, messages: list[dict]) -> tuple[str | None, int]:
    """The judge's reply (None when every attempt failed) and the number of attempts, blocking."""
    attempts = 0
    for attempt in range(int(cfg.retries) + 1):
        attempts += 1
        try:
            with _sync_limit(cfg):
                return _request(cfg, messages), attempts
        except _RetryableError as exc:
            logger.debug("judge attempt %d failed: %s", attempts, exc)
        except urllib.error.HTTPError as exc:  # 4xx: a request the server will never accept
            logger.warning("judge request rejected: HTTP %s %s", exc.code, exc.reason)
            return None, attempts
        if attempt < int(cfg.retries):
            time.sleep(_delay(cfg, attempt))
    return None, attempts


# Semaphores belong to one event loop; verl's reward workers each run their own.
_ASYNC_LIMITS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


async def ask_async(cfg: JudgeConfig, messages: list[dict]) -> tuple[str | None, int]:
    """Async `ask`: the request runs in a worker thread; concurrency is limited per event loop and endpoint."""
    per_loop = _ASYNC_LIMITS.setdefault(asyncio.get_running_loop(), {})
    key = (cfg.base_url, int(cfg.max_concurrency))
    sem = per_loop.setdefault(key, asyncio.Semaphore(int(cfg.max_concurrency)))
    attempts = 0
    for attempt in range(int(cfg.retries) + 1):
        attempts += 1
        try:
            async with sem:
                return await asyncio.to_thread(_request, cfg, messages), attempts
        except _RetryableError as exc:
            logger.debug("judge attempt %d failed: %s", attempts, exc)
        except urllib.error.HTTPError as exc:
            logger.warning("judge request rejected: HTTP %s %s", exc.code, exc.reason)
            return None, attempts
        if attempt < int(cfg.retries):
            await asyncio.sleep(_delay(cfg, attempt))
    return None, attempts


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """Judge reward in [0, 1] with keys `KEYS` (blocking; see the module rule)."""
    cfg = config_from(kwargs)
    reply, attempts = ask(cfg, build_messages(data_source, solution_str, ground_truth, extra_info, cfg))
    return _result(reply, attempts, cfg)


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any,
                              extra_info: dict | None = None, **kwargs: Any) -> dict:
    """Judge reward for verl's async reward loop (same result as `compute_score`)."""
    cfg = config_from(kwargs)
    reply, attempts = await ask_async(cfg, build_messages(data_source, solution_str, ground_truth, extra_info, cfg))
    return _result(reply, attempts, cfg)


def compute_score_batch(data_sources: list, solution_strs: list, ground_truths: list, extra_infos: list | None = None,
                        **kwargs: Any) -> list[dict]:
    """Judge a batch with up to `max_concurrency` requests in flight (verl's batch reward manager)."""
    cfg = config_from(kwargs)
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    with ThreadPoolExecutor(max_workers=int(cfg.max_concurrency)) as pool:
        return list(pool.map(lambda i: compute_score(data_sources[i], solution_strs[i], ground_truths[i], infos[i],
                                                     **kwargs), range(len(solution_strs))))
