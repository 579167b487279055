"""Composition: route each row by `data_source` to a weighted sum of named rewards.

A spec is a small mapping (YAML file, JSON string, or dict)::

    routes:                      # data_source (or fnmatch pattern) -> {reward name: weight}
      medrl/grounding: {iou: 0.9, format: 0.1}
      medrl/report:    {bleu: 0.9, format: 0.1}
      "medrl/vqa*":    {vqa: 1.0}
      my/judged:       {judge: {weight: 1.0, category: report}}   # per-term reward kwargs
      my/lesions:      [{name: iou, weight: 0.5}, {path: my_rewards/lesion.py, weight: 0.5}]  # a user's file
    kwargs:                      # reward name -> kwargs for every use of that reward
      iou: {box_convention: abs_resized}

An exact route key wins; otherwise patterns are tried in the order written.
A term with a `path` is a function in a user's file (`medrl.rewards.user_reward`),
resolved against the spec file's folder and loaded when the spec is.
The score is sum(weight * reward score); with non-negative weights that sum to 1
(the default routes) it stays in [0, 1]. The returned keys are the same for every
row of a spec, because verl needs identical keys across a batch: `score`, then for
each reward used anywhere in the spec its score under its name and its other keys
as `name/key`. Where the row's route does not use a reward, its keys are NaN ("does
not apply"), never 0.0: a 0.0 would be averaged in as a real miss. So verl's
per-data-source validation metrics show each route's own rewards, a batch-wide
`nanmean` of a key covers exactly the rows that use it, and a plain mean over a mixed
batch is NaN instead of a silently diluted figure. `score` is always a number.

Default routes (`DEFAULT_SPEC`): grounding (also change_grounding) -> 0.9 IoU +
0.1 format, report (also change_caption) -> 0.9 BLEU + 0.1 format, VQA -> VQA
accuracy, change_action -> the change action-vector reward. The small format term rewards the
think/answer layout without outweighing the task; it is a constant offset for a
policy never asked to think, which GRPO's group baseline removes.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import yaml

from medrl.plain import plain
from medrl.rewards import user_reward
from medrl.rewards.registry import (  # noqa: F401  (re-exported: the API users import from here)
    BUILTIN_REWARDS,
    RewardEntry,
    RewardFn,
    get_reward,
    register_reward,
    reward_names,
)

@dataclass(frozen=True)
class Term:
    name: str
    weight: float
    kwargs: dict = field(default_factory=dict)
    entry: RewardEntry | None = None  # a user's file: loaded with the spec, not registered by name

    def reward(self) -> RewardEntry:
        """The reward this term calls."""
        return self.entry or get_reward(self.name)


@dataclass(frozen=True)
class Route:
    pattern: str
    terms: tuple[Term, ...]


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ordered routes, per-reward kwargs, and the union of returned keys."""

    routes: tuple[Route, ...]
    kwargs: dict
    keys: tuple[str, ...]


class UnknownDataSourceError(ValueError):
    """A row's data_source has no route in the reward spec."""


DEFAULT_SPEC: dict = {
    "routes": {
        "medrl/grounding": {"iou": 0.9, "format": 0.1},
        "medrl/change_grounding": {"iou": 0.9, "format": 0.1},
        "medrl/report": {"bleu": 0.9, "format": 0.1},
        "medrl/change_caption": {"bleu": 0.9, "format": 0.1},
        "medrl/change_action": {"change": 1.0},
        "medrl/vqa": {"vqa": 1.0},
    },
    "kwargs": {},
}


def _parse_terms(pattern: str, value: Any, base: str | None = None) -> tuple[Term, ...]:
    where = f"route {pattern!r}"
    if isinstance(value, str):
        value = {value: 1.0}
    if isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, dict) and "path" in item:  # a user's file; its `name` is the function
                items.append((item.get("label"), item))
                continue
            if not isinstance(item, dict) or "name" not in item:
                raise ValueError(f"{where}: list items need a 'name' (and 'weight'), got {item!r}")
            rest = {k: v for k, v in item.items() if k not in ("name", "weight")}
            items.append((item["name"], {"weight": item.get("weight", 1.0), **rest}))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise ValueError(f"{where}: expected a mapping of reward name to weight, got {type(value).__name__}")
    terms = []
    for name, w in items:
        entry = None
        if isinstance(w, dict) and "path" in w:
            name, w, entry = user_reward.load_term(w, name, base, where)
        kwargs: dict = {}
        if isinstance(w, dict):
            kwargs = {k: v for k, v in w.items() if k != "weight"}
            w = w.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{where}: weight of {name!r} must be a finite number >= 0, got {w!r}")
        if entry is None:
            get_reward(str(name))  # fails early, naming the known rewards
        terms.append(Term(str(name), float(w), kwargs, entry))
    if not terms:
        raise ValueError(f"{where}: no rewards")
    return tuple(terms)


def parse_spec(raw: dict, base: str | None = None) -> Spec:
    """Validate a spec mapping (with or without the `routes` level) into a Spec; user files resolve against `base`."""
    if not isinstance(raw, dict):
        raise ValueError(f"reward spec must be a mapping, got {type(raw).__name__}")
    routes_raw = raw["routes"] if "routes" in raw else {k: v for k, v in raw.items() if k != "kwargs"}
    if not isinstance(routes_raw, dict) or not routes_raw:
        raise ValueError("reward spec has no routes (expected routes: {data_source: {reward: weight}})")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, dict) for v in kwargs.values()):
        raise ValueError("reward spec 'kwargs' must map reward names to mappings of keyword arguments")
    routes = tuple(Route(str(p), _parse_terms(str(p), v, base)) for p, v in routes_raw.items())
    user_reward.check_labels([t for r in routes for t in r.terms], kwargs)
    keys = ["score"]
    for route in routes:
        for term in route.terms:
            if term.name not in keys:
                keys.append(term.name)
                keys.extend(f"{term.name}/{k}" for k in term.reward().keys[1:])
    return Spec(routes, {str(k): dict(v) for k, v in kwargs.items()}, tuple(keys))


_SPEC_CACHE: dict[Any, Spec] = {}


def load_spec(spec: Any = None) -> Spec:
    """A Spec from None (defaults), a Spec, a dict, a JSON string, a YAML path, a reward name or `file.py[:function]`."""
    if spec is None or spec == "":
        spec = DEFAULT_SPEC
    if isinstance(spec, Spec):
        return spec
    if hasattr(spec, "items") and not isinstance(spec, dict):  # OmegaConf DictConfig from Hydra
        spec = json.loads(json.dumps(plain(spec)))
    if isinstance(spec, dict):
        key: Any = ("dict", json.dumps(spec, sort_keys=True, default=str))
        if key not in _SPEC_CACHE:
            _SPEC_CACHE[key] = parse_spec(copy.deepcopy(spec))
        return _SPEC_CACHE[key]
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"reward spec must be a path, JSON/YAML text, dict or reward name, got {type(spec).__name__}")
    text = os.fspath(spec).strip()
    if user_reward.is_reward_file(text):  # one user function for every row
        path, function = user_reward.split_target(text)
        path = user_reward.resolve(path)
        key = ("py", path, function, user_reward.version(path))
        if key not in _SPEC_CACHE:
            _SPEC_CACHE[key] = parse_spec({"routes": {"*": [{"path": path, "name": function}]}})
        return _SPEC_CACHE[key]
    if os.path.isfile(text):
        key = ("file", os.path.abspath(text), os.path.getmtime(text))
        if key not in _SPEC_CACHE:
            with open(text, encoding="utf-8") as fh:
                try:
                    raw = yaml.safe_load(fh)
                except yaml.YAMLError as exc:
                    raise ValueError(f"reward spec {text}: not valid YAML: {exc}") from exc
            try:
                _SPEC_CACHE[key] = parse_spec(raw, os.path.dirname(os.path.abspath(text)))
            except ValueError as exc:
                raise ValueError(f"reward spec {text}: {exc}") from exc
        return _SPEC_CACHE[key]
    if text in reward_names():
        return load_spec({"routes": {"*": {text: 1.0}}})
    if text.startswith("{"):
        try:
            return load_spec(json.loads(text))
        except json.JSONDecodeError:
            return load_spec(yaml.safe_load(text))
    raise ValueError(f"reward spec {text!r} is not a file, a JSON/YAML mapping, or a reward name "
                     f"({', '.join(reward_names())})")


def find_route(data_source: str, spec: Any = None) -> Route | None:
    """The route for `data_source`: the exact key, else the first matching pattern, else None."""
    s = load_spec(spec)
    ds = str(data_source)
    for route in s.routes:
        if route.pattern == ds:
            return route
    for route in s.routes:
        if fnmatch.fnmatchcase(ds, route.pattern):
            return route
    return None


def route_for(data_source: str, spec: Any = None) -> Route:
    """Like `find_route`, but raises UnknownDataSourceError naming the routes that exist."""
    route = find_route(data_source, spec)
    if route is None:
        names = route_names(spec)
        raise UnknownDataSourceError(
            f"no reward route for data_source {str(data_source)!r}; routes in the spec: {names}. "
            f"Add one (routes: {{{str(data_source)!r}: {{iou: 1.0}}}}) or give the rows a routed data_source.")
    return route


def has_route(data_source: str, spec: Any = None) -> bool:
    """Whether the spec routes `data_source` to a reward."""
    return find_route(data_source, spec) is not None


def route_names(spec: Any = None) -> list[str]:
    """The route keys (data sources or patterns) of a spec, in order."""
    return [r.pattern for r in load_spec(spec).routes]


def with_reward_kwargs(spec: Any = None, **overrides: Any) -> Spec:
    """The spec with `overrides` given to every reward that takes them as named parameters, over the spec's values.

    `medrl eval --box-convention` uses it, so the convention reaches the rewards through the spec.
    """
    s = load_spec(spec)

    def takes(term: Term) -> dict:
        # The term's own reward (a user's file too): looking it up by name loses the file.
        params = inspect.signature(term.reward().fn).parameters
        return {k: v for k, v in overrides.items() if k in params}

    routes = tuple(Route(r.pattern, tuple(replace(t, kwargs={**t.kwargs, **takes(t)}) for t in r.terms))
                   for r in s.routes)
    kwargs = {**s.kwargs, **{t.name: {**s.kwargs.get(t.name, {}), **takes(t)} for r in routes for t in r.terms}}
    return Spec(routes, kwargs, s.keys)


def reward_kwargs(spec: Any, name: str, data_source: str | None = None) -> dict:
    """The keyword arguments reward `name` gets from the spec (for `data_source`'s route when it uses the reward)."""
    s = load_spec(spec)
    route = find_route(data_source, s) if data_source is not None else None
    term = next((t for t in route.terms if t.name == name), None) if route else None
    return {**s.kwargs.get(name, {}), **(term.kwargs if term else {})}


def _term_kwargs(s: Spec, term: Term, kwargs: dict) -> dict:
    return {**kwargs, **s.kwargs.get(term.name, {}), **term.kwargs}


def _assemble(s: Spec, route: Route, parts: dict[str, dict]) -> dict:
    out = dict.fromkeys(s.keys, math.nan)  # NaN: this row's route does not use that reward
    total = 0.0
    for term in route.terms:
        res = parts[term.name]
        value = float(res.get("score", 0.0))
        total += term.weight * value
        out[term.name] = value
        for k in term.reward().keys[1:]:
            out[f"{term.name}/{k}"] = float(res.get(k, 0.0))
    out["score"] = total
    return out


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  spec: Any = None, **kwargs: Any) -> dict:
    """Weighted sum of the rewards routed to by `data_source` (see the module rule)."""
    s = load_spec(spec)
    route = route_for(data_source, s)
    parts = {t.name: t.reward().fn(data_source, solution_str, ground_truth, extra_info,
                                           **_term_kwargs(s, t, kwargs)) for t in route.terms}
    return _assemble(s, route, parts)


async def compute_score_async(data_source: str, solution_str: str, ground_truth: Any,
                              extra_info: dict | None = None, spec: Any = None, **kwargs: Any) -> dict:
    """Async `compute_score`: rewards with an async variant (the judge) are awaited, the rest run inline."""
    s = load_spec(spec)
    route = route_for(data_source, s)
    parts = {}
    for t in route.terms:
        entry = t.reward()
        kw = _term_kwargs(s, t, kwargs)
        if entry.async_fn is not None:
            parts[t.name] = await entry.async_fn(data_source, solution_str, ground_truth, extra_info, **kw)
        else:
            parts[t.name] = entry.fn(data_source, solution_str, ground_truth, extra_info, **kw)
    return _assemble(s, route, parts)


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None] | None = None, spec: Any = None, **kwargs: Any) -> list[dict]:
    """Batch variant for verl's batch reward manager; rewards with a batch variant get all their rows at once."""
    return [r for r, _ in _score_rows(data_sources, solution_strs, ground_truths, extra_infos, spec, False, kwargs)]


def score_batch_details(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None] | None = None, spec: Any = None,
                        **kwargs: Any) -> list[tuple[dict, dict[str, Any]]]:
    """`compute_score_batch`, with what each reward that has `score_details` read, by reward name, for each row."""
    return _score_rows(data_sources, solution_strs, ground_truths, extra_infos, spec, True, kwargs)


def _score_rows(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                extra_infos: Sequence[dict | None] | None, spec: Any, details: bool,
                kwargs: dict) -> list[tuple[dict, dict[str, Any]]]:
    s = load_spec(spec)
    n = len(solution_strs)
    infos = list(extra_infos) if extra_infos is not None else [None] * n
    routes = [route_for(ds, s) for ds in data_sources]
    parts: list[dict[str, dict]] = [{} for _ in range(n)]
    read: list[dict[str, Any]] = [{} for _ in range(n)]
    # Group rows by (reward, per-term kwargs) so each group is one batch call.
    groups: dict[tuple[str, str], tuple[Term, list[int]]] = {}
    for i, route in enumerate(routes):
        for t in route.terms:
            key = (t.name, json.dumps(t.kwargs, sort_keys=True, default=str))
            groups.setdefault(key, (t, []))[1].append(i)
    for (name, _), (term, rows) in groups.items():
        entry = term.reward()
        kw = _term_kwargs(s, term, kwargs)
        args = [(data_sources[i], solution_strs[i], ground_truths[i], infos[i]) for i in rows]
        if details and entry.details_fn is not None:
            pairs = [entry.details_fn(*a, **kw) for a in args]
            results = [p[0] for p in pairs]
            for i, p in zip(rows, pairs):
                read[i][name] = p[1]
        elif entry.batch_fn is not None:
            results = entry.batch_fn(*(list(col) for col in zip(*args)), **kw)
        else:
            results = [entry.fn(*a, **kw) for a in args]
        for i, res in zip(rows, results):
            parts[i][name] = res
    return [(_assemble(s, routes[i], parts[i]), read[i]) for i in range(n)]
