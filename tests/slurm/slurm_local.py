"""A real single-node Slurm on localhost for tests (Debian packages, munge auth, no systemd).

Facts it relies on are in ../shared/notes/slurm-local.md. Every daemon it starts is
remembered by PID and stopped by PID; nothing is killed by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

def missing() -> list[str]:
    """The Slurm and munge programs this machine lacks ([] when a local cluster can start)."""
    return [c for c in ("sbatch", "slurmctld", "slurmd", "munged") if not shutil.which(c)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> tuple[str, str]:
    """(node name, the `slurmd -C` hardware fields) of this machine."""
    out = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout
    first = out.splitlines()[0].split()
    name = first[0].split("=", 1)[1]
    return name, " ".join(first[1:])


def _munge_ok() -> bool:
    if not shutil.which("munge"):
        return False
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    if enc.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0


@dataclass
class LocalSlurm:
    """Handle on a running local cluster: its config, node name and daemons."""

    root: Path
    node: str
    conf: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    munged_pid: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands (sbatch, squeue, scontrol...)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(list(args), env=self.env, **kw)

    def job_state(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` fields of one job as a dict (JobState, ExitCode, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        fields = {}
        for tok in out.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields[k] = v
        return fields

    def stop(self) -> None:
        """Stop the daemons this object started (by PID)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.munged_pid:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def start(root: Path, kill_wait: int = 5) -> LocalSlurm:
    """Write slurm.conf under `root`, start munged (if needed), slurmctld and slurmd; wait until idle.

    Slurm itself is installed by .ci/run (or `apt-get install slurm-wlm munge`), never by a test.
    """
    if missing():
        raise RuntimeError(f"Slurm is not installed (missing {missing()}): apt-get install slurm-wlm munge")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(exist_ok=True)
    cluster = LocalSlurm(root=root, node="", conf=root / "slurm.conf")

    if not _munge_ok():
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        # A system daemon that outlives the session by design: not one of the test session's processes.
        env = {k: v for k, v in os.environ.items() if k != "MEDRL_TEST_SESSION"}
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, env=env)
        pid_file = run_dir / "munged.pid"
        for _ in range(50):
            if _munge_ok():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("munged did not come up")
        if pid_file.exists():
            cluster.munged_pid = int(pid_file.read_text().strip())

    node, hw = _node_line()
    cluster.node = node
    ctld_port, slurmd_port = _free_port(), _free_port()
    cluster.conf.write_text(f"""\
ClusterName=medrltest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MailProg=/bin/true
KillWait={kill_wait}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName={node} NodeAddr=127.0.0.1 {hw} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = cluster.env
    cluster.procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    cluster.procs.append(subprocess.Popen(["slurmd", "-D", "-N", node], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = cluster.run("sinfo", "-h", "-o", "%t").stdout.strip()
        if out in ("idle", "mix", "alloc"):
            return cluster
        if any(p.poll() is not None for p in cluster.procs):
            break
        time.sleep(0.3)
    cluster.stop()
    logs = "\n".join((root / "log" / f).read_text()[-2000:]
                     for f in ("slurmctld.log", "slurmd.log") if (root / "log" / f).exists())
    raise RuntimeError(f"local Slurm did not become idle:\n{logs}")
