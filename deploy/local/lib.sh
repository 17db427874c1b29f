# shellcheck shell=bash
# Shared defaults and helpers for the local deployment scripts (infra.sh, up.sh, down.sh)
# and the repository's test.sh. Source this file; do not run it.
#
# Every piece of state lives under one directory, KILN_HOME. Every default below can be
# overridden from the environment.

set -euo pipefail

# --- Defaults ---------------------------------------------------------------------------------

# Repository root (two levels above this file).
KILN_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export KILN_REPO_ROOT

export KILN_HOME=${KILN_HOME:-/var/lib/kiln-local}
# Registry address as it appears in image references (host:port, plain HTTP on loopback).
export KILN_REGISTRY=${KILN_REGISTRY:-127.0.0.1:5000}
# Coordinator gRPC endpoint. Accepts "host:port" or "http://host:port"; stored as a URL
# because that is what `kiln` and `kiln-agent` expect.
KILN_COORDINATOR=${KILN_COORDINATOR:-http://127.0.0.1:7878}
case "$KILN_COORDINATOR" in
    http://* | https://*) ;;
    *) KILN_COORDINATOR="http://$KILN_COORDINATOR" ;;
esac
export KILN_COORDINATOR
# The same endpoint as a bare listen address (host:port) for `kiln-coordinator --listen`.
KILN_COORDINATOR_ADDR=${KILN_COORDINATOR#*://}
KILN_COORDINATOR_ADDR=${KILN_COORDINATOR_ADDR%%/*}

# Cargo target directory outside the clone, so a fresh clone reuses the compiled dependencies.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kiln/target}

# Directories under KILN_HOME.
KILN_RUN_DIR="$KILN_HOME/run"   # pid files of processes these scripts started
KILN_LOG_DIR="$KILN_HOME/logs"  # their logs
KILN_ENV_FILE="$KILN_HOME/env"  # shell assignments for other tools (DOCKER_HOST, ...)

# Packages the project needs on a fresh Debian 12 machine (installed by infra.sh).
# shellcheck disable=SC2034
KILN_APT_PACKAGES=(
    ca-certificates curl jq git iptables tar gzip coreutils util-linux dpkg-dev
    docker.io docker-registry
    qemu-user-static busybox-static
    protobuf-compiler clang libclang-dev librocksdb-dev pkg-config
)
# Foreign architectures whose busybox-static is packed into the seed base image.
KILN_FOREIGN_ARCHES=(arm64 armhf i386)

# --- Logging ----------------------------------------------------------------------------------

log() { printf '[kiln] %s\n' "$*" >&2; }
die() {
    printf '[kiln] error: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts dockerd, mounts binfmt_misc)"
}

# --- Rust toolchain and build environment -----------------------------------------------------

# Put cargo on the PATH and point the rocksdb crate at Debian's librocksdb-dev, which turns a
# ~10 minute C++ build into seconds.
setup_rust_env() {
    if [[ -d "$HOME/.cargo/bin" && ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || die "cargo not found on PATH or in ~/.cargo/bin; install a Rust toolchain (rustup)"
    ROCKSDB_LIB_DIR=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
    export ROCKSDB_LIB_DIR
    mkdir -p "$CARGO_TARGET_DIR"
}

# --- Packages ---------------------------------------------------------------------------------

KILN_APT_UPDATED=0

# Run `apt-get update` at most once per script run. Mirrors are sometimes caught mid-sync
# (one index of one architecture fails), so retry a few times and then carry on with a warning:
# an install or download that really needs the missing index fails loudly afterwards.
apt_update_once() {
    [[ $KILN_APT_UPDATED -eq 0 ]] || return 0
    local attempt
    for attempt in 1 2 3; do
        log "apt-get update (attempt $attempt)"
        if apt-get update -qq -o Acquire::Retries=3 >/dev/null 2>"$KILN_HOME/apt-update.err"; then
            KILN_APT_UPDATED=1
            return 0
        fi
        sleep $((attempt * 3))
    done
    log "warning: apt-get update reported errors; continuing with the lists it got:"
    sed 's/^/    /' "$KILN_HOME/apt-update.err" | head -n 5 >&2
    KILN_APT_UPDATED=1
}

# True when the package (optionally "name:arch") is installed.
pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# Install the given packages, skipping those already installed.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install failed for: ${missing[*]}"
}

# Enable the foreign dpkg architectures needed to download busybox-static for other platforms.
ensure_foreign_arches() {
    local current arch added=0
    current=$(dpkg --print-foreign-architectures)
    for arch in "${KILN_FOREIGN_ARCHES[@]}"; do
        if ! grep -qx "$arch" <<<"$current"; then
            dpkg --add-architecture "$arch"
            added=1
        fi
    done
    # New architectures need fresh package lists even if an update already ran.
    if [[ $added -eq 1 ]]; then
        KILN_APT_UPDATED=0
        apt_update_once
    fi
}

# --- Waiting ----------------------------------------------------------------------------------

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND twice a second until it succeeds.
# Returns 1 after SECONDS without success.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# wait_started NAME SECONDS DESCRIPTION COMMAND...: like wait_for, for a process started with
# start_bg NAME; gives up at once if that process exits. On failure prints the tail of its log
# and exits with a one-line error.
wait_started() {
    local name=$1 timeout=$2 what=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! pid_alive "$name"; then
            log_tail "$KILN_LOG_DIR/$name.log"
            die "$name exited before $what"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$KILN_LOG_DIR/$name.log"
            die "timed out after ${timeout}s waiting for $what"
        fi
        sleep 0.5
    done
}

# Print the last lines of a log file to stderr (used when something fails to start).
log_tail() {
    local file=$1
    [[ -f "$file" ]] || return 0
    log "last lines of $file:"
    tail -n 30 "$file" >&2 || true
}

# --- Processes we own -------------------------------------------------------------------------

# Prints the start time (in clock ticks since boot) of process PID, from /proc/PID/stat.
# Together with the pid it identifies a process even after the pid is reused.
proc_start_time() {
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    # Drop "pid (comm) " first: comm may contain spaces. Field 22 is then the 20th.
    stat=${stat##*) }
    awk '{print $20}' <<<"$stat"
}

# Prints the pid recorded for NAME (nothing if there is no pid file).
pid_of() {
    local pid _start
    [[ -f "$KILN_RUN_DIR/$1.pid" ]] || return 0
    read -r pid _start <"$KILN_RUN_DIR/$1.pid" || true
    printf '%s\n' "$pid"
}

# pid_alive NAME: true when $KILN_RUN_DIR/NAME.pid names a running process that is still the one
# start_bg started (same pid and start time).
pid_alive() {
    local pidfile="$KILN_RUN_DIR/$1.pid" pid start
    [[ -f "$pidfile" ]] || return 1
    read -r pid start <"$pidfile" || true
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    # A killed process not yet reaped (a zombie) still answers kill -0: it is not running.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
    [[ -z "${start:-}" || "$(proc_start_time "$pid" 2>/dev/null)" == "$start" ]]
}

# start_bg NAME COMMAND...: start COMMAND detached, log to $KILN_LOG_DIR/NAME.log, record its
# pid and start time in $KILN_RUN_DIR/NAME.pid.
start_bg() {
    local name=$1 pid
    shift
    mkdir -p "$KILN_RUN_DIR" "$KILN_LOG_DIR"
    # setsid: own session, so the process survives the calling shell and receives no terminal
    # signals. NO_COLOR keeps ANSI colour codes out of the log files.
    NO_COLOR=1 setsid "$@" >>"$KILN_LOG_DIR/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid $(proc_start_time "$pid" 2>/dev/null)" >"$KILN_RUN_DIR/$name.pid"
}

# stop_bg NAME [GRACE_SECONDS]: stop a process started by start_bg (SIGTERM, then SIGKILL after
# the grace period) and remove its pid file. Does nothing if it is not running.
stop_bg() {
    local name=$1 grace=${2:-20} pidfile="$KILN_RUN_DIR/$1.pid" pid
    if ! pid_alive "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(pid_of "$name")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for "$grace" "$name to exit" bash -c "! kill -0 $pid"; then
        log "$name did not exit after ${grace}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# --- Probes -----------------------------------------------------------------------------------

# docker_ping SOCKET: true when a Docker Engine answers /_ping on the unix socket.
docker_ping() {
    [[ -S "$1" ]] && [[ $(curl -fsS --max-time 3 --unix-socket "$1" http://localhost/_ping 2>/dev/null) == "OK" ]]
}

# registry_ping: true when a registry answers the /v2/ API check at KILN_REGISTRY.
registry_ping() {
    curl -fsS --max-time 3 -o /dev/null "http://$KILN_REGISTRY/v2/" 2>/dev/null
}

# tcp_open HOST:PORT: true when something accepts TCP connections there.
tcp_open() {
    local host=${1%:*} port=${1##*:}
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# Load the assignments written by `infra.sh start` (DOCKER_HOST and friends), if any.
load_env_file() {
    if [[ -f "$KILN_ENV_FILE" ]]; then
        # shellcheck source=/dev/null
        source "$KILN_ENV_FILE"
        export DOCKER_HOST KILN_REGISTRY KILN_COORDINATOR KILN_HOME
    fi
}
