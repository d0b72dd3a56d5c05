#!/usr/bin/env bash
# A real NDIF server (the `ndif` PyPI package) on loopback, for testing vneuron's remote path.
#
#   server.sh install [VENV_DIR]      venv + ndif 0.1.2 + deps, redis-server, moto (idempotent)
#   server.sh start MODEL_DIR [PORT [MODEL_DIR ...]]
#                                     redis, moto, ray head, controller, API; deploys every MODEL_DIR
#                                     (PORT: the API's, default 8001, "auto" for a free one)
#   server.sh stop                    kills every process this script started, by pid
#   server.sh status                  what runs, the URL and the model key
#
# Every server listens on 127.0.0.1 only. See scripts/ndif/README.md.
#
# Environment (all optional):
#   NDIF_VENV          server virtualenv             (default: <repo>/.ndif-venv)
#   NDIF_STATE_DIR     pids, logs, ray temp link     (default: <repo>/.ndif-state)
#   NDIF_CLIENT_PYTHON python whose transformers/tokenizers/numpy versions the server copies
#                      (default: the repo's .venv/bin/python if present, else python3)
#   NDIF_START_TIMEOUT seconds to wait for the stack and the deployment (default: 180)
#   NDIF_REDIS_PORT NDIF_S3_PORT NDIF_RAY_PORT NDIF_RAY_CLIENT_PORT NDIF_RAY_DASHBOARD_PORT
#   NDIF_RAY_AGENT_PORT: the stack's internal ports (default: free ports picked at start, outside
#                      Ray's worker and client-server ranges; written to $NDIF_STATE_DIR/ports)
#   the API port is start's 2nd arg (default 8001; "auto" picks a free one)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$(realpath -m "${NDIF_VENV:-$REPO/.ndif-venv}")"
STATE="$(realpath -m "${NDIF_STATE_DIR:-$REPO/.ndif-state}")"
START_TIMEOUT="${NDIF_START_TIMEOUT:-180}"

NDIF_VERSION=0.1.2
TORCH_VERSION=2.13.0
NNSIGHT_VERSION=0.8.1
# used when no client python is found to copy the versions from
DEFAULT_TRANSFORMERS=5.23.0
DEFAULT_TOKENIZERS=0.23.3
DEFAULT_NUMPY=2.4.6

# Empty: a free port is picked at start (free_ports), so a second stack or a leftover process
# holding a port does not stop this one.
REDIS_PORT="${NDIF_REDIS_PORT:-}"
S3_PORT="${NDIF_S3_PORT:-}"
RAY_PORT="${NDIF_RAY_PORT:-}"
RAY_CLIENT_PORT="${NDIF_RAY_CLIENT_PORT:-}"
RAY_DASHBOARD_PORT="${NDIF_RAY_DASHBOARD_PORT:-}"
RAY_AGENT_PORT="${NDIF_RAY_AGENT_PORT:-}"

log() { printf '[ndif] %s\n' "$*" >&2; }
die() { printf '[ndif] ERROR: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------------------------------
# install
# ----------------------------------------------------------------------------------------------

client_python() {
    if [ -n "${NDIF_CLIENT_PYTHON:-}" ]; then echo "$NDIF_CLIENT_PYTHON"
    elif [ -x "$HERE/../../.venv/bin/python" ]; then echo "$HERE/../../.venv/bin/python"
    else command -v python3; fi
}

# "name==version" of a package in the client's python, or the default
client_pin() {
    local name="$1" default="$2" py v
    py="$(client_python)"
    v="$("$py" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
    echo "$name==${v:-$default}"
}

find_python311() {
    local c
    for c in "${NDIF_PYTHON:-}" python3.11 /usr/bin/python3.11 /usr/local/bin/python3.11; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

# pip on this image lists extra file:// indexes that lack most projects; keep its noise out of the log
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# the LD_PRELOAD guard that keeps every socket of the stack on loopback (see loopback_guard.c)
ensure_guard() {
    local venv="$1" so="$1/lib/loopback_guard.so" src="$HERE/loopback_guard.c"
    if [ -f "$so" ] && [ "$so" -nt "$src" ]; then return 0; fi
    if ! command -v cc >/dev/null 2>&1; then
        log "installing a C compiler (apt-get install gcc) for the loopback guard"
        apt_install gcc libc6-dev
    fi
    cc -shared -fPIC -O2 -o "$so.tmp" "$src" -ldl || die "compiling $src failed"
    mv "$so.tmp" "$so"
}

APT_UPDATED=0
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ "$APT_UPDATED" = 0 ]; then
        $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null \
        || die "apt-get install $* failed"
}

cmd_install() {
    local venv="${1:-$VENV}"
    local t0 t1 py pins marker
    t0=$(date +%s)
    mkdir -p "$(dirname "$venv")"
    venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"

    # 1. Debian's redis-server (the package installs no running service on these machines)
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server (apt-get)"
        apt_install redis-server
        log "redis-server installed ($(($(date +%s) - t0)) s so far)"
    else
        log "redis-server present: $(command -v redis-server)"
    fi

    # 2. the venv
    if [ ! -x "$venv/bin/python" ]; then
        py="$(find_python311)" || die "no Python 3.11 found (set NDIF_PYTHON)"
        log "creating venv $venv with $py"
        "$py" -m venv "$venv" || die "python -m venv failed"
        echo '*' > "$venv/.gitignore"
    fi
    "$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
        || die "$venv is not a Python 3.11 venv; remove it and re-run install"

    # 3. the packages. The core five are pinned to the client's versions; the rest float.
    pins="torch==$TORCH_VERSION nnsight==$NNSIGHT_VERSION $(client_pin transformers $DEFAULT_TRANSFORMERS) $(client_pin tokenizers $DEFAULT_TOKENIZERS) $(client_pin numpy $DEFAULT_NUMPY)"
    marker="$venv/.ndif-installed"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "ndif==$NDIF_VERSION $pins" ] \
        && "$venv/bin/python" -c 'import ndif, ray, nnsight, moto, gunicorn' 2>/dev/null; then
        log "packages already installed ($(cat "$marker"))"
    else
        rm -f "$marker"
        export PIP_DISABLE_PIP_VERSION_CHECK=1
        if ! "$venv/bin/python" -m pip show ndif 2>/dev/null | grep -q "^Version: $NDIF_VERSION$"; then
            log "pip install --no-deps --ignore-requires-python ndif==$NDIF_VERSION"
            pip_quiet "$venv/bin/python" -m pip install -q --no-deps --ignore-requires-python "ndif==$NDIF_VERSION" \
                || die "pip install ndif==$NDIF_VERSION failed"
        fi
        log "pip install ndif's runtime dependencies with $pins"
        # Requires-Dist of ndif 0.1.2 (base + [api] + [ray]) and moto[server] for the S3 stand-in.
        # shellcheck disable=SC2086
        pip_quiet "$venv/bin/python" -m pip install -q $pins \
            pydantic redis click python-dotenv pyyaml boto3 \
            fastapi 'uvicorn[standard]' gunicorn python-multipart \
            'ray[default]' accelerate zstandard peft \
            'moto[server]' \
            || die "pip install of ndif's dependencies failed"
        "$venv/bin/python" -c 'import ndif, ray, nnsight, moto, gunicorn' \
            || die "the server venv does not import (ndif, ray, nnsight, moto, gunicorn)"
        echo "ndif==$NDIF_VERSION $pins" > "$marker"
        log "packages installed ($(($(date +%s) - t0)) s so far)"
    fi
    ensure_guard "$venv"
    t1=$(date +%s)
    echo "$(date -u +%FT%TZ) install $((t1 - t0)) s" >> "$venv/.ndif-install-times"
    log "install done in $((t1 - t0)) s: $venv ($(du -sh "$venv" 2>/dev/null | cut -f1))"
}

# ----------------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------------

# pids recorded in the state dir, their descendants, and every process that carries this
# stack's marker in its environment (Ray's raylet, GCS, agents and worker processes inherit it)
stack_pids() {
    local id="" f pid
    [ -d "$STATE/pids" ] || return 0
    if [ -f "$STATE/stack_id" ]; then id="$(cat "$STATE/stack_id")"; fi
    {
        cat "$STATE"/pids/*.pid 2>/dev/null || true
        if [ -n "$id" ]; then
            for f in /proc/[0-9]*/environ; do
                pid="${f#/proc/}"; pid="${pid%/environ}"
                if { tr '\0' '\n' < "$f"; } 2>/dev/null | grep -qxF "NDIF_LOOPBACK_STACK=$id"; then echo "$pid"; fi
            done
        fi
    } | sort -un | while read -r pid; do
        if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then echo "$pid"; fi
    done | descendants
    return 0
}

# stdin: pids; stdout: those pids and all their living descendants
descendants() {
    local roots
    roots="$(cat)"
    [ -n "$roots" ] || return 0
    ps -e -o pid=,ppid= | awk -v roots="$roots" '
        BEGIN { n = split(roots, r, /[ \n]+/); for (i = 1; i <= n; i++) if (r[i] != "") keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do { changed = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } while (changed)
            for (p in keep) if (p in parent) print p
        }' | sort -n
}

kill_stack() {
    local pids left i
    pids="$(stack_pids | tr '\n' ' ')"
    [ -n "${pids// /}" ] || return 0
    log "stopping pids: $pids"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 1 20); do  # 5 s grace; Ray's gcs_server and `ray start --block` often need SIGKILL
        left=""
        for p in $pids; do
            if [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then left="$left $p"; fi
        done
        if [ -z "$left" ]; then break; fi
        sleep 0.25
    done
    # anything new (a worker spawned while stopping) or still alive gets SIGKILL
    left="$left $(stack_pids | tr '\n' ' ')"
    if [ -n "${left// /}" ]; then
        log "SIGKILL:$left"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 0.5
    fi
}

# ----------------------------------------------------------------------------------------------
# start
# ----------------------------------------------------------------------------------------------

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_ports N: N distinct ports free on 127.0.0.1 now, from the kernel's ephemeral range and
# outside Ray's worker (10002-19999) and client-server (23000-23999) ranges. All N sockets are
# held until every port is chosen, so the N differ; a port can still be taken before its service
# binds it, and start then fails with "already in use" (rerun it).
free_ports() {
    "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
held, ports = [], []
while len(ports) < int(sys.argv[1]):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    port = s.getsockname()[1]
    if not (10002 <= port <= 19999 or 23000 <= port <= 23999):
        ports.append(port)
print(" ".join(map(str, ports)))
for s in held:
    s.close()
PY
}

DEADLINE=0
remaining() { local r=$((DEADLINE - $(date +%s))); [ "$r" -gt 0 ] && echo "$r" || echo 1; }

# fail MESSAGE LOG...: say what failed, show the logs' tails, stop what was started, exit 1
fail() {
    local msg="$1" f; shift
    printf '\n[ndif] ERROR: %s\n' "$msg" >&2
    for f in "$@"; do
        [ -s "$f" ] || continue
        printf '[ndif] ---- last lines of %s ----\n' "$f" >&2
        tail -n 40 "$f" >&2
    done
    printf '[ndif] ---- (all logs in %s) ----\n' "$STATE/logs" >&2
    kill_stack
    rm -rf "$STATE/pids"
    echo "$msg" > "$STATE/FAILED"
    exit 1
}

# wait_for DESCRIPTION PID_OR_EMPTY LOG CMD...: poll CMD every 0.5 s until it succeeds, the
# watched process dies, or the start deadline passes
wait_for() {
    local what="$1" pid="$2" logf="$3"; shift 3
    while ! "$@" >/dev/null 2>&1; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            fail "$what: the process exited" "$logf"
        fi
        [ "$(date +%s)" -lt "$DEADLINE" ] || fail "$what: not ready after ${START_TIMEOUT} s" "$logf"
        sleep 0.5
    done
}

# svc NAME CMD...: start a long-running service in its own session, logs in logs/NAME.log
svc() {
    local name="$1"; shift
    setsid env "${SVC_ENV[@]}" "$@" </dev/null >"$STATE/logs/$name.log" 2>&1 &
    echo $! > "$STATE/pids/$name.pid"
    disown $! 2>/dev/null || true   # no "Killed" job notices from this shell when stopping
}

# run_env CMD...: a one-shot command with the services' environment
run_env() { env "${SVC_ENV[@]}" "$@"; }

redis_up() { "$VENV/bin/python" -c "import redis; assert redis.Redis(host='127.0.0.1', port=$REDIS_PORT, socket_timeout=2).ping()"; }
http_ok() { curl -sf --max-time 3 --noproxy '*' "$1"; }

ray_logs() { local d; d="$(cat "$STATE/ray_tmp" 2>/dev/null)/session_latest/logs"; ls -t "$d"/gcs_server.err "$d"/raylet.err "$d"/worker-*.err "$d"/dashboard.log 2>/dev/null | head -6; }

# every listening socket of the stack must be on loopback
audit_listeners() {
    local pids bad
    pids="$(stack_pids | tr '\n' ' ')"
    ss -ltnpH > "$STATE/logs/listeners.txt" 2>/dev/null || true
    bad="$(awk -v pids=" $pids " '
        { for (i = 1; i <= NF; i++) if ($i ~ /pid=/) { s = $i; while (match(s, /pid=[0-9]+/)) {
              p = substr(s, RSTART + 4, RLENGTH - 4); s = substr(s, RSTART + RLENGTH)
              if (index(pids, " " p " ") && $4 !~ /^(127\.[0-9.]+|\[::ffff:127\.[0-9.]+\]|\[::1\]):[0-9]+$/) print $0 } } }
    ' "$STATE/logs/listeners.txt")"
    if [ -n "$bad" ]; then
        echo "$bad" > "$STATE/logs/bad-listeners.txt"
        fail "a process of the stack listens on a non-loopback address" "$STATE/logs/bad-listeners.txt"
    fi
    log "listening (all on loopback): $(awk -v pids=" $pids " '{ for (i = 1; i <= NF; i++) if ($i ~ /pid=/) {
        s = $i; while (match(s, /pid=[0-9]+/)) { p = substr(s, RSTART + 4, RLENGTH - 4); s = substr(s, RSTART + RLENGTH)
        if (index(pids, " " p " ")) { print $4; break } } } }' "$STATE/logs/listeners.txt" | sort -u | tr '\n' ' ')"
}

cmd_start() {
    local model_dir="${1:-}" port="${2:-8001}" t0 spec model_key ray_tmp id p free d key
    local -a model_dirs=()
    [ -n "$model_dir" ] || die "usage: $0 start MODEL_DIR [PORT [MODEL_DIR ...]]"
    for d in "$1" "${@:3}"; do   # the first model, then any more after the port: one stack serves them all
        [ -d "$d" ] || die "MODEL_DIR $d is not a directory"
        model_dirs+=("$(cd "$d" && pwd)")
    done
    model_dir="${model_dirs[0]}"
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/.ndif-installed" ] \
        || die "no server venv at $VENV: run 'bash $0 install' first"
    command -v redis-server >/dev/null || die "redis-server is not installed: run 'bash $0 install' first"
    t0=$(date +%s)
    DEADLINE=$((t0 + START_TIMEOUT))

    if [ -d "$STATE" ]; then
        if [ -d "$STATE/pids" ] && [ -n "$(stack_pids)" ]; then
            die "a stack is already running (state in $STATE): run 'bash $0 stop' first"
        fi
        rm -rf "$(cat "$STATE/ray_tmp" 2>/dev/null || echo /nonexistent)" "$STATE"
    fi
    read -r -a free <<< "$(free_ports 7)"
    [ "${#free[@]}" = 7 ] || die "picking free ports on 127.0.0.1 failed"
    [ "$port" = auto ] && port="${free[0]}"
    REDIS_PORT="${REDIS_PORT:-${free[1]}}" S3_PORT="${S3_PORT:-${free[2]}}" RAY_PORT="${RAY_PORT:-${free[3]}}"
    RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-${free[4]}}" RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-${free[5]}}"
    RAY_AGENT_PORT="${RAY_AGENT_PORT:-${free[6]}}"
    for p in "$port" "$REDIS_PORT" "$S3_PORT" "$RAY_PORT" "$RAY_CLIENT_PORT" "$RAY_DASHBOARD_PORT" "$RAY_AGENT_PORT"; do
        if port_busy "$p"; then die "port $p on 127.0.0.1 is already in use (another stack? 'bash $0 stop')"; fi
    done

    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/home"
    echo '*' > "$STATE/.gitignore"
    # Every service starts in the state's home, never in a checkout of vneuron: a Ray worker puts its
    # working directory on sys.path, and a server that can import vneuron would hide a request that
    # only works where vneuron is installed (no NDIF server has it).
    cd "$STATE/home"
    ensure_guard "$VENV"
    ray_tmp="$(mktemp -d /tmp/ndif-ray.XXXXXX)"   # short: Ray's unix socket paths must stay < 108 bytes
    echo "$ray_tmp" > "$STATE/ray_tmp"
    id="ndif-$(date +%s%N)-$$"
    echo "$id" > "$STATE/stack_id"
    echo "http://127.0.0.1:$port" > "$STATE/url"
    printf 'api=%s redis=%s s3=%s ray_gcs=%s ray_client=%s ray_dashboard=%s ray_agent=%s\n' "$port" "$REDIS_PORT" \
        "$S3_PORT" "$RAY_PORT" "$RAY_CLIENT_PORT" "$RAY_DASHBOARD_PORT" "$RAY_AGENT_PORT" > "$STATE/ports"
    log "ports: $(cat "$STATE/ports")"

    SVC_ENV=(
        "PATH=$VENV/bin:$PATH"
        "NDIF_LOOPBACK_STACK=$id"
        "LD_PRELOAD=$VENV/lib/loopback_guard.so${LD_PRELOAD:+:$LD_PRELOAD}"
        "LOOPBACK_GUARD_LOG=$STATE/logs/loopback_guard.log"
        "PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH}"
        "NDIF_HOME=$STATE/home"
        "NDIF_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
        "NDIF_OBJECT_STORE_URL=http://127.0.0.1:$S3_PORT"
        "NDIF_RAY_ADDRESS=ray://127.0.0.1:$RAY_CLIENT_PORT"
        "NDIF_API_URL=http://127.0.0.1:$port"
        "NDIF_API_PORT=$port"
        "NDIF_DEFAULT_DTYPE=float32"
        "NDIF_MODEL_IMPORT_PATH=cpu_deployment.CPUModelActor"
        "NDIF_INFLUX_ENABLED=false"
        "NDIF_REQUEST_LOG=$STATE/logs/requests.jsonl"
        "HF_HUB_OFFLINE=1"
        "TRANSFORMERS_OFFLINE=1"
        "TOKENIZERS_PARALLELISM=false"
        "OMP_NUM_THREADS=1"
        "RAY_USAGE_STATS_ENABLED=0"
        "RAY_ADDRESS="
        "GRPC_ENABLE_FORK_SUPPORT=0"
        "AWS_ACCESS_KEY_ID=rustfsadmin"
        "AWS_SECRET_ACCESS_KEY=rustfsadmin"
        "AWS_DEFAULT_REGION=us-east-1"
        "NO_PROXY=*"
    )

    # the model key first: a directory nnsight cannot load fails here, before any server starts
    if ! spec="$(run_env timeout "$(remaining)" python "$HERE/model_spec.py" "${model_dirs[@]}" "$STATE/models.yaml" 2>"$STATE/logs/model_spec.log")"; then
        fail "computing the model key of ${model_dirs[*]} failed (is each a transformers model directory with a tokenizer?)" \
            "$STATE/logs/model_spec.log"
    fi
    printf '%s\n' "$spec" | "$VENV/bin/python" -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        print(json.loads(line)["model_key"])' > "$STATE/model_keys"
    model_key="$(head -n 1 "$STATE/model_keys")"
    echo "$model_key" > "$STATE/model_key"   # the first model's (what one-model callers read)
    log "model key(s): $(tr '\n' ' ' < "$STATE/model_keys")"

    log "redis on 127.0.0.1:$REDIS_PORT"
    svc redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --protected-mode yes \
        --dir "$STATE"
    log "moto S3 on 127.0.0.1:$S3_PORT"
    svc s3 moto_server -H 127.0.0.1 -p "$S3_PORT"
    log "ray head (gcs 127.0.0.1:$RAY_PORT, client 127.0.0.1:$RAY_CLIENT_PORT, temp $ray_tmp)"
    svc ray ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
        --ray-client-server-port="$RAY_CLIENT_PORT" \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" \
        --dashboard-agent-listen-port="$RAY_AGENT_PORT" \
        --num-cpus=4 --num-gpus=1 \
        --resources='{"head": 10, "cuda_memory_bytes": 8000000000, "cpu_memory_bytes": 8000000000}' \
        --object-store-memory=200000000 --temp-dir="$ray_tmp" --disable-usage-stats

    wait_for "redis" "$(cat "$STATE/pids/redis.pid")" "$STATE/logs/redis.log" redis_up
    wait_for "moto S3" "$(cat "$STATE/pids/s3.pid")" "$STATE/logs/s3.log" http_ok "http://127.0.0.1:$S3_PORT/"
    wait_for "ray head" "$(cat "$STATE/pids/ray.pid")" "$STATE/logs/ray.log" port_busy "$RAY_CLIENT_PORT"
    wait_for "ray dashboard" "$(cat "$STATE/pids/ray.pid")" "$STATE/logs/ray.log" \
        http_ok "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/gcs_healthz"
    log "ray up after $(($(date +%s) - t0)) s"

    log "controller (model actor: cpu_deployment.CPUModelActor)"
    # shellcheck disable=SC2046
    if ! run_env RAY_ADDRESS="127.0.0.1:$RAY_PORT" timeout "$(remaining)" \
        python -m ndif.services.ray.deployments.controller.controller >"$STATE/logs/controller.log" 2>&1; then
        fail "launching the ndif controller failed" "$STATE/logs/controller.log" $(ray_logs)
    fi

    log "API (gunicorn) on 127.0.0.1:$port"
    svc api gunicorn --config python:ndif.services.api.gunicorn_conf --bind "127.0.0.1:$port" --workers 1 \
        ndif.services.api.app:app
    wait_for "API /connected" "$(cat "$STATE/pids/api.pid")" "$STATE/logs/api.log" \
        http_ok "http://127.0.0.1:$port/connected"
    log "API connected after $(($(date +%s) - t0)) s"

    log "deploying ${model_dirs[*]}"
    # shellcheck disable=SC2046
    if ! run_env timeout "$(remaining)" ndif deploy -f "$STATE/models.yaml" >"$STATE/logs/deploy.log" 2>&1; then
        fail "ndif deploy of ${model_dirs[*]} failed or timed out" "$STATE/logs/deploy.log" $(ray_logs)
    fi
    # shellcheck disable=SC2046
    while read -r key; do
        wait_for "model listed as deployed by /status" "$(cat "$STATE/pids/api.pid")" "$STATE/logs/deploy.log" \
            deployed "http://127.0.0.1:$port" "$key"
    done < "$STATE/model_keys"

    audit_listeners
    [ -s "$STATE/logs/loopback_guard.log" ] && log "the loopback guard rewrote $(wc -l < "$STATE/logs/loopback_guard.log") bind/connect call(s): $STATE/logs/loopback_guard.log"
    echo "$(($(date +%s) - t0))" > "$STATE/start_seconds"
    log "ready in $(($(date +%s) - t0)) s; model key: $model_key"
    echo "http://127.0.0.1:$port"
}

# deployed URL MODEL_KEY: /status lists a replica of the model as RUNNING
deployed() {
    curl -sf --max-time 10 --noproxy '*' "$1/status" | "$VENV/bin/python" -c '
import json, sys
key = sys.argv[1]
deployments = json.load(sys.stdin).get("deployments", {})
sys.exit(0 if any(name.endswith(":ModelActor:" + key) and d.get("application_state") == "RUNNING"
                  for name, d in deployments.items()) else 1)' "$2"
}

cmd_stop() {
    if [ ! -d "$STATE" ]; then log "no state in $STATE: nothing to stop"; return 0; fi
    kill_stack
    local ray_tmp
    ray_tmp="$(cat "$STATE/ray_tmp" 2>/dev/null || true)"
    case "$ray_tmp" in /tmp/ndif-ray.*) rm -rf "$ray_tmp" ;; esac
    rm -rf "$STATE"
    log "stopped"
}

cmd_status() {
    if [ ! -d "$STATE" ]; then echo "not running (no $STATE)"; return 1; fi
    if [ -f "$STATE/FAILED" ]; then echo "last start FAILED: $(cat "$STATE/FAILED") (logs: $STATE/logs)"; fi
    local f name pid url rc=0
    for f in "$STATE"/pids/*.pid; do
        [ -f "$f" ] || continue
        name="$(basename "$f" .pid)"; pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null; then echo "$name: pid $pid running"; else echo "$name: pid $pid DEAD"; rc=1; fi
    done
    echo "processes of the stack: $(stack_pids | wc -l)"
    url="$(cat "$STATE/url" 2>/dev/null || true)"
    [ -n "$url" ] && echo "url: $url ($(curl -sf --max-time 3 --noproxy '*' "$url/connected" || echo 'not connected'))"
    [ -f "$STATE/ports" ] && echo "ports: $(cat "$STATE/ports")"
    [ -f "$STATE/model_keys" ] && echo "model key(s): $(tr '\n' ' ' < "$STATE/model_keys")"
    [ -f "$STATE/start_seconds" ] && echo "started in $(cat "$STATE/start_seconds") s"
    return $rc
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) echo "usage: $0 {install [VENV_DIR]|start MODEL_DIR [PORT|auto [MODEL_DIR ...]]|stop|status}" >&2; exit 2 ;;
esac
