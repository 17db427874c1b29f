#!/usr/bin/env bash
# test.sh — the whole gate, on a fresh Debian 12 machine as root:
#
#   1. deploy/local/infra.sh start  (packages, Docker Engine, registry, QEMU, seed base image);
#   2. build the workspace binaries (debug) for the end-to-end tests (found via KILN_BIN_DIR);
#   3. cargo test --workspace, with DOCKER_HOST, KILN_REGISTRY and KILN_BIN_DIR exported;
#   4. cargo clippy --workspace --all-targets -- -D warnings;
#   5. cargo fmt --all -- --check;
#   6. cargo deny check licenses bans sources (deny.toml; cargo-deny is installed once into
#      KILN_TOOLS_DIR). The advisory database cannot be fetched here: see the README's
#      "Supply chain" for the advisory check.
#
# Steps 3–5 all run even if one fails, so one run shows every problem; the exit status is
# non-zero if any step failed. Missing prerequisites stop the script at once.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=deploy/local/lib.sh
source deploy/local/lib.sh

# Checks the Rust toolchain has what the gate needs; tries rustup for missing components.
check_toolchain() {
    setup_rust_env
    local component
    for component in clippy rustfmt; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null || die "cargo ${component/rustfmt/fmt} is missing and rustup is not installed"
            log "installing the $component component"
            rustup component add "$component" || die "rustup component add $component failed"
        fi
    done
}

# Where cargo-installed gate tools live (outside the clone, like the target directory).
KILN_TOOLS_DIR=${KILN_TOOLS_DIR:-/var/cache/kiln/tools}
CARGO_DENY_VERSION=0.20.2

# Runs cargo-deny's offline checks, installing the pinned cargo-deny first if it is missing.
deny_check() {
    local deny="$KILN_TOOLS_DIR/bin/cargo-deny"
    if ! "$deny" --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
        log "installing cargo-deny $CARGO_DENY_VERSION into $KILN_TOOLS_DIR"
        CARGO_TARGET_DIR="$KILN_TOOLS_DIR/target" cargo install cargo-deny --version "$CARGO_DENY_VERSION" \
            --locked --root "$KILN_TOOLS_DIR" || return 1
    fi
    "$deny" --offline check licenses bans sources
}

FAILED=()

# step NAME COMMAND...: runs one gate step, recording a failure instead of exiting.
step() {
    local name=$1
    shift
    log "=== $name: $*"
    local started=$SECONDS
    if "$@"; then
        log "=== $name: ok ($((SECONDS - started))s)"
    else
        log "=== $name: FAILED ($((SECONDS - started))s)"
        FAILED+=("$name")
    fi
}

main() {
    require_root
    deploy/local/infra.sh start >/dev/null
    load_env_file
    [[ -n "${DOCKER_HOST:-}" ]] || die "infra.sh start did not write DOCKER_HOST to $KILN_ENV_FILE"
    registry_ping || die "the registry does not answer on http://$KILN_REGISTRY/v2/"
    export DOCKER_HOST KILN_REGISTRY
    check_toolchain

    log "=== build: cargo build --workspace --bins"
    cargo build --workspace --bins || die "cargo build --workspace --bins failed"
    export KILN_BIN_DIR="$CARGO_TARGET_DIR/debug"
    log "DOCKER_HOST=$DOCKER_HOST KILN_REGISTRY=$KILN_REGISTRY KILN_BIN_DIR=$KILN_BIN_DIR"

    step test cargo test --workspace --no-fail-fast
    step clippy cargo clippy --workspace --all-targets -- -D warnings
    step fmt cargo fmt --all -- --check
    step deny deny_check

    if [[ ${#FAILED[@]} -gt 0 ]]; then
        die "failed steps: ${FAILED[*]}"
    fi
    log "all steps passed"
}

main "$@"
