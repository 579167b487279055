"""What a stage was made from, so that a run folder never reports an old result as the new one.

A stage's fingerprint is its resolved verl command (minus the keys that only say how long to go
on and how often to save or validate, which a resumed run may change), the bytes of its inputs
(data files, reward file and spec), the code (package versions and medrl's own source) and the
fingerprint of the stage it starts from. When any of it differs from what the run folder
recorded, the stage and the stages after it run again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import medrl

# verl keys a run may change and still resume the same training: its length and its bookkeeping.
RESUMABLE_KEYS = frozenset({
    "trainer.total_training_steps", "trainer.total_epochs", "trainer.save_freq", "trainer.test_freq",
    "trainer.val_before_train", "trainer.resume_mode", "trainer.logger", "trainer.log_val_generations",
    "trainer.max_actor_ckpt_to_keep", "trainer.max_critic_ckpt_to_keep",
})


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(root: Path = Path(medrl.__file__).parent) -> str:
    """SHA-256 over medrl's own source files (names and bytes), the code version of a run."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".yaml", ".json", ".jinja", ".sh"):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def command_settings(cmd: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the command's `key=value` arguments plus its program words, its resumable keys) of a command."""
    settings, length, program = {}, {}, []
    for arg in cmd:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            (length if key.lstrip("+") in RESUMABLE_KEYS else settings)[key] = value
        else:
            program.append(arg)
    settings["<program>"] = " ".join(program)
    return settings, length


def inputs_digest(paths: Iterable[Any], known: dict[str, str] | None = None) -> dict[str, str]:
    """{path: sha256} of the values that name existing files (data, reward file, spec); `known` hashes are reused.

    Other values (a reward kwarg such as a number or a box convention) are not inputs and are skipped.
    """
    known = known or {}
    return {str(p): known.get(str(p)) or file_sha256(p) for p in paths
            if isinstance(p, str) and p and Path(p).is_file()}


def stage_fingerprint(cmd: list[str], inputs: dict[str, str], code: dict[str, str],
                      upstream: str | None) -> dict[str, Any]:
    """The record of what a stage is made from (JSON-able); `inputs` is {path: sha256}."""
    settings, length = command_settings(cmd)
    return {"settings": settings, "length": length, "inputs": dict(inputs), "code": dict(code),
            "upstream": upstream}


def digest(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint (what the next stage records as its upstream)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _short(value: Any, n: int = 80) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _changed_keys(o: dict[str, Any], n: dict[str, Any]) -> list[str]:
    return [f"{key}: {_short(o.get(key, '(unset)'))} -> {_short(n.get(key, '(unset)'))}"
            for key in sorted(set(o) | set(n)) if o.get(key) != n.get(key)]


def length_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The resumable keys (length, saving, validation) that differ: training may go on from a checkpoint."""
    return _changed_keys((old or {}).get("length", {}), new["length"])


def what_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Plain lines naming each difference that makes a stage's result another one ([] if none).

    The resumable keys are left out (`length_changed`): a run may stop and go on with other values.
    """
    if not old:
        return ["no fingerprint was recorded (the stage was run by an older medrl)"]
    lines = _changed_keys(old.get("settings", {}), new["settings"])
    o, n = old.get("inputs", {}), new["inputs"]
    for path in sorted(set(o) | set(n)):
        if o.get(path) != n.get(path):
            what = "is new" if path not in o else "is gone" if path not in n else "changed content"
            lines.append(f"input {path} {what}")
    o, n = old.get("code", {}), new["code"]
    for key in sorted(set(o) | set(n)):
        if o.get(key) != n.get(key):
            lines.append(f"code: {key} {o.get(key, '(none)')} -> {n.get(key, '(none)')}")
    if old.get("upstream") != new["upstream"]:
        lines.append("the stage it starts from was run again")
    return lines
