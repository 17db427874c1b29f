#!/usr/bin/env bash
# infra.sh start|stop|status|verify — the real components kiln runs against on one machine:
#
#   * the Debian packages the project needs (installed if missing);
#   * a Docker Engine (an existing one on /var/run/docker.sock, or our own dockerd under KILN_HOME);
#   * a CNCF Distribution registry on KILN_REGISTRY (127.0.0.1:5000) with filesystem storage;
#   * QEMU user emulation registered in binfmt_misc (arm64, arm) for foreign-platform builds;
#   * the seed base image $KILN_REGISTRY/base/busybox:latest, a multi-platform index
#     (linux/amd64, linux/arm64, linux/arm/v7, linux/386) built from Debian's busybox-static.
#
# `start` is idempotent. `stop` stops only the daemons `start` started (pid files under KILN_HOME).
# `verify` pulls and runs the seed image on every platform and checks `uname -m`.
# After `start`, $KILN_HOME/env holds DOCKER_HOST, KILN_REGISTRY, KILN_COORDINATOR and KILN_HOME.

set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEFAULT_DOCKER_SOCK=/var/run/docker.sock
OWN_DOCKER_DIR="$KILN_HOME/docker"
OWN_DOCKER_SOCK="$OWN_DOCKER_DIR/docker.sock"
REGISTRY_DIR="$KILN_HOME/registry"
SEED_DIR="$KILN_HOME/seed"
SEED_REPOSITORY=base/busybox
SEED_TAG=latest
SEED_REF="$KILN_REGISTRY/$SEED_REPOSITORY:$SEED_TAG"
# Optional: URL the registry POSTs push events to (Distribution `notifications.endpoints`).
KILN_REGISTRY_NOTIFY_URL=${KILN_REGISTRY_NOTIFY_URL:-}

# Debian architecture -> OCI platform, and the `uname -m` each platform must print.
declare -A PLATFORM_OF=([amd64]=linux/amd64 [arm64]=linux/arm64 [armhf]=linux/arm/v7 [i386]=linux/386)
declare -A UNAME_OF=([linux/amd64]=x86_64 [linux/arm64]=aarch64 [linux/arm/v7]=armv7l [linux/386]=i686)
SEED_ARCHES=(amd64 arm64 armhf i386)
# QEMU emulators to register. On an x86_64 host the kernel runs i386 binaries natively and
# Debian ships no qemu-i386 binfmt entry; `uname -m` in a linux/386 container then prints x86_64
# (the same as Docker anywhere, moby issue 42732). KILN_EMULATE_I386=1 registers qemu-i386 anyway,
# so that linux/386 containers see i686 (with flags POF; every i386 binary on the host then runs under QEMU).
QEMU_TARGETS=(aarch64 arm i386)
KILN_EMULATE_I386=${KILN_EMULATE_I386:-0}
# binfmt entry for i386 ELF executables (magic and mask as in QEMU's scripts/qemu-binfmt-conf.sh).
QEMU_I386_ENTRY=':qemu-i386:M::\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00:\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-i386-static:POF'
# Applets every seed image must have (checked after building the rootfs).
REQUIRED_APPLETS=(sh uname echo cat ls sleep wget nc httpd mkdir rm env true false)

# --- Packages ---------------------------------------------------------------------------------

install_packages() {
    apt_install "${KILN_APT_PACKAGES[@]}"
}

# --- Docker Engine ----------------------------------------------------------------------------

# Sets DOCKER_HOST to a working engine, starting our own dockerd if none answers.
start_docker() {
    if docker_ping "$DEFAULT_DOCKER_SOCK"; then
        DOCKER_HOST="unix://$DEFAULT_DOCKER_SOCK"
        log "docker: using the engine already running on $DEFAULT_DOCKER_SOCK"
        return 0
    fi
    DOCKER_HOST="unix://$OWN_DOCKER_SOCK"
    if docker_ping "$OWN_DOCKER_SOCK"; then
        log "docker: already running on $OWN_DOCKER_SOCK"
        return 0
    fi
    if ! pid_alive dockerd; then
        log "docker: starting dockerd (data under $OWN_DOCKER_DIR)"
        mkdir -p "$OWN_DOCKER_DIR/data" "$OWN_DOCKER_DIR/exec"
        start_bg dockerd dockerd \
            --data-root "$OWN_DOCKER_DIR/data" \
            --exec-root "$OWN_DOCKER_DIR/exec" \
            --pidfile "$OWN_DOCKER_DIR/dockerd.pid" \
            --host "unix://$OWN_DOCKER_SOCK"
    fi
    wait_started dockerd 60 "dockerd to answer /_ping on $OWN_DOCKER_SOCK" docker_ping "$OWN_DOCKER_SOCK"
    log "docker: ready on $OWN_DOCKER_SOCK"
}

# --- Registry ---------------------------------------------------------------------------------

write_registry_config() {
    mkdir -p "$REGISTRY_DIR/data"
    {
        cat <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: true
      age: 168h
      interval: 24h
      dryrun: false
http:
  addr: $KILN_REGISTRY
  headers:
    X-Content-Type-Options: [nosniff]
EOF
        if [[ -n "$KILN_REGISTRY_NOTIFY_URL" ]]; then
            cat <<EOF
notifications:
  endpoints:
    - name: kiln
      url: $KILN_REGISTRY_NOTIFY_URL
      timeout: 2s
      threshold: 5
      backoff: 2s
EOF
        fi
    } >"$REGISTRY_DIR/config.yml"
}

start_registry() {
    if registry_ping; then
        log "registry: already answering on http://$KILN_REGISTRY/v2/"
        return 0
    fi
    if ! pid_alive registry; then
        write_registry_config
        log "registry: starting docker-registry on $KILN_REGISTRY (storage under $REGISTRY_DIR/data)"
        start_bg registry docker-registry serve "$REGISTRY_DIR/config.yml"
    fi
    wait_started registry 30 "the registry to answer http://$KILN_REGISTRY/v2/" registry_ping
    log "registry: ready on $KILN_REGISTRY"
}

# --- QEMU emulation ---------------------------------------------------------------------------

BINFMT=/proc/sys/fs/binfmt_misc

setup_binfmt() {
    if [[ ! -e "$BINFMT/register" ]]; then
        mount -t binfmt_misc binfmt_misc "$BINFMT" || die "cannot mount binfmt_misc on $BINFMT"
    fi
    local target conf line
    for target in "${QEMU_TARGETS[@]}"; do
        if [[ -e "$BINFMT/qemu-$target" ]]; then
            continue
        fi
        conf="/usr/lib/binfmt.d/qemu-$target.conf"
        if [[ $target == i386 && $(uname -m) == x86_64 ]]; then
            if [[ $KILN_EMULATE_I386 != 1 ]]; then
                log "qemu: i386 runs natively on this x86_64 host (uname -m says x86_64 in linux/386 containers)"
                continue
            fi
            line=$QEMU_I386_ENTRY
        else
            [[ -f "$conf" ]] || die "qemu: $conf is missing (is qemu-user-static installed?)"
            line=$(grep -v '^#' "$conf" | head -n 1)
        fi
        # The F flag makes the kernel open the interpreter now, so it also works inside containers.
        [[ ${line##*:} == *F* ]] || line="${line}F"
        printf '%s' "$line" >"$BINFMT/register" || die "qemu: registering $conf in binfmt_misc failed"
        log "qemu: registered qemu-$target"
    done
}

# --- Seed base image --------------------------------------------------------------------------

# Prints the platforms ("os/arch[/variant]") of the seed index, one per line; nothing if absent.
seed_platforms() {
    curl -fsS --max-time 10 \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        "http://$KILN_REGISTRY/v2/$SEED_REPOSITORY/manifests/$SEED_TAG" 2>/dev/null |
        jq -r '.manifests[]?.platform | select(. != null)
               | [.os, .architecture, .variant] | map(select(. != null and . != "")) | join("/")' 2>/dev/null |
        sort -u || true
}

seed_complete() {
    local have platform
    have=$(seed_platforms)
    for platform in "${PLATFORM_OF[@]}"; do
        grep -qx "$platform" <<<"$have" || return 1
    done
}

# Downloads busybox-static for ARCH into $SEED_DIR/debs (cached) and prints the .deb path.
fetch_busybox_deb() {
    local arch=$1 deb
    mkdir -p "$SEED_DIR/debs"
    deb=$(find "$SEED_DIR/debs" -name "busybox-static_*_${arch}.deb" | head -n 1)
    if [[ -z "$deb" ]]; then
        ensure_foreign_arches
        log "seed: downloading busybox-static:$arch"
        (cd "$SEED_DIR/debs" && apt-get download -qq -o APT::Sandbox::User=root "busybox-static:$arch" >/dev/null) ||
            die "seed: apt-get download busybox-static:$arch failed"
        deb=$(find "$SEED_DIR/debs" -name "busybox-static_*_${arch}.deb" | head -n 1)
        [[ -n "$deb" ]] || die "seed: busybox-static:$arch downloaded but no .deb found"
    fi
    printf '%s\n' "$deb"
}

# Builds the root filesystem for ARCH under $SEED_DIR/rootfs/ARCH and prints its path:
# bin/busybox, one symlink per applet (paths from the host busybox's --list-full), /tmp, /etc.
build_rootfs() {
    local arch=$1 deb rootfs extract applet
    deb=$(fetch_busybox_deb "$arch")
    rootfs="$SEED_DIR/rootfs/$arch"
    extract="$SEED_DIR/extract/$arch"
    rm -rf "$rootfs" "$extract"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,var,tmp} "$extract"
    dpkg-deb -x "$deb" "$extract"
    install -m 0755 "$extract/bin/busybox" "$rootfs/bin/busybox"
    rm -rf "$extract"
    # The applet list is the same for every architecture of one Debian package version.
    while read -r applet; do
        [[ -n "$applet" && "$applet" != bin/busybox && ! -e "$rootfs/$applet" ]] || continue
        mkdir -p "$rootfs/$(dirname "$applet")"
        ln -s /bin/busybox "$rootfs/$applet"
    done < <(/bin/busybox --list-full)
    for applet in "${REQUIRED_APPLETS[@]}"; do
        [[ -L "$rootfs/bin/$applet" || -L "$rootfs/usr/bin/$applet" || -L "$rootfs/sbin/$applet" ||
            -L "$rootfs/usr/sbin/$applet" ]] || die "seed: busybox has no '$applet' applet"
    done
    chmod 1777 "$rootfs/tmp"
    chmod 0700 "$rootfs/root"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    printf '127.0.0.1 localhost\n' >"$rootfs/etc/hosts"
    printf '%s\n' "$rootfs"
}

# Path of the kiln-seed binary after building it, or nothing when its source is not there
# (or does not build yet).
kiln_seed_binary() {
    [[ -f "$KILN_REPO_ROOT/registry/src/bin/kiln-seed.rs" ]] || return 0
    setup_rust_env
    log "seed: building kiln-seed"
    if (cd "$KILN_REPO_ROOT" && cargo build --quiet --release -p kiln-registry --bin kiln-seed) >&2; then
        printf '%s\n' "$CARGO_TARGET_DIR/release/kiln-seed"
    else
        log "seed: kiln-seed does not build; falling back to plain registry API calls"
    fi
}

# Pushes the index with kiln-seed: one OCI image per platform, then the index.
push_seed_with_kiln_seed() {
    local bin=$1
    shift
    local args=() arch
    for arch in "$@"; do
        args+=(--platform "${PLATFORM_OF[$arch]}=$SEED_DIR/rootfs/$arch")
    done
    "$bin" --registry "$KILN_REGISTRY" --repository "$SEED_REPOSITORY" --tag "$SEED_TAG" "${args[@]}"
}

# --- Fallback pusher (until kiln-seed builds) ---
# Plain Distribution API calls with curl: docker import cannot set a foreign architecture in an
# image config on Engine 20.10 (it records the host's), so the images are assembled here.

# registry_blob_push FILE MEDIA_TYPE: uploads FILE as a blob (skipped if present) and prints its
# OCI descriptor as JSON.
registry_blob_push() {
    local file=$1 media_type=$2 digest size location base="http://$KILN_REGISTRY/v2/$SEED_REPOSITORY"
    digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
    size=$(stat -c %s "$file")
    if ! curl -fsS -o /dev/null --head "$base/blobs/$digest" 2>/dev/null; then
        location=$(curl -fsS -X POST -D - -o /dev/null "$base/blobs/uploads/" | tr -d '\r' |
            sed -n 's/^[Ll]ocation: //p')
        [[ -n "$location" ]] || die "seed: the registry returned no upload location"
        [[ $location == http* ]] || location="http://$KILN_REGISTRY$location"
        [[ $location == *\?* ]] && location+="&" || location+="?"
        curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
            --data-binary "@$file" "${location}digest=$digest" || die "seed: uploading blob $digest failed"
    fi
    jq -nc --arg m "$media_type" --arg d "$digest" --argjson s "$size" '{mediaType: $m, digest: $d, size: $s}'
}

# registry_manifest_push FILE MEDIA_TYPE REFERENCE: PUTs a manifest or index.
registry_manifest_push() {
    curl -fsS -o /dev/null -X PUT -H "Content-Type: $2" --data-binary "@$1" \
        "http://$KILN_REGISTRY/v2/$SEED_REPOSITORY/manifests/$3" || die "seed: pushing manifest $3 failed"
}

# Pushes one single-layer OCI image per architecture, then the index under SEED_TAG.
push_seed_with_curl() {
    local arch platform work="$SEED_DIR/oci" layer_desc config_desc manifest_desc diff_id
    local descs=() os_arch variant
    rm -rf "$work"
    mkdir -p "$work"
    for arch in "$@"; do
        platform=${PLATFORM_OF[$arch]}
        os_arch=${platform#linux/}
        variant=""
        if [[ $os_arch == */* ]]; then
            variant=${os_arch#*/}
            os_arch=${os_arch%%/*}
        fi
        # Deterministic layer: same bytes (and digest) on every run.
        tar -C "$SEED_DIR/rootfs/$arch" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
            -cf "$work/$arch.tar" .
        diff_id="sha256:$(sha256sum "$work/$arch.tar" | cut -d' ' -f1)"
        gzip -n -9 "$work/$arch.tar"
        layer_desc=$(registry_blob_push "$work/$arch.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)
        jq -nc --arg arch "$os_arch" --arg variant "$variant" --arg diff "$diff_id" '{
            created: "1970-01-01T00:00:00Z", os: "linux", architecture: $arch,
            config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["/bin/sh"]},
            rootfs: {type: "layers", diff_ids: [$diff]},
            history: [{created: "1970-01-01T00:00:00Z", created_by: "busybox-static from Debian"}]
        } + (if $variant == "" then {} else {variant: $variant} end)' >"$work/$arch.config.json"
        config_desc=$(registry_blob_push "$work/$arch.config.json" application/vnd.oci.image.config.v1+json)
        jq -nc --argjson c "$config_desc" --argjson l "$layer_desc" '{
            schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json", config: $c, layers: [$l]
        }' >"$work/$arch.manifest.json"
        manifest_desc=$(jq -nc --arg d "sha256:$(sha256sum "$work/$arch.manifest.json" | cut -d' ' -f1)" \
            --argjson s "$(stat -c %s "$work/$arch.manifest.json")" --arg arch "$os_arch" --arg variant "$variant" '{
            mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
            platform: ({os: "linux", architecture: $arch} + (if $variant == "" then {} else {variant: $variant} end))
        }')
        registry_manifest_push "$work/$arch.manifest.json" application/vnd.oci.image.manifest.v1+json \
            "$(jq -r .digest <<<"$manifest_desc")"
        descs+=("$manifest_desc")
    done
    printf '%s\n' "${descs[@]}" | jq -sc '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: .
    }' >"$work/index.json"
    registry_manifest_push "$work/index.json" application/vnd.oci.image.index.v1+json "$SEED_TAG"
    rm -rf "$work"
}

seed_base_image() {
    if seed_complete; then
        log "seed: $SEED_REF already has all ${#PLATFORM_OF[@]} platforms"
        return 0
    fi
    local arch seed_bin
    log "seed: building root filesystems for ${SEED_ARCHES[*]}"
    for arch in "${SEED_ARCHES[@]}"; do
        build_rootfs "$arch" >/dev/null
    done
    seed_bin=$(kiln_seed_binary)
    if [[ -n "$seed_bin" ]]; then
        log "seed: pushing $SEED_REF with kiln-seed"
        if ! push_seed_with_kiln_seed "$seed_bin" "${SEED_ARCHES[@]}"; then
            log "seed: kiln-seed failed"
        elif ! seed_complete; then
            log "seed: kiln-seed exited 0 but the index is missing platforms"
        fi
    fi
    if ! seed_complete; then
        log "seed: pushing $SEED_REF with curl (Distribution API)"
        push_seed_with_curl "${SEED_ARCHES[@]}"
    fi
    seed_complete || die "seed: $SEED_REF was pushed but does not list all platforms ($(seed_platforms | xargs))"
    log "seed: $SEED_REF has $(seed_platforms | xargs)"
    verify_seed
}

# The `uname -m` a container of PLATFORM prints on this host.
expected_uname() {
    local platform=$1
    if [[ $platform == linux/386 && $(uname -m) == x86_64 && ! -e "$BINFMT/qemu-i386" ]]; then
        echo x86_64 # native 32-bit execution keeps the kernel's machine name
    else
        echo "${UNAME_OF[$platform]}"
    fi
}

# Pulls and runs the seed image for every platform and checks what `uname -m` prints and that
# the busybox inside is a 32-bit (ELF class 01) or 64-bit (02) binary as the platform says.
verify_seed() {
    local platform got want failed=0
    for platform in "${PLATFORM_OF[@]}"; do
        docker pull -q --platform "$platform" "$SEED_REF" >/dev/null || die "verify: docker pull --platform $platform $SEED_REF failed"
        want="$(expected_uname "$platform") $([[ $platform == */386 || $platform == */arm/* ]] && echo 01 || echo 02)"
        got=$(docker run --rm --platform "$platform" "$SEED_REF" \
            sh -c 'echo "$(uname -m) $(od -An -tx1 -j4 -N1 /bin/busybox | tr -d " ")"' 2>&1) || true
        if [[ "$got" == "$want" ]]; then
            log "verify: $platform -> uname -m $got (machine, ELF class)"
        else
            log "verify: $platform printed '$got', expected '$want' (uname -m, ELF class)"
            failed=1
        fi
    done
    [[ $failed -eq 0 ]] || die "verify: the seed image does not run correctly on every platform"
}

# --- Environment file -------------------------------------------------------------------------

write_env_file() {
    mkdir -p "$KILN_HOME"
    {
        printf 'DOCKER_HOST=%q\n' "$DOCKER_HOST"
        printf 'KILN_REGISTRY=%q\n' "$KILN_REGISTRY"
        printf 'KILN_COORDINATOR=%q\n' "$KILN_COORDINATOR"
        printf 'KILN_HOME=%q\n' "$KILN_HOME"
    } >"$KILN_ENV_FILE"
}

# --- Commands ---------------------------------------------------------------------------------

cmd_start() {
    require_root
    mkdir -p "$KILN_HOME" "$KILN_RUN_DIR" "$KILN_LOG_DIR"
    install_packages
    setup_binfmt
    start_docker
    export DOCKER_HOST
    start_registry
    write_env_file
    seed_base_image
    log "infra is up; to use it: source $KILN_ENV_FILE"
    printf 'DOCKER_HOST=%s\n' "$DOCKER_HOST"
}

cmd_stop() {
    stop_bg registry 20
    # dockerd stops its containers first (up to 15 s each by default).
    stop_bg dockerd 60
    rm -f "$KILN_ENV_FILE"
    log "stopped what infra.sh started"
}

cmd_status() {
    local rc=0 target
    if pid_alive dockerd; then
        echo "docker:   running (ours, pid $(pid_of dockerd), unix://$OWN_DOCKER_SOCK)"
    elif docker_ping "$DEFAULT_DOCKER_SOCK"; then
        echo "docker:   running (external, unix://$DEFAULT_DOCKER_SOCK)"
    else
        echo "docker:   down"
        rc=1
    fi
    if registry_ping; then
        if pid_alive registry; then
            echo "registry: running (ours, pid $(pid_of registry), http://$KILN_REGISTRY)"
        else
            echo "registry: running (external, http://$KILN_REGISTRY)"
        fi
        echo "seed:     $SEED_REF [$(seed_platforms | xargs)]"
    else
        echo "registry: down"
        rc=1
    fi
    for target in "${QEMU_TARGETS[@]}"; do
        if [[ -e "$BINFMT/qemu-$target" ]]; then
            echo "qemu:     $target registered ($(grep -m1 '^flags' "$BINFMT/qemu-$target"))"
        else
            echo "qemu:     $target not registered"
        fi
    done
    [[ -f "$KILN_ENV_FILE" ]] && echo "env:      $KILN_ENV_FILE"
    return $rc
}

cmd_verify() {
    load_env_file
    [[ -n "${DOCKER_HOST:-}" ]] || die "no $KILN_ENV_FILE; run infra.sh start first"
    export DOCKER_HOST
    verify_seed
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    verify) cmd_verify ;;
    *)
        echo "usage: $0 start|stop|status|verify" >&2
        exit 2
        ;;
esac
