"""The reward contract, checked before training: `medrl reward check FILE[:function] | NAME | SPEC`.

verl calls a reward once per rollout with whatever the policy wrote. The contract:
1. it never raises (empty, huge, unicode, broken tags, malformed boxes...);
2. it returns a number or a dict with `score`, every value a finite number;
3. the score lies in the declared range (`SCORE_RANGE`, default [0, 1]);
4. every call returns the same keys (and exactly `KEYS` when the module declares them);
5. the same input gives the same result;
6. it is fast: the median call takes at most `max_ms` (the first call, which pays for imports
   and caches, is not timed).

Every reward of the target is called with adversarial outputs (`medrl.rewards.probes`)
against ground truths of its task, or the real rows of a data file, each input
`repeats` times; a call that runs past `timeout_s` counts as a hang. A spec is also
checked as composed. Each violation names the input that caused it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from medrl.rewards import compose, user_reward
from medrl.rewards.probes import Probe, probes_for

DEFAULT_MAX_MS = 50.0
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Unit:
    """One function under check: how to call it and what it declares."""

    label: str
    where: str  # file:function, module, or "spec"
    call: Callable[[Probe], Any]
    score_range: Callable[[Probe], tuple[float, float]]
    keys: tuple[str, ...] | None
    data_sources: tuple[str, ...]
    # Keys that may be NaN for a given input: a composed spec's "does not apply" value for the
    # rewards the row's route does not use. None: every value must be finite.
    may_be_nan: Callable[[Probe], set[str]] | None = None


@dataclass(frozen=True)
class Violation:
    """A broken rule, how many inputs broke it, and the first of them."""

    unit: str
    kind: str
    count: int
    input: str
    detail: str


@dataclass
class UnitReport:
    """What checking one unit found."""

    unit: Unit
    calls: int = 0
    times_ms: list[float] = field(default_factory=list)
    keys: tuple[str, ...] | None = None
    violations: list[Violation] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")  # (ms, input) of the slowest timed call

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the time per call in ms (nearest rank)."""
        if not self.times_ms:
            return float("nan")
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class CheckReport:
    """The reports of every unit of a target."""

    target: str
    units: list[UnitReport]

    @property
    def violations(self) -> list[Violation]:
        return [v for u in self.units for v in u.violations]

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        """A human-readable account: per unit its calls, keys, times and violations."""
        lines = [f"reward check of {self.target}"]
        for u in self.units:
            lo_hi = sorted({u.unit.score_range(Probe("", ds, "", None, {})) for ds in u.unit.data_sources})
            lines.append(f"- {u.unit.label} ({u.unit.where}): {u.calls} calls on {', '.join(u.unit.data_sources)}; "
                         f"score range {', '.join(f'[{lo:g}, {hi:g}]' for lo, hi in lo_hi)}; "
                         f"keys {', '.join(u.keys or ()) or '-'}")
            lines.append(f"  time per call: p50 {u.percentile(50):.3f} ms, p99 {u.percentile(99):.3f} ms, "
                         f"max {u.slowest[0]:.3f} ms ({u.slowest[1] or '-'})")
            for v in u.violations:
                lines.append(f"  VIOLATION {v.kind} ({v.count} input{'s' if v.count != 1 else ''}), first: "
                             f"{v.input}: {v.detail}")
        lines.append("OK: the contract holds" if self.ok else f"FAILED: {len(self.violations)} violation(s)")
        return "\n".join(lines)


class _Timeout(Exception):
    """Raised inside a call that ran past its time."""


def _with_timeout(fn: Callable[[], Any], seconds: float) -> Any:
    """fn(), interrupted after `seconds` by SIGALRM when this is the main thread (no limit elsewhere)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn()

    def alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) or type(v).__name__.startswith(("float", "int", "uint", "bool"))


def _same(a: Any, b: Any) -> bool:
    """Equal results, NaN equal to NaN (a NaN is reported as such, not as non-determinism)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if _is_number(a) and _is_number(b):
        fa, fb = float(a), float(b)
        return fa == fb or (math.isnan(fa) and math.isnan(fb))
    return a == b


def _result_problems(result: Any, lo: float, hi: float, may_be_nan: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(kind, detail) for each rule one call's result breaks (return type, values, range)."""
    if not isinstance(result, dict):
        if not _is_number(result):
            return [("bad return", f"returned {type(result).__name__}; expected a dict with 'score' or a number")]
        result = {"score": result}
    if "score" not in result:
        return [("bad return", f"returned a dict without 'score' (keys {sorted(result)})")]
    out = []
    for k, v in result.items():
        if not _is_number(v):
            out.append(("not a number", f"{k} = {v!r:.80}"))
        elif not math.isfinite(float(v)) and not (k in may_be_nan and math.isnan(float(v))):
            out.append(("not finite", f"{k} = {float(v)}"))
    score = result["score"]
    if _is_number(score) and math.isfinite(float(score)) and not lo <= float(score) <= hi:
        out.append(("out of range", f"score {float(score):g} outside [{lo:g}, {hi:g}]"))
    return out


def check_unit(unit: Unit, probes: Sequence[Probe], repeats: int = 2, max_ms: float = DEFAULT_MAX_MS,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> UnitReport:
    """Call `unit` on every probe `repeats` times and record each broken rule with its first input."""
    rep = UnitReport(unit)
    found: dict[str, list] = {}  # kind -> [count, first input, detail]

    def note(kind: str, probe: Probe, detail: str) -> None:
        entry = found.setdefault(kind, [0, probe.describe(), detail])
        entry[0] += 1

    for probe in probes:
        first: Any = None
        for attempt in range(max(1, repeats)):
            t0 = time.perf_counter()
            try:
                result = _with_timeout(lambda: unit.call(probe), timeout_s)
            except _Timeout:
                note("hangs", probe, f"still running after {timeout_s:g} s")
                break
            except Exception as exc:  # the contract is that nothing escapes: report whatever does
                note("raises", probe, f"{type(exc).__name__}: {str(exc)[:200]}")
                break
            ms = (time.perf_counter() - t0) * 1000
            rep.calls += 1
            if rep.calls > 1:  # the first call pays for imports and caches, not for scoring
                rep.times_ms.append(ms)
                rep.slowest = max(rep.slowest, (ms, probe.describe()))
            if attempt == 0:
                first = result
                nan_ok = unit.may_be_nan(probe) if unit.may_be_nan else frozenset()
                for kind, detail in _result_problems(result, *unit.score_range(probe), nan_ok):
                    note(kind, probe, detail)
                keys = tuple(result) if isinstance(result, dict) else ("score",)
                if rep.keys is None:
                    rep.keys = keys
                    if unit.keys is not None and set(keys) != set(unit.keys):
                        note("keys differ", probe, f"returned {list(keys)}, KEYS declares {list(unit.keys)}")
                elif set(keys) != set(rep.keys):
                    note("keys differ", probe, f"returned {list(keys)}, the first call returned {list(rep.keys)}")
            elif not _same(first, result):
                note("non-deterministic", probe, "a second call with the same input returned a different result")
    if rep.times_ms and rep.percentile(50) > max_ms:
        found["slow"] = [rep.calls, rep.slowest[1], f"median {rep.percentile(50):.1f} ms per call > {max_ms:g} ms "
                                                    f"(this input {rep.slowest[0]:.1f} ms)"]
    rep.violations = [Violation(unit.label, kind, n, first_input, detail) for kind, (n, first_input, detail)
                      in found.items()]
    return rep


def _raw_call(fn: Callable, kwargs: dict) -> Callable[[Probe], Any]:
    """Call a reward function the way verl does: keyword arguments, reward kwargs merged in."""
    def call(p: Probe) -> Any:
        out = fn(data_source=p.data_source, solution_str=p.solution, ground_truth=p.ground_truth,
                 extra_info=dict(p.extra_info), **kwargs)
        return asyncio.run(out) if inspect.iscoroutine(out) else out
    return call


def _concrete(pattern: str) -> str | None:
    """A data_source that a route pattern matches (None when the simple guess does not)."""
    import fnmatch

    guess = pattern.replace("*", "x").replace("?", "x")
    return guess if fnmatch.fnmatchcase(guess, pattern) else None


def _sources_of(name: str) -> tuple[str, ...]:
    """The default routes' data sources that use reward `name` (else its task's, else grounding)."""
    from medrl.rewards.tasks import REWARD_TASKS

    found = tuple(ds for ds, terms in compose.DEFAULT_SPEC["routes"].items() if name in terms)
    return found or (f"medrl/{REWARD_TASKS.get(name, 'grounding')}",)


def units_of(target: Any, data_sources: Sequence[str] | None = None) -> list[Unit]:
    """The functions to check for a target: each reward of the spec raw, plus the spec as composed."""
    spec = compose.load_spec(target)
    per_reward: dict[str, tuple[compose.Term, list[str]]] = {}
    for route in spec.routes:
        for t in route.terms:
            per_reward.setdefault(t.name, (t, []))[1].append(route.pattern)
    units = []
    for name, (term, patterns) in per_reward.items():
        entry = term.reward()
        user = user_reward.user_reward_of(entry)
        fn = user.raw if user else entry.fn
        where = user.where if user else getattr(fn, "__module__", name)
        if data_sources:  # those whose route uses this reward
            sources = tuple(ds for ds in data_sources if any(t.name == name for t in _route_terms(ds, spec)))
        elif patterns == ["*"]:
            sources = _sources_of(name)
        else:
            sources = tuple(s for s in map(_concrete, patterns) if s)
        keys = user.keys if user else entry.keys
        units.append(Unit(name, where, _raw_call(fn, {**spec.kwargs.get(name, {}), **term.kwargs}),
                          lambda p, rng=_score_range(entry): rng, keys, sources))
    if len(per_reward) > 1 or any(len(r.terms) > 1 for r in spec.routes):
        units.append(_composed_unit(spec, data_sources))
    return units


def _score_range(entry: compose.RewardEntry) -> tuple[float, float]:
    """The range a reward declares: a user file's SCORE_RANGE, [0, 1] for the built-in rewards."""
    user = user_reward.user_reward_of(entry)
    return user.score_range if user else user_reward.DEFAULT_RANGE


def _route_terms(data_source: str, spec: compose.Spec) -> tuple[compose.Term, ...]:
    route = compose.find_route(data_source, spec)
    return route.terms if route else ()


def _composed_unit(spec: compose.Spec, data_sources: Sequence[str] | None) -> Unit:
    """The spec as verl calls it through custom_reward/medrl_reward.py; its range is each route's weighted sum."""
    def ranges(p: Probe) -> tuple[float, float]:
        route = compose.route_for(p.data_source, spec)
        bounds = [(t.weight * lo, t.weight * hi) for t in route.terms for lo, hi in [_score_range(t.reward())]]
        return sum(b[0] for b in bounds), sum(b[1] for b in bounds)

    sources = tuple(data_sources) if data_sources else tuple(s for s in (_concrete(r.pattern) for r in spec.routes)
                                                               if s)
    def unused_keys(p: Probe) -> set[str]:
        used = {t.name for t in compose.route_for(p.data_source, spec).terms}
        return {k for k in spec.keys if k != "score" and k.split("/", 1)[0] not in used}

    return Unit("composed spec", "medrl.rewards.compose", _raw_call(compose.compute_score, {"spec": spec}),
                ranges, spec.keys, sources, unused_keys)


def run_check(target: Any, data_sources: Sequence[str] | None = None, rows: Sequence[dict] | None = None,
              ground_truths: Sequence[Any] | None = None, repeats: int = 2, max_ms: float = DEFAULT_MAX_MS,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckReport:
    """Check every unit of `target` (reward name, spec, or `file.py[:function]`) against the contract.

    `rows` (dicts with data_source, ground_truth, extra_info) replace the built-in ground
    truths; their data sources are the ones checked.
    """
    if rows:
        data_sources = sorted({str(r["data_source"]) for r in rows})
    spec = compose.load_spec(target)
    unrouted = [ds for ds in data_sources or () if not compose.has_route(ds, spec)]
    if unrouted:
        raise ValueError(f"no reward route for data_source {unrouted}; routes: {compose.route_names(spec)}")
    reports = []
    for unit in units_of(spec, data_sources):
        probes = probes_for(unit.data_sources, rows=rows, ground_truths=ground_truths)
        reports.append(check_unit(unit, probes, repeats, max_ms, timeout_s))
    return CheckReport(str(target), reports)
