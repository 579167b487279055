"""Rewards users write themselves: a Python file and a function in it, loaded by path.

A spec term names the file (relative to the spec file's folder, else to the working
directory) and the function (default `compute_score`)::

    routes:
      medrl/grounding:
        - {name: iou, weight: 0.5}
        - {path: my_rewards/lesion.py, name: compute_score, weight: 0.5, min_area: 0.01}
      medrl/report: {bleu: 0.8, lesion: {path: my_rewards/lesion.py, weight: 0.2}}

Other keys of the term are keyword arguments for the function. Its results are logged
under a label: the mapping key, else `label:`, else the file name (`lesion`), with
`.function` added when the function is not `compute_score`.

The file is loaded wherever the spec is (verl's Ray reward workers, `medrl eval`,
`medrl reward ...`), so it works in every process that scores. Its folder is put on
`sys.path` so that it can import modules next to it. Optional module constants describe
`compute_score`: `KEYS` (the keys every call returns, "score" first) and `SCORE_RANGE`
(default (0, 1)); another function of the file gets the default range and no declared keys.
A missing file, a missing function, or a signature verl cannot call is a
`RewardFileError` when the spec loads, naming the file and what is wrong.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_FUNCTION = "compute_score"
DEFAULT_RANGE = (0.0, 1.0)
VERL_SIGNATURE = "compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)"
_TERM_KEYS = ("path", "name", "label", "weight")
_TARGET_RE = re.compile(r"^(?P<path>.+\.py)(?::(?P<function>[A-Za-z_]\w*))?$")


class RewardFileError(ValueError):
    """A user's reward file cannot be used: missing, not importable, no such function, wrong signature."""


@dataclass(frozen=True)
class UserReward:
    """A loaded user reward: where it came from, its raw function and what it declares."""

    label: str
    path: str
    function: str
    raw: Callable[..., Any]
    keys: tuple[str, ...] | None  # None: the module declares no KEYS
    score_range: tuple[float, float]
    accepts: frozenset[str] | None  # keyword arguments it takes; None: it takes **kwargs

    @property
    def where(self) -> str:
        return f"{self.path}:{self.function}"


_MODULES: dict[tuple[str, Any], Any] = {}


def is_reward_file(text: str) -> bool:
    """Whether `text` reads as `path.py` or `path.py:function`."""
    return bool(_TARGET_RE.match(str(text).strip()))


def split_target(text: str) -> tuple[str, str]:
    """(path, function) of `path.py[:function]`."""
    m = _TARGET_RE.match(str(text).strip())
    if not m:
        raise RewardFileError(f"{text!r} is not a reward file (expected path.py or path.py:function)")
    return m["path"], m["function"] or DEFAULT_FUNCTION


def resolve(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """Absolute path of a reward file: `path` itself when absolute, else relative to `base` (else the cwd)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute():
        p = Path(base or os.getcwd()) / p
    return os.path.abspath(p)


def version(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, None when it is missing: a changed file is loaded again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def load_module(path: str) -> Any:
    """Import the file at absolute `path` once per version of it (`version`), under a name of its own."""
    if not os.path.isfile(path):
        hint = " (it is a folder)" if os.path.isdir(path) else ""
        raise RewardFileError(f"reward file {path}: no such file{hint}")
    if not path.endswith(".py"):
        raise RewardFileError(f"reward file {path}: not a .py file")
    key = (path, version(path))
    if key in _MODULES:
        return _MODULES[key]
    stem = re.sub(r"\W", "_", Path(path).stem)
    name = f"_medrl_reward_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardFileError(f"reward file {path}: Python cannot load it")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.append(folder)  # appended: a sibling module never shadows an installed one
    sys.modules[name] = module  # dataclasses and pickle look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any error in user code at import: report it with the file, not a traceback of ours
        sys.modules.pop(name, None)
        raise RewardFileError(f"reward file {path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    _MODULES[key] = module
    return module


def _accepted_keywords(fn: Callable, where: str) -> frozenset[str] | None:
    """Keyword arguments `fn` takes (None when it takes **kwargs); RewardFileError if verl could not call it."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise RewardFileError(f"{where}: cannot read its signature ({exc})") from exc
    try:
        sig.bind(data_source="", solution_str="", ground_truth="", extra_info={})
    except TypeError as exc:
        raise RewardFileError(f"{where}: signature {fn.__name__}{sig} cannot be called the way verl calls "
                              f"a reward, {VERL_SIGNATURE}: {exc}") from exc
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _declared_keys(module: Any, where: str) -> tuple[str, ...] | None:
    keys = getattr(module, "KEYS", None)
    if keys is None:
        return None
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys) or not keys or keys[0] != "score":
        raise RewardFileError(f"{where}: KEYS must be a tuple of strings starting with 'score', got {keys!r}")
    return tuple(keys)


def _declared_range(module: Any, where: str) -> tuple[float, float]:
    rng = getattr(module, "SCORE_RANGE", DEFAULT_RANGE)
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError) as exc:
        raise RewardFileError(f"{where}: SCORE_RANGE must be (low, high), got {rng!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise RewardFileError(f"{where}: SCORE_RANGE must be finite with low <= high, got {rng!r}")
    return lo, hi


def load_reward_file(path: str | os.PathLike, function: str = DEFAULT_FUNCTION, label: str | None = None,
                     base: str | os.PathLike | None = None) -> UserReward:
    """Load and validate `function` from the reward file `path` (relative paths against `base`)."""
    full = resolve(path, base)
    module = load_module(full)
    where = f"reward file {full}"
    fn = getattr(module, function, None)
    if fn is None:
        found = sorted(n for n, v in vars(module).items()
                       if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_"))
        raise RewardFileError(f"{where}: no function {function!r}; functions defined there: {found or 'none'}")
    if not callable(fn):
        raise RewardFileError(f"{where}: {function!r} is a {type(fn).__name__}, not a function")
    where = f"{where}:{function}"
    stem, main = Path(full).stem, function == DEFAULT_FUNCTION
    return UserReward(label=label or (stem if main else f"{stem}.{function}"), path=full, function=function, raw=fn,
                      keys=_declared_keys(module, where) if main else None,
                      score_range=_declared_range(module, where) if main else DEFAULT_RANGE,
                      accepts=_accepted_keywords(fn, where))


def check_kwargs(reward: UserReward, kwargs: dict, where: str) -> None:
    """RewardFileError when the spec gives `reward` keyword arguments its function does not take."""
    if reward.accepts is None:
        return
    unknown = sorted(set(kwargs) - reward.accepts)
    if unknown:
        raise RewardFileError(f"{where}: {reward.where} takes no keyword argument(s) {unknown}; "
                              f"it takes {sorted(reward.accepts)}")


def as_score_dict(value: Any) -> dict:
    """A reward's return value as a dict: a bare number becomes {"score": number}, as verl reads it."""
    return value if isinstance(value, dict) else {"score": value}


def _wrappers(reward: UserReward) -> tuple[Callable[..., dict], Callable[..., Any] | None]:
    """(sync, async-or-None) callables with compose's calling convention for a user function."""
    raw, accepts = reward.raw, reward.accepts

    def keywords(kwargs: dict) -> dict:
        # Reward kwargs reach every term of a spec; a function without **kwargs gets only its own.
        return kwargs if accepts is None else {k: v for k, v in kwargs.items() if k in accepts}

    if inspect.iscoroutinefunction(raw):
        async def call_async(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
            return as_score_dict(await raw(data_source=data_source, solution_str=solution_str,
                                           ground_truth=ground_truth, extra_info=extra_info, **keywords(kwargs)))

        @functools.wraps(raw)
        def call_sync(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
            return asyncio.run(call_async(data_source, solution_str, ground_truth, extra_info, **kwargs))

        return call_sync, call_async

    @functools.wraps(raw)
    def call(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        return as_score_dict(raw(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                                 extra_info=extra_info, **keywords(kwargs)))

    return call, None


def reward_entry(reward: UserReward) -> Any:
    """A compose RewardEntry calling the user's function; the UserReward rides along (`user_reward_of`)."""
    from medrl.rewards.registry import RewardEntry

    fn, async_fn = _wrappers(reward)
    fn.medrl_user_reward = reward  # type: ignore[attr-defined]
    return RewardEntry(reward.label, fn, reward.keys or ("score",), None, async_fn)


def user_reward_of(entry: Any) -> UserReward | None:
    """The UserReward behind a compose RewardEntry, or None for built-in and registered rewards."""
    return getattr(entry.fn, "medrl_user_reward", None)


def load_term(term: dict, label: str | None, base: str | os.PathLike | None, where: str) -> tuple[str, dict, Any]:
    """Load the user file a spec term names: (label, {weight, **kwargs}, RewardEntry) for spec parsing."""
    path = term.get("path")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise RewardFileError(f"{where}: a term's path must be a file name, got {path!r}")
    function = term.get("name", DEFAULT_FUNCTION)
    if not isinstance(function, str) or not function.isidentifier():
        raise RewardFileError(f"{where}: name must be a function name in {path}, got {function!r}")
    reward = load_reward_file(path, function, term.get("label") or label, base)
    rest = {k: v for k, v in term.items() if k not in _TERM_KEYS}
    check_kwargs(reward, rest, where)
    return reward.label, {"weight": term.get("weight", 1.0), **rest}, reward_entry(reward)


def check_labels(terms: list, kwargs: dict) -> None:
    """Within one spec a label names one reward; spec-level kwargs of a user reward must be ones it takes."""
    from medrl.rewards.registry import BUILTIN_REWARDS

    seen: dict[str, UserReward] = {}
    for term in terms:
        user = user_reward_of(term.reward())
        if user is None:
            continue
        if term.name in BUILTIN_REWARDS:
            raise RewardFileError(f"{user.where}: its label {term.name!r} is a built-in reward; "
                                  f"give the term another label (label: my_{term.name})")
        other = seen.setdefault(term.name, user)
        if other.where != user.where:
            raise RewardFileError(f"label {term.name!r} names two rewards, {other.where} and {user.where}; "
                                  f"give one of the terms a label of its own (label: ...)")
    for name, kw in kwargs.items():
        if name in seen:
            check_kwargs(seen[name], kw, f"kwargs of {name!r}")
