#!/usr/bin/env bash
# Fuzzes kiln-taskfile on the stable toolchain (see README.md).
#   fuzz/run.sh fuzz plan|template [SECONDS [LIBFUZZER-FLAGS...]]
#                                              seed the working corpus, fuzz for SECONDS (600)
#   fuzz/run.sh cmin plan|template             minimise the working corpus into corpus-min/
#   fuzz/run.sh tmin plan|template ARTIFACT    minimise a crash/timeout input
set -euo pipefail

cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kiln/target-fuzz}
# cargo fuzz passes nightly-only rustc flags (-Zsanitizer=address, sancov); the stable
# compiler accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
# The crate forbids unsafe code, so AddressSanitizer finds little and costs 2-10x in speed;
# SANITIZER=address runs with it.
sanitizer=${SANITIZER:-none}

cmd=${1:?usage: run.sh fuzz|cmin|tmin TARGET ...}
target=${2:?target: plan or template}
case $target in plan | template) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac
corpus=corpus/$target

seed() {
    mkdir -p "$corpus"
    cp -n seeds/"$target"/* regressions/"$target"/* corpus-min/"$target"/* "$corpus"/ 2>/dev/null || true
    local f base values
    for f in ../tests/conformance/valid/*.yaml ../tests/conformance/invalid/*.yaml; do
        case $f in *.values.yaml) continue ;; esac
        base=$(basename "$f" .yaml)
        values=${f%.yaml}.values.yaml
        if [ "$target" = plan ] && [ -f "$values" ]; then
            # A plan input may carry a values file after the separator line.
            { cat "$f"; printf '\n#---values---\n'; cat "$values"; } >"$corpus/conformance-$base"
        else
            cp "$f" "$corpus/conformance-$base"
        fi
    done
}

case $cmd in
fuzz)
    secs=${3:-600}
    shift $(($# < 3 ? $# : 3))
    seed
    # One process (the machine has two cores), 5 s per input, 2 GiB of memory at most.
    cargo fuzz run -O -s "$sanitizer" "$target" "$corpus" -- \
        -dict=dict/taskfile.dict -max_total_time="$secs" -rss_limit_mb=2048 -timeout=5 \
        -max_len=65536 -print_final_stats=1 "$@"
    ;;
cmin)
    cargo fuzz cmin -O -s "$sanitizer" "$target" "$corpus" -- -rss_limit_mb=2048 -timeout=5
    # Commit only a small slice of it: the smallest inputs, up to 150 KiB, leaving out slow
    # ones (over 50 ms here, process start included): the replay test runs them all in a
    # debug build, and the seeds already hold the expensive hostile shapes.
    bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$target
    rm -rf corpus-min/"$target" && mkdir -p corpus-min/"$target"
    # Inputs already committed elsewhere (seeds, regressions, conformance) are left out.
    known=$(find seeds/"$target" regressions/"$target" ../tests/conformance -type f \
        -exec sha1sum {} + | cut -d' ' -f1 | sort -u)
    total=0
    while read -r size f; do
        sum=$(sha1sum "$f" | cut -d' ' -f1)
        grep -qx "$sum" <<<"$known" && continue
        [ $((total + size)) -gt 153600 ] && break
        start=$(date +%s%N)
        "$bin" "$f" >/dev/null 2>&1 || true
        [ $(($(date +%s%N) - start)) -gt 50000000 ] && continue
        cp "$f" corpus-min/"$target"/
        total=$((total + size))
    done < <(find "$corpus" -type f -printf '%s %p\n' | sort -n)
    echo "corpus-min/$target: $(ls corpus-min/"$target" | wc -l) files, $total bytes"
    ;;
tmin)
    artifact=${3:?artifact path}
    cargo fuzz tmin -O -s "$sanitizer" "$target" "$artifact" -- -rss_limit_mb=2048 -timeout=5
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
