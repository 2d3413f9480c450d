#!/usr/bin/env bash
# s3_garage.sh: the S3 figures of issue 15, side by side with Garage in one run. Starts our
# cluster (`haystack server`, its S3 role on 127.0.0.1:$HS_S3_PORT, default 8083) and a
# single-node Garage on 127.0.0.1 (S3 API on $G_S3_PORT, default 3900, RPC on 3901), then
# drives the same workloads against each with `haystack-loadtest run --s3` (SigV4, path
# style, closed loop, $CONNS in flight, each phase bounded by a count and $DUR seconds):
#
#   PUT 4 KiB, GET 4 KiB (of what was just PUT), PUT 1 MiB, GET 1 MiB
#
# alternating the two stores workload by workload, and prints a Markdown table: objects/s,
# p50, p99, failures, and the server CPU per request: utime + stime (/proc/PID/stat) of the
# server processes read before and after each phase, divided by the phase's successful
# requests. For our cluster that is the S3 role, the directory and the stores (the cache and
# the uploader take no part in S3 traffic and are left out); for Garage its one process.
# The load generator runs on the same cores; its own CPU per request (bash's `time` of it)
# has a column of its own.
#
#   bash bench/s3_garage.sh
#   DUR=10 CONNS=16 HS_REPLICATION=2 bash bench/s3_garage.sh
#   SIZES=fixed:1MiB bash bench/s3_garage.sh       # the 1 MiB rows alone
#   PERF=1 ONLY=put-1MiB bash bench/s3_garage.sh   # perf record -g (PERF_CALLGRAPH="--call-graph dwarf") of the servers in that
#                                                  # phase (every phase without ONLY), kept
#                                                  # in $BASE/perf-SIDE-OP-SIZE.data
#
# Garage (AGPL) is never part of this repository: the script uses $GARAGE (default
# /work/garage-bin/bin/garage, or `garage` on PATH), builds it with `cargo install garage
# --version 2.5.0 --locked` into $GARAGE_ROOT when INSTALL_GARAGE=1 (tens of minutes on two
# cores), and otherwise prints "Garage: SKIPPED" and measures our cluster alone.
#
# Parity: Garage runs with replication_factor = 1 on one node, metadata_fsync and
# data_fsync on (our stores fdatasync every write before acknowledging it) and compression
# off (the payloads are JPEG bytes padded with random bytes: nothing to gain); our cluster
# runs with HS_REPLICATION (default 1: one copy, as Garage's) on HS_STORES stores (default
# 3). Disk: about (COUNT_1M or what fits in DUR) MiB per copy per side, all under $BASE,
# removed at the end with everything else this script made. Every server it starts is
# stopped at exit.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
BASE=${BASE:-/tmp/haystack-s3bench}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LT=$TARGET_DIR/release/haystack-loadtest
HS=$TARGET_DIR/release/haystack
GARAGE_ROOT=${GARAGE_ROOT:-/work/garage-bin}
GARAGE=${GARAGE:-$GARAGE_ROOT/bin/garage}
INSTALL_GARAGE=${INSTALL_GARAGE:-0}
DUR=${DUR:-15}
CONNS=${CONNS:-32}
COUNT_4K=${COUNT_4K:-200000}
COUNT_1M=${COUNT_1M:-3000}
GETS=${GETS:-1000000}
PAYLOAD=${PAYLOAD:-signed}
HS_S3_PORT=${HS_S3_PORT:-8083}
HS_DIR_PORT=${HS_DIR_PORT:-8082}
HS_REPLICATION=${HS_REPLICATION:-1}
HS_STORES=${HS_STORES:-3}
G_S3_PORT=${G_S3_PORT:-3900}
G_RPC_PORT=${G_RPC_PORT:-3901}
BUCKET=loadtest
SEED=7
HS_PID=
G_PID=
TICK=$(getconf CLK_TCK)

say() { echo "# $*" >&2; }

cleanup() {
    local p kids=()
    # `haystack server` stops its roles itself (up to 40 s each); whatever is left after
    # 60 s, the roles included, is killed.
    [[ -n $HS_PID ]] && kids=($(ps -o pid= --ppid "$HS_PID" 2>/dev/null || true))
    for p in $G_PID $HS_PID; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in $G_PID $HS_PID "${kids[@]}"; do
        for _ in $(seq 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$BASE/hs-logs"; mv "$BASE/hs/logs" "$BASE/hs-logs" 2>/dev/null || true
    rm -rf "$BASE/hs" "$BASE/garage/meta" "$BASE/garage/data"
}
trap cleanup EXIT

busy() { curl -s -m 1 -o /dev/null "http://127.0.0.1:$1/"; }

# Waits (up to SETTLE seconds, default 60) for the 1-minute load average to fall below 1.5.
settle() {
    local i
    for ((i = 0; i < ${SETTLE:-60}; i += 5)); do
        awk '{exit !($1 < 1.5)}' /proc/loadavg && return 0
        sleep 5
    done
    say "load still $(cut -d' ' -f1-3 /proc/loadavg) after ${SETTLE:-60} s: figures will be noisy"
}

# utime + stime, in clock ticks, of the given processes (all their threads).
cpu_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")
        t=$((t + v))
    done
    echo "$t"
}

mkdir -p "$BASE/json"
rm -rf "$BASE/hs" "$BASE/garage"

# --- binaries --------------------------------------------------------------------------
if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_INCREMENTAL=0 cargo build --release -p haystack-ops -p haystack-loadtest >&2
fi
if [[ ! -x $GARAGE ]] && command -v garage >/dev/null; then GARAGE=$(command -v garage); fi
if [[ ! -x $GARAGE && $INSTALL_GARAGE == 1 ]]; then
    say "building Garage 2.5.0 into $GARAGE_ROOT (long)"
    CARGO_TARGET_DIR=${GARAGE_TARGET:-/tmp/garage-target} CARGO_INCREMENTAL=0 \
        cargo install garage --version 2.5.0 --locked --root "$GARAGE_ROOT" >&2
    rm -rf "${GARAGE_TARGET:-/tmp/garage-target}"
    GARAGE=$GARAGE_ROOT/bin/garage
fi
HAVE_GARAGE=0
[[ -x $GARAGE ]] && HAVE_GARAGE=1

# --- our cluster -------------------------------------------------------------------------
for port in "$HS_S3_PORT" "$HS_DIR_PORT"; do
    if busy "$port"; then say "something already answers on 127.0.0.1:$port: not sharing it"; exit 1; fi
done
"$HS" server --data-dir "$BASE/hs" --stores "$HS_STORES" --replication "$HS_REPLICATION" \
    --s3-port "$HS_S3_PORT" --directory-port "$HS_DIR_PORT" >"$BASE/hs-server.log" 2>&1 &
HS_PID=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$HS_S3_PORT/health" >/dev/null 2>&1 && break
    kill -0 "$HS_PID" 2>/dev/null || { say "haystack server exited (see $BASE/hs-server.log)"; exit 1; }
    sleep 0.2
done
curl -sf "http://127.0.0.1:$HS_S3_PORT/health" >/dev/null || { say "our S3 role did not start"; exit 1; }
# the stores have registered and the directory has a writable volume to assign
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$HS_DIR_PORT/health" 2>/dev/null | grep -q '"writable_volumes":[1-9]' && break
    sleep 0.2
done
export HAYSTACK_CLUSTER_SECRET_FILE=$BASE/hs/cluster.secret
export HAYSTACK_DIRECTORY=http://127.0.0.1:$HS_DIR_PORT HAYSTACK_S3_MASTER_KEY=$BASE/hs/s3/master.key
"$HS" s3 bucket create "$BUCKET" >&2
keyout=$("$HS" s3 key create --bucket "$BUCKET" --read --write)
HS_KEY=$(awk '/access key id:/ {print $NF}' <<<"$keyout")
HS_SECRET=$(awk '/secret access key:/ {print $NF}' <<<"$keyout")
# The processes that serve S3: the role, the directory and the stores.
HS_PIDS=()
while read -r pid role; do
    case $role in s3 | directory | store) HS_PIDS+=("$pid") ;; esac
done < <(ps -o pid=,args= --ppid "$HS_PID" | awk '{print $1, $3}')
say "our cluster: pid $HS_PID, S3 serving processes ${HS_PIDS[*]}"

# --- Garage ------------------------------------------------------------------------------
G_PIDS=()
if [[ $HAVE_GARAGE == 1 ]]; then
    for port in "$G_S3_PORT" "$G_RPC_PORT"; do
        if busy "$port"; then say "something already answers on 127.0.0.1:$port: not sharing it"; exit 1; fi
    done
    G=$BASE/garage
    mkdir -p "$G/meta" "$G/data"
    cat >"$G/garage.toml" <<EOF
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "lmdb"
replication_factor = 1
metadata_fsync = true
data_fsync = true
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$G_RPC_PORT"
rpc_public_addr = "127.0.0.1:$G_RPC_PORT"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$G_S3_PORT"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$G/garage.toml"
    GC=("$GARAGE" -c "$G/garage.toml")
    RUST_LOG=${GARAGE_LOG:-warn} "${GC[@]}" server >"$BASE/garage.log" 2>&1 &
    G_PID=$!
    up=0
    for _ in $(seq 150); do
        "${GC[@]}" status >/dev/null 2>&1 && { up=1; break; }
        kill -0 "$G_PID" 2>/dev/null || { say "garage exited (see $BASE/garage.log)"; exit 1; }
        sleep 0.2
    done
    [[ $up == 1 ]] || { say "garage did not answer (see $BASE/garage.log)"; exit 1; }
    node=$("${GC[@]}" node id -q 2>/dev/null | cut -d@ -f1)
    "${GC[@]}" layout assign -z dc1 -c 100G "$node" >&2
    "${GC[@]}" layout apply --version 1 >&2
    "${GC[@]}" bucket create "$BUCKET" >&2
    gkey=$("${GC[@]}" key create loadtest-key)
    G_KEY=$(awk '/Key ID:/ {print $NF}' <<<"$gkey")
    G_SECRET=$(awk '/Secret key:/ {print $NF}' <<<"$gkey")
    "${GC[@]}" bucket allow --read --write --owner "$BUCKET" --key loadtest-key >&2
    G_PIDS=("$G_PID")
    say "garage: pid $G_PID ($("$GARAGE" --version 2>/dev/null | head -1))"
else
    say "Garage: SKIPPED (no binary at $GARAGE; INSTALL_GARAGE=1 builds it)"
fi

# --- the phases --------------------------------------------------------------------------
ROWS=()
# phase SIDE OP SIZE PREFIX COUNT [EXISTING]: one bounded run; appends a table row.
phase() {
    local side=$1 op=$2 size=$3 prefix=$4 count=$5 existing=${6:-0}
    local url key secret pids
    if [[ $side == haystack ]]; then
        url=http://127.0.0.1:$HS_S3_PORT key=$HS_KEY secret=$HS_SECRET pids=("${HS_PIDS[@]}")
    else
        url=http://127.0.0.1:$G_S3_PORT key=$G_KEY secret=$G_SECRET pids=("${G_PIDS[@]}")
    fi
    local out=$BASE/json/$side-$op-${size#fixed:}.json
    settle
    local la0 la1 c0 c1
    la0=$(cut -d' ' -f1 /proc/loadavg)
    say "$(date -u +%H:%M:%S) load $la0: $side $op $size"
    c0=$(cpu_ticks "${pids[@]}")
    local perf_pid=
    if [[ ${PERF:-0} == 1 && ( -z ${ONLY:-} || $ONLY == "$op-${size#fixed:}" ) ]]; then
        perf record -F ${PERF_FREQ:-999} ${PERF_CALLGRAPH:--g} -o "$BASE/perf-$side-$op-${size#fixed:}.data" \
            -p "$(IFS=,; echo "${pids[*]}")" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    # The load generator's own CPU (user + system seconds), from bash's `time`.
    local TIMEFORMAT='%3U %3S'
    { time HAYSTACK_S3_ACCESS_KEY=$key HAYSTACK_S3_SECRET_KEY=$secret "$LT" run --s3 "$url" \
        --s3-bucket "$BUCKET" --s3-prefix "$prefix" --s3-payload "$PAYLOAD" --size "$size" \
        --seed "$SEED" --preload 0 --s3-existing "$existing" --mix "$op=1" -c "$CONNS" \
        -d "$DUR" -n "$count" --quiet --json >"$out" 2>"$BASE/loadtest.err"; } 2>"$BASE/loadtest.time"
    local lg_cpu
    lg_cpu=$(awk '{printf "%.3f", $1 + $2}' "$BASE/loadtest.time")
    c1=$(cpu_ticks "${pids[@]}")
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid"; wait "$perf_pid" || true
        say "profile: $BASE/perf-$side-$op-${size#fixed:}.data"
    fi
    la1=$(cut -d' ' -f1 /proc/loadavg)
    ROWS+=("$(python3 - "$out" "$side" "$op" "$size" "$((c1 - c0))" "$TICK" "$la0" "$la1" "$lg_cpu" <<'EOF'
import json, sys
path, side, op, size, ticks, tick, la0, la1, lg_cpu = sys.argv[1:]
r = json.load(open(path))
o = r["phases"][-1]["ops"].get(op, {})
ok = o.get("ok", 0)
lat = o.get("latency_us", {})
fails = ",".join(f"{k}={v}" for k, v in o.get("failures", {}).items()) or "0"
cpu_s = int(ticks) / int(tick)
per = f"{cpu_s / ok * 1e6:,.0f} µs" if ok else "-"
lg = f"{float(lg_cpu) / ok * 1e6:,.0f} µs" if ok else "-"
print(f"| {op.upper()} {size.split(':')[1]} | {side} | {o.get('ops_per_s', 0):,.0f} | "
      f"{lat.get('p50', 0) / 1000:.2f} | {lat.get('p99', 0) / 1000:.2f} | {per} | "
      f"{cpu_s:.1f} s / {ok:,} | {lg} | {fails} | {la0} → {la1} |")
EOF
)")
    # the number of PUTs issued: GETs read objects 0 .. that - 1
    LAST_ISSUED=$(jq -r ".phases[-1].ops[\"$op\"].requests // 0" "$out")
}

sides=(haystack)
[[ $HAVE_GARAGE == 1 ]] && sides+=(garage)
declare -A issued
for size in ${SIZES:-fixed:4KiB fixed:1MiB}; do
    count=$COUNT_4K
    [[ $size == fixed:1MiB ]] && count=$COUNT_1M
    for side in "${sides[@]}"; do
        phase "$side" put "$size" "b-${size#fixed:}" "$count"
        issued[$side]=$LAST_ISSUED
    done
    for side in "${sides[@]}"; do
        phase "$side" get "$size" "b-${size#fixed:}" "$GETS" "${issued[$side]}"
    done
done

echo
echo "S3 side by side, $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;"
echo "closed loop, $CONNS in flight, each phase at most $DUR s (PUT 4 KiB: $COUNT_4K, PUT 1 MiB: $COUNT_1M, GET: $GETS requests), payload $PAYLOAD;"
echo "ours: haystack server, $HS_STORES stores, replication $HS_REPLICATION; CPU = S3 role + directory + stores."
[[ $HAVE_GARAGE == 1 ]] || echo "Garage: SKIPPED (not installed)"
echo
echo "| workload | server | objects/s | p50 ms | p99 ms | server CPU per request | server CPU / requests | load generator CPU per request | failures | load 1-min before → after |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
