"""Shared fixtures: a tiny Qwen2.5-VL built offline once per test session; no process outlives its test.

Every process a test starts inherits MEDRL_TEST_SESSION (this session's id). After each test,
a process carrying it that is no longer a descendant of pytest (Ray daemons, a vLLM engine core,
a torchrun child whose parent died) gets a grace period to exit, is then ended, and fails the
test naming it; so do /dev/shm segments the test created and nobody holds. At the end of the
session every process still carrying the id fails the run, descendants included.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from hypothesis import settings


from medrl.processes import describe, orphaned_shm, processes_with, remove_shm, run_logged, shm_segments, terminate

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every stage a test launches has a time limit: a hang fails its test with the log's tail
# (medrl.processes.RunTimeout) instead of eating the CI's 90 minutes.
os.environ.setdefault("MEDRL_STAGE_TIMEOUT_S", "900")
SESSION_ENV = "MEDRL_TEST_SESSION"
os.environ[SESSION_ENV] = SESSION = uuid.uuid4().hex
LEFTOVER_GRACE_S = 30  # Ray and vLLM take a few seconds to shut down after their driver returns
# Segments the tests of the leftover rules make on purpose (another xdist worker may be holding one).
OWN_SHM = "psm_medrltest"

REPO = Path(__file__).resolve().parents[1]
# Property tests time nothing: a loaded machine (or the other xdist worker) must not fail them.
settings.register_profile("medrl", deadline=None)
settings.load_profile("medrl")


def session_processes(session: str = SESSION) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) whose environment carries this test session's id."""
    return processes_with(SESSION_ENV, session)


def run_limited(cmd: list[str], log: Path, timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command as medrl runs a stage: (exit code, its output, also in `log`).

    Its own process group, and a time limit: past it, the command and everything it started are
    ended and the test fails with the log's last lines (medrl.processes.RunTimeout).
    """
    rc = run_logged(cmd, dict(os.environ if env is None else env), log, None, timeout_s)
    return rc, log.read_text(encoding="utf-8", errors="replace")


def import_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (the folder is on sys.path only while it imports)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def stray_processes(keep: set[int], grace_s: float = LEFTOVER_GRACE_S) -> list[str]:
    """End this session's processes outside `keep` that do not exit within `grace_s`; describe them."""
    strays = [p for p in session_processes() if p.pid not in keep]
    if not strays:
        return []
    _, alive = psutil.wait_procs(strays, timeout=grace_s)
    described = [describe(p) for p in alive]
    terminate(alive, grace_s=0)
    return described


def _is_helper(p: psutil.Process) -> bool:
    """multiprocessing's resource tracker: lives as long as pytest by design."""
    try:
        return p.ppid() == os.getpid() and "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def pytest_configure(config):
    """The suite's own marker besides `slow` (pyproject.toml): `make test-fast` leaves these out."""
    config.addinivalue_line("markers", "verl_load: loads rows through verl's RLHFDataset with a real processor "
                                       "(10-40 s each; in `make test`'s parallel tier, not in `make test-fast`)")


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    """Fail a test that leaves processes (outside pytest's own tree) or shared memory behind."""
    shm_before = shm_segments()
    yield
    # Descendants of pytest are its fixtures' servers (a local Slurm); they are checked at session end.
    keep = {p.pid for p in psutil.Process().children(recursive=True)}
    strays = stray_processes(keep)
    new = {n for n in shm_segments() - shm_before if not n.startswith(OWN_SHM)}
    # Not the segments of the last 2 s: another run (an xdist worker's) may be about to map one.
    segments = remove_shm(orphaned_shm(new, older_than_s=2))
    problems = [f"process {s}" for s in strays] + [f"/dev/shm/{n} (nobody holds it)" for n in segments]
    if problems:
        pytest.fail(f"{request.node.nodeid} left {len(problems)} thing(s) behind (now ended/removed):\n  "
                    + "\n  ".join(problems), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """Every process of this test session must be gone when it ends, fixtures' servers included."""
    keep = {p.pid for p in psutil.Process().children(recursive=True) if _is_helper(p)}
    strays = stray_processes(keep)
    if strays:
        print(f"\nERROR: the test session left {len(strays)} process(es) running (now ended):\n  "
              + "\n  ".join(strays))
        session.exitstatus = 1


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where examples/, recipes/, custom_reward/ live)."""
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-init tiny Qwen2.5-VL (model, tokenizer, processor, chat template) on disk."""
    from medrl.training.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5-vl"))
