#!/usr/bin/env bash
# GETs of an erasure-coded volume against the same data replicated (issue 14): healthy
# throughput and p99 of 2+1 shards against 2 replicas, then degraded GETs with one shard
# store down. Everything on loopback, release binaries: a directory, four stores and a cache
# with `--admission none` (every GET reaches a store, as sealed volumes are never cached by
# Haystack's policy anyway) as separate `haystack` processes. Each side is a fresh cluster and
# one `haystack-loadtest run` with the same seed: it preloads photos through the directory,
# then `--after-preload` runs this script's `hook` (seal the volumes the preload filled;
# encode them 2+1; stop the store of the first volume's data shard 0), then measures GETs.
#
#   bench/ec_get.sh                 # all three sides; runs saved in bench/results/loadtest/
#   SIDES="ec" bench/ec_get.sh      # one side
# Knobs: PRELOAD (2000), SIZE (fixed:64KiB), CONC (16), DURATION (20 s), BUILD=0.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
HS=$TARGET_DIR/release/haystack
LT=$TARGET_DIR/release/haystack-loadtest
D=http://127.0.0.1:18082

# The after-preload hook: `ec_get.sh hook SIDE SCRATCH`.
if [[ ${1:-} == hook ]]; then
    side=$2 scratch=$3
    sleep 2 # one heartbeat, so that used_bytes shows which volumes the preload filled
    vols=$(curl -sf $D/v1/volumes | jq -r '.[] | select(.used_bytes > 0) | .id')
    for v in $vols; do
        "$HS" volume seal "$v" --directory $D --json >/dev/null
        if [[ $side != replicated ]]; then
            "$HS" volume encode "$v" --k 2 --m 1 --block-bytes 4194304 --directory $D --json \
                >>"$scratch/encode.json"
        fi
    done
    if [[ $side == degraded ]]; then
        first=$(echo "$vols" | head -1)
        url=$(curl -sf $D/v1/volumes/"$first" | jq -r '.replicas[0].url')
        port=${url##*:}
        pid=$(awk -v p="$port" '$1 == p {print $2}' "$scratch/stores")
        kill -9 "$pid"
        echo "stopped the store at $url (data shard 0 of volume $first)" >&2
    fi
    exit 0
fi

RESULTS=${RESULTS:-bench/results/loadtest}
cd "$ROOT"
mkdir -p "$RESULTS"
[[ ${BUILD:-1} == 0 ]] || cargo build --release -p haystack-loadtest -p haystack-ops >&2

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

run_side() {
    local side=$1 scratch
    scratch=$(mktemp -d /tmp/haystack-ec-get.XXXXXX)
    "$HS" directory --listen 127.0.0.1:18082 --metadata "embedded:$scratch/dir" \
        --replication 2 --store-timeout-ms 3000 --heartbeat-secs 1 \
        --volume-capacity-bytes $((512 << 20)) --cache-url http://127.0.0.1:18081 \
        --rereplicate-after-ms 0 2>"$scratch/directory.log" &
    PIDS+=($!)
    for i in 0 1 2 3; do
        "$HS" store --data-dir "$scratch/store$i" --listen 127.0.0.1:$((18090 + i)) \
            --directory $D --heartbeat-secs 1 --max-volume-bytes $((512 << 20)) \
            --prealloc-step $((64 << 20)) 2>"$scratch/store$i.log" &
        PIDS+=($!)
        echo "$((18090 + i)) $!" >>"$scratch/stores"
    done
    "$HS" cache --listen 127.0.0.1:18081 --directory $D --admission none \
        2>"$scratch/cache.log" &
    PIDS+=($!)
    for _ in $(seq 150); do
        [[ $(curl -sf $D/health | jq -r '.writable_volumes // 0' 2>/dev/null) -ge 1 ]] && break
        sleep 0.2
    done
    echo "# $side: $(date -u), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$LT" run --directory $D --seed 14 --size "${SIZE:-fixed:64KiB}" \
        --preload "${PRELOAD:-2000}" --mix put=0,get=1,delete=0,video=0 \
        -c "${CONC:-16}" -d "${DURATION:-20}" --quiet \
        --after-preload "$HERE/ec_get.sh hook $side $scratch" \
        --title "GET, $side (issue 14: 2+1 erasure coding against 2 replicas)" \
        --save "$RESULTS/ec-get-$side.json"
    # Degraded reads the live stores counted during the run.
    local n=0
    for i in 0 1 2 3; do
        c=$(curl -sf http://127.0.0.1:$((18090 + i))/metrics 2>/dev/null |
            awk '/^haystack_store_ec_degraded_reads_total/ {s += $2} END {print s + 0}') || c=0
        n=$((n + ${c%.*}))
    done
    echo "# $side: degraded reads counted by the stores: $n; load after $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    cleanup
    PIDS=()
    rm -rf "$scratch"
}

for side in ${SIDES:-replicated ec degraded}; do
    run_side "$side"
    sleep 5
done
