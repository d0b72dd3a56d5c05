#!/usr/bin/env bash
# A real NDIF server (the `ndif` PyPI package) on loopback, for testing vneuron's remote path.
#
#   server.sh install [VENV_DIR]      venv + ndif 0.1.2 + deps, redis-server, moto (idempotent)
#   server.sh start MODEL_DIR [PORT]  redis, moto, ray head, controller, API; deploys MODEL_DIR
#   server.sh stop                    kills every process this script started, by pid
#   server.sh status                  what runs, the URL and the model key
#
# Every server listens on 127.0.0.1 only. See scripts/ndif/README.md.
#
# Environment (all optional):
#   NDIF_VENV          server virtualenv             (default: <repo>/.ndif-venv)
#   NDIF_STATE_DIR     pids, logs, ray temp link     (default: <repo>/.ndif-state)
#   NDIF_CLIENT_PYTHON python whose transformers/tokenizers/numpy versions the server copies
#                      (default: /work/venv/bin/python if present, else python3)
#   NDIF_START_TIMEOUT seconds to wait for the stack and the deployment (default: 180)
#   NDIF_REDIS_PORT (16379) NDIF_S3_PORT (19000) NDIF_RAY_PORT (16385)
#   NDIF_RAY_CLIENT_PORT (10001) NDIF_RAY_DASHBOARD_PORT (18265)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${NDIF_VENV:-$REPO/.ndif-venv}"
STATE="${NDIF_STATE_DIR:-$REPO/.ndif-state}"
START_TIMEOUT="${NDIF_START_TIMEOUT:-180}"

NDIF_VERSION=0.1.2
TORCH_VERSION=2.13.0
NNSIGHT_VERSION=0.8.1
# used when no client python is found to copy the versions from
DEFAULT_TRANSFORMERS=5.23.0
DEFAULT_TOKENIZERS=0.23.3
DEFAULT_NUMPY=2.4.6

REDIS_PORT="${NDIF_REDIS_PORT:-16379}"
S3_PORT="${NDIF_S3_PORT:-19000}"
RAY_PORT="${NDIF_RAY_PORT:-16385}"
RAY_CLIENT_PORT="${NDIF_RAY_CLIENT_PORT:-10001}"
RAY_DASHBOARD_PORT="${NDIF_RAY_DASHBOARD_PORT:-18265}"

log() { printf '[ndif] %s\n' "$*" >&2; }
die() { printf '[ndif] ERROR: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------------------------------
# install
# ----------------------------------------------------------------------------------------------

client_python() {
    if [ -n "${NDIF_CLIENT_PYTHON:-}" ]; then echo "$NDIF_CLIENT_PYTHON"
    elif [ -x /work/venv/bin/python ]; then echo /work/venv/bin/python
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

cmd_install() {
    local venv="${1:-$VENV}"
    local t0 t1 py pins marker
    t0=$(date +%s)
    mkdir -p "$(dirname "$venv")"
    venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"

    # 1. Debian's redis-server
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server (apt-get)"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null \
            || die "apt-get install redis-server failed"
        # the package starts a system service on some images; we run our own, on another port
    else
        log "redis-server present: $(command -v redis-server)"
    fi

    # 2. the venv
    if [ ! -x "$venv/bin/python" ]; then
        py="$(find_python311)" || die "no Python 3.11 found (set NDIF_PYTHON)"
        log "creating venv $venv with $py"
        "$py" -m venv "$venv"
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
            "$venv/bin/python" -m pip install -q --no-deps --ignore-requires-python "ndif==$NDIF_VERSION" \
                || die "pip install ndif==$NDIF_VERSION failed"
        fi
        log "pip install the runtime dependencies with $pins"
        # Requires-Dist of ndif 0.1.2 (base + [api] + [ray]) and moto[server] for the S3 stand-in.
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install -q $pins \
            pydantic redis click python-dotenv pyyaml boto3 \
            fastapi 'uvicorn[standard]' gunicorn python-multipart \
            'ray[default]' accelerate zstandard peft \
            'moto[server]' \
            || die "pip install of ndif's dependencies failed"
        "$venv/bin/python" -c 'import ndif, ray, nnsight, moto, gunicorn' \
            || die "the server venv does not import (ndif, ray, nnsight, moto, gunicorn)"
        echo "ndif==$NDIF_VERSION $pins" > "$marker"
    fi
    t1=$(date +%s)
    echo "$(date -u +%FT%TZ) install $((t1 - t0)) s" >> "$venv/.ndif-install-times"
    log "install done in $((t1 - t0)) s: $venv ($(du -sh "$venv" 2>/dev/null | cut -f1))"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    *) echo "usage: $0 {install [VENV_DIR]|start MODEL_DIR [PORT]|stop|status}" >&2; exit 2 ;;
esac
