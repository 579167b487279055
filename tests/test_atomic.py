"""Atomic outputs: nothing at the target until success, umask-respecting permissions."""

from __future__ import annotations

import os

import pytest

from medrl.atomic import atomic_open, write_json


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out" / "a.json"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_success_replaces_and_respects_umask(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    old = os.umask(0o022)
    try:
        write_json(target, {"x": 1})
    finally:
        os.umask(old)
    assert target.read_text().strip().startswith("{") and '"x": 1' in target.read_text()
    assert (target.stat().st_mode & 0o777) == 0o644


def test_mode_for_executables(tmp_path):
    from medrl.atomic import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "job.sh", mode=0o777) as tmp:
            tmp.write_text("#!/bin/sh\n")
    finally:
        os.umask(old)
    assert ((tmp_path / "job.sh").stat().st_mode & 0o777) == 0o755
