#!/usr/bin/env bash
# up.sh — bring up a one-machine kiln: the infrastructure (infra.sh start), the release binaries
# installed to /usr/local/bin, one coordinator and one agent in the background.
#
# Idempotent: running it again rebuilds, and restarts the coordinator or agent only when its
# installed binary changed. Logs go to $KILN_HOME/logs, pid files to $KILN_HOME/run.
# down.sh stops everything this script started.

set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

INSTALL_DIR=${KILN_INSTALL_DIR:-/usr/local/bin}
AGENT_ID=${KILN_AGENT_ID:-local-1}
# Binary name -> cargo package.
declare -A PACKAGE_OF=([kiln-coordinator]=kiln-coordinator [kiln-agent]=kiln-agent [kiln]=kiln-ctl)
# Names of the processes whose binary changed in this run (restarted if running).
CHANGED=()

build_binaries() {
    setup_rust_env
    log "building release binaries (cargo target dir $CARGO_TARGET_DIR)"
    (cd "$KILN_REPO_ROOT" && cargo build --release -p kiln-coordinator -p kiln-agent -p kiln-ctl) ||
        die "cargo build --release failed"
}

# Copies the built binaries to INSTALL_DIR via a temporary file and rename, so a running old
# binary is never overwritten in place. Records which ones changed.
install_binaries() {
    local name src dest
    mkdir -p "$INSTALL_DIR"
    for name in "${!PACKAGE_OF[@]}"; do
        src="$CARGO_TARGET_DIR/release/$name"
        dest="$INSTALL_DIR/$name"
        [[ -x "$src" ]] || die "$src was not built (package ${PACKAGE_OF[$name]})"
        if cmp -s "$src" "$dest"; then
            continue
        fi
        install -m 0755 "$src" "$dest.new"
        mv -f "$dest.new" "$dest"
        CHANGED+=("$name")
        log "installed $dest"
    done
}

changed() {
    local name
    for name in "${CHANGED[@]}"; do
        [[ $name == "$1" ]] && return 0
    done
    return 1
}

start_coordinator() {
    if pid_alive coordinator; then
        if ! changed kiln-coordinator; then
            log "coordinator: already running (pid $(pid_of coordinator))"
            return 0
        fi
        log "coordinator: binary changed, restarting"
        stop_bg coordinator 30
    elif tcp_open "$KILN_COORDINATOR_ADDR"; then
        die "something that up.sh did not start already listens on $KILN_COORDINATOR_ADDR; stop it or set KILN_COORDINATOR"
    fi
    mkdir -p "$KILN_HOME/coordinator"
    log "coordinator: starting on $KILN_COORDINATOR_ADDR (data under $KILN_HOME/coordinator)"
    start_bg coordinator "$INSTALL_DIR/kiln-coordinator" \
        --listen "$KILN_COORDINATOR_ADDR" \
        --data-dir "$KILN_HOME/coordinator" \
        --registry "$KILN_REGISTRY"
    wait_started coordinator 60 "the coordinator to accept connections on $KILN_COORDINATOR_ADDR" \
        tcp_open "$KILN_COORDINATOR_ADDR"
}

# True when `kiln agents` lists our agent as ready (it also lists lost and disconnected ones).
agent_connected() {
    KILN_COORDINATOR="$KILN_COORDINATOR" "$INSTALL_DIR/kiln" agents 2>/dev/null |
        awk -v id="$AGENT_ID" '$1 == id && $2 == "ready" { found = 1 } END { exit !found }'
}

start_agent() {
    if pid_alive agent; then
        if ! changed kiln-agent && ! changed kiln-coordinator; then
            log "agent: already running (pid $(pid_of agent))"
            return 0
        fi
        log "agent: binary or coordinator changed, restarting"
        stop_bg agent 30
    fi
    mkdir -p "$KILN_HOME/agent"
    # The agent's secret store: one file per Key Vault secret, DIR/<vault-host>/<name>.
    install -d -m 0700 "$KILN_HOME/secrets"
    log "agent: starting $AGENT_ID (docker $DOCKER_HOST, work dir $KILN_HOME/agent, secrets $KILN_HOME/secrets)"
    start_bg agent "$INSTALL_DIR/kiln-agent" \
        --coordinator "$KILN_COORDINATOR" \
        --docker-host "$DOCKER_HOST" \
        --work-dir "$KILN_HOME/agent" \
        --secrets-dir "$KILN_HOME/secrets" \
        --agent-id "$AGENT_ID" \
        --drain-timeout-seconds 25
}

wait_agent_connected() {
    wait_started agent 60 "agent $AGENT_ID to appear in 'kiln agents'" agent_connected
    log "agent: $AGENT_ID is connected"
}

main() {
    require_root
    "$(dirname "${BASH_SOURCE[0]}")/infra.sh" start >/dev/null
    load_env_file
    [[ -n "${DOCKER_HOST:-}" ]] || die "infra.sh start did not write DOCKER_HOST to $KILN_ENV_FILE"
    build_binaries
    install_binaries
    start_coordinator
    start_agent
    wait_agent_connected
    cat <<EOF

kiln is up.
  coordinator  $KILN_COORDINATOR   (log: $KILN_LOG_DIR/coordinator.log)
  agent        $AGENT_ID            (log: $KILN_LOG_DIR/agent.log)
  registry     http://$KILN_REGISTRY
  docker       $DOCKER_HOST
Try:  kiln agents
Stop: deploy/local/down.sh
EOF
}

main "$@"
