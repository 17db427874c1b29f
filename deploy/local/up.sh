#!/usr/bin/env bash
# up.sh — bring up a one-machine kiln: the infrastructure (infra.sh start), the release binaries
# installed to /usr/local/bin, the coordinators and one agent in the background.
#
#   up.sh                     one coordinator (a cluster of one) on 127.0.0.1:7878, or as many
#                             as the farm already has
#   up.sh --coordinators 3    a Raft cluster of 3 (or 5): member N listens on 127.0.0.1, client
#                             port 7878+10*(N-1), peer port +1, HTTP (health) port +2
#
# Member 1 is the single-node coordinator of plain up.sh (same data directory), so a farm grows
# from one to three by running `up.sh --coordinators 3`: members 2.. are added with
# `kiln cluster add` and start empty with --join, catching up by snapshot.
#
# Idempotent: running it again rebuilds, restarts a coordinator or agent only when its installed
# binary changed, and starts any member that is not running (one that died comes back with its
# data). Logs go to $KILN_HOME/logs, pid files to $KILN_HOME/run. down.sh stops everything.

set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

INSTALL_DIR=${KILN_INSTALL_DIR:-/usr/local/bin}
AGENT_ID=${KILN_AGENT_ID:-local-1}
# Binary name -> cargo package.
declare -A PACKAGE_OF=([kiln-coordinator]=kiln-coordinator [kiln-agent]=kiln-agent [kiln]=kiln-ctl)
# Names of the processes whose binary changed in this run (restarted if running).
CHANGED=()
COORDINATORS=""

usage() {
    echo "usage: up.sh [--coordinators 1|3|5]" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --coordinators)
            [[ $# -ge 2 ]] || usage
            COORDINATORS=$2
            shift 2
            ;;
        --coordinators=*)
            COORDINATORS=${1#*=}
            shift
            ;;
        -h | --help) usage ;;
        *) die "unknown argument '$1' (usage: up.sh [--coordinators 1|3|5])" ;;
    esac
done
# Members that already have a data directory: a farm that was grown keeps its members (plain
# up.sh after `up.sh --coordinators 3` starts all three; shrinking is `kiln cluster remove`).
EXISTING=1
for dir in "$KILN_HOME"/coordinator-*/db; do
    [[ -d $dir ]] || continue
    n=${dir%/db}
    n=${n##*coordinator-}
    [[ $n =~ ^[0-9]+$ ]] && ((n > EXISTING)) && EXISTING=$n
done
if [[ -z $COORDINATORS ]]; then
    COORDINATORS=$EXISTING
fi
[[ $COORDINATORS =~ ^[1-9]$ ]] || die "--coordinators must be a number from 1 to 9, not '$COORDINATORS'"
((COORDINATORS >= EXISTING)) ||
    die "this farm has $EXISTING coordinators ($KILN_HOME/coordinator-$EXISTING exists); remove members with 'kiln cluster remove ID' and delete their directories before asking for $COORDINATORS"

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

# Addresses of member N (1-based) of the local cluster. Member 1 keeps the single-node
# coordinator's address, so `kiln` with no flags reaches the farm.
member_host() { echo "${KILN_COORDINATOR_ADDR%:*}"; }
member_port() { echo $((${KILN_COORDINATOR_ADDR##*:} + 10 * ($1 - 1))); }
member_client() { echo "$(member_host):$(member_port "$1")"; }
member_peer() { echo "$(member_host):$(($(member_port "$1") + 1))"; }
member_http() { echo "$(member_host):$(($(member_port "$1") + 2))"; }
member_name() { if (($1 == 1)); then echo coordinator; else echo "coordinator-$1"; fi; }
member_dir() { echo "$KILN_HOME/$(member_name "$1")"; }
# Every member's client URL, comma-separated: what agents and `kiln` are given.
client_endpoints() {
    local i list=""
    for ((i = 1; i <= COORDINATORS; i++)); do
        list+="${list:+,}http://$(member_client "$i")"
    done
    echo "$list"
}

# start_member N [EXTRA_ARGS...]: starts member N unless it runs (restarted if its binary
# changed). An existing data directory is never reset: `new` only applies to an empty one.
start_member() {
    local n=$1 name
    shift
    name=$(member_name "$n")
    if pid_alive "$name"; then
        if ! changed kiln-coordinator; then
            log "$name: already running (pid $(pid_of "$name"))"
            return 0
        fi
        log "$name: binary changed, restarting"
        stop_bg "$name" 30
    elif tcp_open "$(member_client "$n")"; then
        die "something that up.sh did not start already listens on $(member_client "$n"); stop it or set KILN_COORDINATOR"
    fi
    mkdir -p "$(member_dir "$n")"
    log "$name: starting node $n on $(member_client "$n") (peer $(member_peer "$n"), health http://$(member_http "$n")/readyz)"
    start_bg "$name" "$INSTALL_DIR/kiln-coordinator" \
        --node-id "$n" \
        --listen "$(member_client "$n")" \
        --peer-listen "$(member_peer "$n")" \
        --http-listen "$(member_http "$n")" \
        --data-dir "$(member_dir "$n")" \
        --registry "$KILN_REGISTRY" \
        "$@"
    wait_started "$name" 60 "$name to accept connections on $(member_client "$n")" \
        tcp_open "$(member_client "$n")"
}

# `kiln cluster status -o json`; it exits non-zero while a member is down, which is expected
# here (the member about to be started), so only its output counts.
cluster_json() {
    "$INSTALL_DIR/kiln" --coordinator "$(client_endpoints)" cluster status -o json 2>/dev/null || true
}

# True when the cluster lists node N as a member.
is_member() {
    cluster_json | jq -e --argjson id "$1" '[.members[] | select(.id == $id)] | length > 0' >/dev/null
}

cluster_id() {
    local id
    id=$(cluster_json | jq -r '.cluster_id // empty')
    [[ -n $id ]] || die "cannot read the cluster id from kiln cluster status"
    echo "$id"
}

start_coordinators() {
    # Member 1: a cluster of one the first time, its existing data afterwards.
    start_member 1 --initial-cluster-state new
    local n id
    for ((n = 2; n <= COORDINATORS; n++)); do
        if [[ -d "$(member_dir "$n")/db" ]]; then
            start_member "$n" --initial-cluster-state existing
            continue
        fi
        if ! is_member "$n"; then
            log "$(member_name "$n"): adding node $n to the cluster"
            "$INSTALL_DIR/kiln" --coordinator "$(client_endpoints)" cluster add "$n" \
                --peer "http://$(member_peer "$n")" --client "http://$(member_client "$n")" >/dev/null ||
                die "kiln cluster add $n failed"
        fi
        id=$(cluster_id)
        start_member "$n" --join --cluster-id "$id"
    done
    wait_started coordinator 60 "the cluster to elect a leader and accept runs" \
        "$INSTALL_DIR/kiln" --coordinator "$(client_endpoints)" runs list
}

# True when `kiln agents` lists our agent as ready (it also lists lost and disconnected ones).
agent_connected() {
    "$INSTALL_DIR/kiln" --coordinator "$(client_endpoints)" agents 2>/dev/null |
        awk -v id="$AGENT_ID" '$1 == id && $2 == "ready" { found = 1 } END { exit !found }'
}

start_agent() {
    # The coordinator list the running agent was given: a grown cluster means a restart, or
    # the agent would only know member 1.
    local endpoints_file="$KILN_RUN_DIR/agent.coordinators" given=""
    [[ -f $endpoints_file ]] && given=$(<"$endpoints_file")
    if pid_alive agent; then
        if ! changed kiln-agent && ! changed kiln-coordinator && [[ $given == "$(client_endpoints)" ]]; then
            log "agent: already running (pid $(pid_of agent))"
            return 0
        fi
        log "agent: binary, coordinator or coordinator list changed, restarting"
        stop_bg agent 30
    fi
    mkdir -p "$KILN_RUN_DIR"
    client_endpoints >"$endpoints_file"
    mkdir -p "$KILN_HOME/agent"
    # The agent's secret store: one file per Key Vault secret, DIR/<vault-host>/<name>.
    install -d -m 0700 "$KILN_HOME/secrets"
    log "agent: starting $AGENT_ID (docker $DOCKER_HOST, work dir $KILN_HOME/agent, secrets $KILN_HOME/secrets)"
    start_bg agent "$INSTALL_DIR/kiln-agent" \
        --coordinator "$(client_endpoints)" \
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
    start_coordinators
    start_agent
    wait_agent_connected
    cat <<EOF

kiln is up.
  coordinators $(client_endpoints)   (logs: $KILN_LOG_DIR/coordinator*.log)
  agent        $AGENT_ID            (log: $KILN_LOG_DIR/agent.log)
  registry     http://$KILN_REGISTRY
  docker       $DOCKER_HOST
Try:  kiln agents; kiln cluster status
$( ((COORDINATORS > 1)) && echo "      KILN_COORDINATOR=$(client_endpoints) kiln … keeps working while member 1 is down" || true)
Stop: deploy/local/down.sh
EOF
}

main "$@"
