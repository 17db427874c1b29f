#!/usr/bin/env bash
# down.sh — stop what up.sh started: the agent, the coordinator, then the infrastructure
# (infra.sh stop). Data under KILN_HOME is kept; delete the directory for a clean slate.

set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The agent first, so it does not spin reconnecting to a coordinator that is gone.
stop_bg agent 30
# Members of a local cluster (coordinator-2, …) and then member 1.
for pidfile in "$KILN_RUN_DIR"/coordinator-*.pid; do
    [[ -e "$pidfile" ]] || continue
    name=$(basename "$pidfile" .pid)
    stop_bg "$name" 30
done
stop_bg coordinator 30
"$(dirname "${BASH_SOURCE[0]}")/infra.sh" stop
