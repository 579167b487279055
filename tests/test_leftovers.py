"""The suite's leftover check (tests/conftest.py) and the shared-memory rules it uses (medrl.processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil
from conftest import SESSION, session_processes, stray_processes

from medrl.processes import LEFTOVER_PREFIXES, SHM, clean_leftovers, describe, orphaned_shm


def _detached_sleeper() -> psutil.Process:
    """A process of this test session that is no longer pytest's descendant (its parent exited)."""
    out = subprocess.run([sys.executable, "-c",
                          "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                          "'import time; time.sleep(300)'], start_new_session=True, "
                          "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"],
                         capture_output=True, text=True, check=True)
    return psutil.Process(int(out.stdout))


def test_a_process_that_outlives_its_parent_is_named_and_ended():
    stray = _detached_sleeper()
    assert stray.pid not in {p.pid for p in psutil.Process().children(recursive=True)}
    assert stray.pid in {p.pid for p in session_processes(SESSION)}
    found = stray_processes(keep=set(), grace_s=0.5)
    assert any(f"pid {stray.pid} " in line and "time.sleep(300)" in line for line in found)
    time.sleep(0.2)
    assert not stray.is_running() or stray.status() == psutil.STATUS_ZOMBIE


def test_a_process_that_exits_within_the_grace_is_not_a_leftover():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    try:
        assert stray_processes(keep=set(), grace_s=15) == []
    finally:
        proc.wait()


def test_a_kept_process_is_left_alone():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert stray_processes(keep={proc.pid}, grace_s=0.1) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_shared_memory_nobody_holds_is_orphaned_and_held_memory_is_not():
    free, held = (SHM / f"psm_medrltest{uuid.uuid4().hex[:8]}" for _ in range(2))
    free.write_bytes(b"\0" * 64)
    held.write_bytes(b"\0" * 64)
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(held)!r}, 'rb'); import time; time.sleep(30)"])
    try:
        time.sleep(1.0)
        orphans = orphaned_shm({free.name, held.name})
        assert free.name in orphans and held.name not in orphans
    finally:
        holder.kill()
        holder.wait()
        free.unlink(missing_ok=True)
        held.unlink(missing_ok=True)


def _orphaned_semaphore() -> str:
    """A multiprocessing semaphore whose creator exited before its finalizer could unlink it.

    Its resource tracker would unlink it; a SIGKILLed process group loses the tracker too, which
    unregistering stands for here.
    """
    code = ("import multiprocessing as mp, os; from multiprocessing import resource_tracker as rt; "
            "lock = mp.get_context('spawn').Lock(); name = lock._semlock.name; rt.unregister(name, 'semaphore'); "
            "print(name.lstrip('/'), flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return "sem." + out.stdout.strip()


def test_an_orphaned_semaphore_is_a_leftover_kind_that_a_restart_removes(tmp_path):
    name = _orphaned_semaphore()
    assert name.startswith("sem.mp-") and (SHM / name).exists()
    try:
        assert name not in orphaned_shm({name})  # not a shared-memory segment: the default kinds skip it
        assert name in orphaned_shm({name}, prefixes=LEFTOVER_PREFIXES)
        old = time.time() - 120  # a restart removes only what is over a minute old
        os.utime(SHM / name, (old, old))
        _, removed = clean_leftovers(tmp_path, echo=lambda s: None)
        assert name in removed and not (SHM / name).exists()
    finally:
        (SHM / name).unlink(missing_ok=True)


def test_a_process_that_became_a_zombie_is_described_without_raising():
    # CI failed once in clean_leftovers: a leftover exited between being found and being described.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = psutil.Process(child.pid)
    deadline = time.time() + 10
    while zombie.status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.05)
    assert zombie.status() == psutil.STATUS_ZOMBIE
    try:
        assert describe(zombie) == f"pid {child.pid}: (exited)"
    finally:
        child.wait()
