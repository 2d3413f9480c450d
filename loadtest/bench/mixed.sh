#!/usr/bin/env bash
# mixed.sh: realistic mixed workloads against a local cluster (started unless UPLOADER= or
# DIRECTORY= is given): closed loop, open loop at a fixed rate, small objects, each with
# --verify; videos read with Range. Saves JSON under bench/results/loadtest/ (SAVE=0: do not).
#
#   bash loadtest/bench/mixed.sh
#   DUR=10 RATE=500 bash loadtest/bench/mixed.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
DUR=${DUR:-30}
CONNS=${CONNS:-32}
RATE=${RATE:-1000}
PRELOAD=${PRELOAD:-5000}
SAVE=${SAVE:-1}
trap cluster_down EXIT
build
cluster_up

run() { # name title flags...
    local name=$1 title=$2; shift 2
    local save=()
    [[ $SAVE == 1 ]] && save=(--save "$RESULTS/$name.json")
    settle
    say "$(date -Is) load $(cut -d' ' -f1-3 /proc/loadavg): $name"
    "$LT" run "${TARGET_FLAGS[@]}" --quiet --verify --title "$title" "${save[@]}" "$@"
}
run mixed-closed "Mixed photo workload, closed loop ($CONNS in flight)" \
    --preload "$PRELOAD" -d "$DUR" -c "$CONNS"
run mixed-open "Mixed photo workload, open loop at $RATE/s" \
    --preload "$PRELOAD" -d "$DUR" --rate "$RATE"
run small-objects "Small objects (4 KiB), closed loop ($CONNS in flight)" \
    --small-objects --preload "$PRELOAD" -d "$DUR" -c "$CONNS"
run videos "Videos read with Range (256 KiB at random offsets of 16 MiB videos) among photo reads" \
    --preload "$PRELOAD" -d "$DUR" -c "$CONNS" --videos 8 --video-size 16MiB --mix get=70,video=30
