"""The slow tier's grouping (tests/conftest.py) really keeps a group on one xdist worker.

pytest 9 with xdist 3.8 ignored the groups without a word (pyproject.toml pins pytest for that):
the slow tier then set up two local Slurm clusters and ran the e2e run twice.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = '''
import os
import pytest

@pytest.mark.parametrize("i", range(6))
def test_probe(i):
    with open(os.environ["PROBE_LOG"], "a") as fh:
        fh.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")
'''
CONFTEST = '''
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group("one"))
'''


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    log = tmp_path / "workers.txt"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                           "--dist", "loadgroup", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PROBE_LOG": str(log)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = log.read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1 and workers[0].startswith("gw"), workers
