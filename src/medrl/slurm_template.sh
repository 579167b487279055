# ---- Ray-on-Slurm bootstrap (static part, shipped as medrl/slurm_template.sh) ----
# Reads the MEDRL_* settings above. One Ray node per Slurm node: the batch host
# runs the head, every other host joins it; the script waits (bounded) until every
# node is registered, runs the command on the head and stops what it started on
# exit, failure or cancel. It never runs `ray stop`, which would also kill other
# Ray clusters of the same user on a shared node.

medrl_log() { printf '[medrl-slurm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
medrl_die() { medrl_log "ERROR: $*" >&2; exit 1; }

if [ -z "${SLURM_JOB_ID:-}" ] || [ -z "${SLURM_JOB_NODELIST:-}" ]; then
    medrl_die "not inside a Slurm allocation: submit this script with sbatch"
fi
for tool in "${MEDRL_RAY_START[0]}" "${MEDRL_COMMAND[0]}" python3 srun scontrol; do
    command -v "$tool" >/dev/null || medrl_die "'$tool' not found on PATH: check the environment set-up"
done

mapfile -t MEDRL_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
[ "${#MEDRL_HOSTS[@]}" -gt 0 ] || medrl_die "empty node list '$SLURM_JOB_NODELIST'"

# The head is the host running this script, so the command and the head share it.
MEDRL_HEAD=${MEDRL_HOSTS[0]}
for h in "${MEDRL_HOSTS[@]}"; do
    if [ "$h" = "${SLURMD_NODENAME:-}" ]; then MEDRL_HEAD=$h; fi
done
MEDRL_JUDGE_HOST=
MEDRL_WORKERS=()
for h in "${MEDRL_HOSTS[@]}"; do
    if [ "$h" != "$MEDRL_HEAD" ]; then MEDRL_WORKERS+=("$h"); fi
done
if [ "$MEDRL_JUDGE" = 1 ]; then
    if [ "${#MEDRL_WORKERS[@]}" -gt 0 ]; then
        MEDRL_JUDGE_HOST=${MEDRL_WORKERS[-1]}
        unset 'MEDRL_WORKERS[-1]'
    elif [ "$MEDRL_SIM_WORKERS" -gt 0 ]; then
        MEDRL_JUDGE_HOST=$MEDRL_HEAD  # test hook: simulated cluster on one host
    else
        medrl_die "--judge-node needs a node besides the Ray head"
    fi
fi
# Test hook: extra Ray nodes on the head host, named HOST#simN.
for ((i = 1; i <= MEDRL_SIM_WORKERS; i++)); do MEDRL_WORKERS+=("$MEDRL_HEAD#sim$i"); done

if [ "$MEDRL_RAY_PORT" = auto ]; then
    # One port block per job id, so two jobs sharing a node do not collide.
    MEDRL_RAY_PORT=$((20000 + (SLURM_JOB_ID % 5000) * 8))
fi
MEDRL_RAY_TMP=${MEDRL_RAY_TMP:-/tmp/medrl-ray-$SLURM_JOB_ID}
if [ "$MEDRL_RAY_AUTH" = token ]; then
    # A fresh token per job, passed by environment to every srun step, Ray process and the
    # command. Without an explicit mode, Ray 2.60 switches to token auth whenever
    # ~/.ray/auth_token exists, and the nodes then disagree.
    export RAY_AUTH_MODE=token
    RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    export RAY_AUTH_TOKEN
else
    export RAY_AUTH_MODE=disabled
fi
MEDRL_STATE=$(mktemp -d "${TMPDIR:-/tmp}/medrl-slurm-$SLURM_JOB_ID.XXXXXX")
MEDRL_RAY_COMMON=(--block --disable-usage-stats --temp-dir="$MEDRL_RAY_TMP")
[ -n "$MEDRL_RAY_CPUS" ] && MEDRL_RAY_COMMON+=(--num-cpus="$MEDRL_RAY_CPUS")
[ -n "$MEDRL_RAY_GPUS" ] && MEDRL_RAY_COMMON+=(--num-gpus="$MEDRL_RAY_GPUS")
[ -n "$MEDRL_RAY_OBJECT_STORE" ] && MEDRL_RAY_COMMON+=(--object-store-memory="$MEDRL_RAY_OBJECT_STORE")
MEDRL_RAY_COMMON+=("${MEDRL_RAY_EXTRA[@]}")

MEDRL_STEP_PIDS=()
MEDRL_STEP_NAMES=()
MEDRL_CMD_PID=

# shellcheck disable=SC2317  # reached through the trap
medrl_cleanup() {
    local rc=$? pid i
    trap - EXIT TERM INT
    set +e
    rm -rf "$MEDRL_STATE"  # first: on cancel, Slurm may SIGKILL this script before the end
    if [ -n "$MEDRL_CMD_PID" ] && kill -0 "$MEDRL_CMD_PID" 2>/dev/null; then
        medrl_log "stopping the command (pid $MEDRL_CMD_PID)"
        kill -TERM "$MEDRL_CMD_PID" 2>/dev/null
        for ((i = 0; i < 20; i++)); do kill -0 "$MEDRL_CMD_PID" 2>/dev/null || break; sleep 1; done
    fi
    if [ "${#MEDRL_STEP_PIDS[@]}" -gt 0 ]; then
        medrl_log "stopping Ray and helper steps: ${MEDRL_STEP_NAMES[*]}"
        # SIGTERM to srun reaches `ray start --block`, which stops every process it started.
        for pid in "${MEDRL_STEP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        for ((i = 0; i < 30; i++)); do
            local alive=0
            for pid in "${MEDRL_STEP_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ "$alive" = 0 ] && break
            sleep 1
        done
        for pid in "${MEDRL_STEP_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    fi
    medrl_log "exit code $rc"
    exit "$rc"
}
trap medrl_cleanup EXIT
trap 'medrl_log "got SIGTERM (cancelled or time limit)"; exit 143' TERM
trap 'medrl_log "got SIGINT"; exit 130' INT

# medrl_step NAME HOST CMD...: one background task on HOST that overlaps the others.
medrl_step() {
    local name=$1 host=$2
    shift 2
    srun --overlap --nodes=1 --ntasks=1 -w "$host" "$@" &
    MEDRL_STEP_PIDS+=("$!")
    MEDRL_STEP_NAMES+=("$name")
    echo "$!" >"$MEDRL_STATE/pid.$name"
}

medrl_node_addr() {
    scontrol show node "$1" | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n 1
}

if [ -n "$MEDRL_JUDGE_HOST" ]; then
    MEDRL_JUDGE_ADDR=$(medrl_node_addr "$MEDRL_JUDGE_HOST")
    # Exported before Ray starts, so every Ray worker (reward code) inherits it.
    export MEDRL_JUDGE_URL="http://${MEDRL_JUDGE_ADDR:-$MEDRL_JUDGE_HOST}:$MEDRL_JUDGE_PORT/v1"
    medrl_log "judge: ${MEDRL_JUDGE_COMMAND[*]} on $MEDRL_JUDGE_HOST -> $MEDRL_JUDGE_URL"
    medrl_step judge "$MEDRL_JUDGE_HOST" "${MEDRL_JUDGE_COMMAND[@]}"
fi

medrl_log "job $SLURM_JOB_ID: Ray head on $MEDRL_HEAD, ${#MEDRL_WORKERS[@]} worker(s): ${MEDRL_WORKERS[*]:-none}"
rm -f "$MEDRL_RAY_TMP/ray_current_cluster"
medrl_step "head:$MEDRL_HEAD" "$MEDRL_HEAD" "${MEDRL_RAY_START[@]}" --head \
    --port="$MEDRL_RAY_PORT" --ray-client-server-port=$((MEDRL_RAY_PORT + 1)) \
    --dashboard-port=$((MEDRL_RAY_PORT + 2)) --dashboard-agent-listen-port=$((MEDRL_RAY_PORT + 3)) \
    --resources="{\"medrl_node:$MEDRL_HEAD\": 1}" "${MEDRL_RAY_COMMON[@]}"
MEDRL_HEAD_PID=$!

# The head writes its address into its temp dir once its GCS is up.
MEDRL_DEADLINE=$((SECONDS + MEDRL_RAY_WAIT))
until [ -s "$MEDRL_RAY_TMP/ray_current_cluster" ]; do
    kill -0 "$MEDRL_HEAD_PID" 2>/dev/null \
        || medrl_die "the Ray head on $MEDRL_HEAD exited before it was up (its output is above)"
    [ "$SECONDS" -lt "$MEDRL_DEADLINE" ] \
        || medrl_die "the Ray head on $MEDRL_HEAD was not up after ${MEDRL_RAY_WAIT}s"
    sleep 1
done
MEDRL_RAY_ADDRESS=$(head -n 1 "$MEDRL_RAY_TMP/ray_current_cluster")
medrl_log "Ray head is up at $MEDRL_RAY_ADDRESS after ${SECONDS}s"

n=0
for w in "${MEDRL_WORKERS[@]}"; do
    n=$((n + 1))
    agent_port=$((MEDRL_RAY_PORT + 3))
    # Simulated workers share the head's host, so each needs its own agent port.
    [[ $w == *"#"* ]] && agent_port=$((MEDRL_RAY_PORT + 3 + n))
    medrl_step "worker:$w" "${w%%#*}" "${MEDRL_RAY_WORKER_START[@]}" --address="$MEDRL_RAY_ADDRESS" \
        --dashboard-agent-listen-port="$agent_port" \
        --resources="{\"medrl_node:$w\": 1}" "${MEDRL_RAY_COMMON[@]}"
done

# Wait, bounded, until every node is registered; name the missing ones otherwise.
MEDRL_LEFT=$((MEDRL_DEADLINE - SECONDS))
[ "$MEDRL_LEFT" -gt 0 ] || MEDRL_LEFT=1
# `timeout` bounds ray.init too, which retries a dead GCS for a minute on its own.
timeout --kill-after=10 $((MEDRL_LEFT + 15)) python3 - "$MEDRL_RAY_ADDRESS" "$MEDRL_LEFT" "$MEDRL_STATE" \
    "$MEDRL_HEAD" "${MEDRL_WORKERS[@]}" <<'PY' || medrl_die "the Ray cluster is incomplete (see above)"
import os, sys, time
import ray

address, budget, state, *expected = sys.argv[1:]
deadline = time.monotonic() + max(int(budget), 1)

def exited(node):
    for role in ("head", "worker"):
        path = os.path.join(state, f"pid.{role}:{node}")
        if os.path.exists(path) and not os.path.exists(f"/proc/{open(path).read().strip()}"):
            return True
    return False

ray.init(address=address, logging_level="ERROR", log_to_driver=False)
while True:
    alive = {k.split(":", 1)[1] for n in ray.nodes() if n["Alive"]
             for k in n["Resources"] if k.startswith("medrl_node:")}
    missing = [n for n in expected if n not in alive]
    if not missing:
        print(f"[medrl-slurm] all {len(expected)} Ray node(s) registered: {' '.join(expected)}")
        sys.exit(0)
    gone = [n for n in missing if exited(n)]
    if gone:
        print(f"[medrl-slurm] ERROR: Ray on {' '.join(gone)} exited before joining "
              f"(its output is above); registered: {' '.join(sorted(alive)) or 'none'}", file=sys.stderr)
        sys.exit(1)
    if time.monotonic() > deadline:
        print(f"[medrl-slurm] ERROR: {len(missing)} of {len(expected)} Ray node(s) did not register "
              f"within the wait limit: {' '.join(missing)}; registered: {' '.join(sorted(alive)) or 'none'}",
              file=sys.stderr)
        sys.exit(1)
    time.sleep(2)
PY

if [ -n "$MEDRL_JUDGE_HOST" ]; then
    medrl_log "waiting up to ${MEDRL_JUDGE_WAIT}s for the judge at $MEDRL_JUDGE_URL"
    MEDRL_JUDGE_DEADLINE=$((SECONDS + MEDRL_JUDGE_WAIT))
    until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
        "${MEDRL_JUDGE_URL%/v1}/health" 2>/dev/null; do
        kill -0 "$(cat "$MEDRL_STATE/pid.judge")" 2>/dev/null \
            || medrl_die "the judge server on $MEDRL_JUDGE_HOST exited (its output is above)"
        [ "$SECONDS" -lt "$MEDRL_JUDGE_DEADLINE" ] \
            || medrl_die "the judge server on $MEDRL_JUDGE_HOST was not healthy after ${MEDRL_JUDGE_WAIT}s"
        sleep 5
    done
    medrl_log "judge is up"
fi

export RAY_ADDRESS=$MEDRL_RAY_ADDRESS
medrl_log "running on $MEDRL_HEAD: ${MEDRL_COMMAND[*]}"
# In the background so that a SIGTERM runs the trap at once instead of after the command.
"${MEDRL_COMMAND[@]}" &
MEDRL_CMD_PID=$!
MEDRL_RC=0
wait "$MEDRL_CMD_PID" || MEDRL_RC=$?
MEDRL_CMD_PID=
medrl_log "command finished with exit code $MEDRL_RC"
exit "$MEDRL_RC"
