#!/usr/bin/env bash
# cache_bench.sh: the cache tier's HTTP benchmarks, side by side with the nginx
# file-per-photo baseline (../../../shared/bench) in one run on this machine.
#
#   bash cache/bench/cache_bench.sh              # 3 reps of 20 s per test
#   REPS=1 DUR=10 bash cache/bench/cache_bench.sh
#   SKIP_NGINX=1 ...                             # only our side
#   ONLY="hit miss" ...                          # only these tests
#   PERF=1 ...                                   # perf record -g of store, hit, miss (rep 1)
#   PERF=stat ...                                # perf stat (instructions, cycles) instead
#
# Tests (wrk -t2 -c64, random paths over N4K needles of 4 KiB, page cache warm):
#   nginx   GET 4 KiB from nginx (file per photo), GET only: TESTS=get4k (the baseline's PUT
#           phase creates ~1 M files per rep and once filled the disk)
#   store   GET 4 KiB straight from a release `haystack store` (2 HTTP workers)
#   hit     GET 4 KiB through a release cache node (2 workers, 1 GiB), every needle in memory
#   miss    GET 4 KiB through a cache node with --admission none: every request reads the store
#           (the photos are committed to the directory; the node's liveness answers are warm)
#   store_c1 / hit_c1 / miss_c1: the same three with one connection (-t1 -c1): latency added
#           per request; before them, `haystack-loadtest rtt` (the loopback round trip between
#           two threads, blocking and spinning): the floor under the hop a miss adds
#   floor_actix / floor_hyper / floor_raw: `haystack-loadtest floor` (N4K objects of 4 KiB in
#           memory, 2 workers) answering GET with one HTTP stack and no other work: the ceiling
#           a hit or a store read on that stack cannot pass (issue 18, part 3)
# stdout: one "median ..." line per test; every run also in $BASE/results.log, with the
# cache's hit/miss counters and the CPU each server used.
# Disk: ~450 MB of volume under $BASE (removed at the end); nginx's file tree stays in
# /tmp/nginx-baseline (100,000 files; remove it when done).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared/bench" 2>/dev/null && pwd || true)}
BASE=${BASE:-/tmp/haystack-cache-bench}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DPORT=${DPORT:-18182}
SPORT=${SPORT:-18190}
HPORT=${HPORT:-18181}
MPORT=${MPORT:-18183}
FPORT=${FPORT:-18195}
DUR=${DUR:-20}
REPS=${REPS:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
N4K=${N4K:-100000}
WORKERS=${WORKERS:-2}
LOG=$BASE/results.log
mkdir -p "$BASE"
: >"$LOG"
say() { echo "$*" >&2; echo "$*" >>"$LOG"; }
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
HZ=$(getconf CLK_TCK)
ticks() { local f; read -r -a f <"/proc/$1/stat"; echo $((f[13] + f[14])); }

command -v wrk >/dev/null || apt-get install -y -q wrk >&2
# Another benchmark on this machine would share the ports (nginx's 18080 too) and the CPUs.
for p in 18080 "$DPORT" "$SPORT" "$HPORT" "$MPORT" "$FPORT"; do
    if ss -ltn | awk '{print $4}' | grep -q ":$p\$"; then
        echo "port $p is in use (another benchmark running?); not starting" >&2
        exit 1
    fi
done
say "# $(date -Is) host=$(hostname) cpus=$(nproc) kernel=$(uname -r) load=$(cut -d' ' -f1-3 /proc/loadavg)"

if [[ -z ${SKIP_NGINX:-} && -n $SHARED ]]; then
    say "# nginx baseline (same run, GET only)"
    TESTS=get4k WORKERS_LIST=2 REPS=$REPS DUR=$DUR COLD=0 N4K=$N4K bash "$SHARED/nginx_baseline.sh" | sed 's/^/nginx /' | tee -a "$LOG"
fi

[[ -n ${SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release -p haystack-ops -p haystack-cache -p haystack-loadtest --bin haystack --bin cache_serve --bin haystack-loadtest >&2)
HAY=$TARGET/release/haystack
CACHE=${CACHE_BIN:-$TARGET/release/cache_serve}
DATA=$BASE/data
rm -rf "$DATA"
mkdir -p "$DATA"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    rm -rf "$DATA"
}
trap cleanup EXIT
up() { for _ in $(seq 200); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.1; done; echo "$1 did not start" >&2; exit 1; }

"$HAY" directory --listen "127.0.0.1:$DPORT" --metadata "embedded:$DATA/directory" --replication 1 \
    --heartbeat-secs 1 --cache-url "http://127.0.0.1:$HPORT" 2>"$BASE/directory.log" &
PIDS+=($!)
up "http://127.0.0.1:$DPORT"
"$HAY" store --data-dir "$DATA/store" --listen "127.0.0.1:$SPORT" --workers "$WORKERS" \
    --directory "http://127.0.0.1:$DPORT" --heartbeat-secs 1 2>"$BASE/store.log" &
SPID=$!
PIDS+=($SPID)
up "http://127.0.0.1:$SPORT"
# The directory creates logical volume 1 on the store by itself; wait until it is writable.
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$DPORT/v1/volumes/1" | grep -q '"writable":true' && break
    sleep 0.2
done
curl -sf "http://127.0.0.1:$DPORT/v1/volumes/1" >/dev/null || { echo "volume 1 did not appear" >&2; exit 1; }
python3 "$ROOT/store/bench/load.py" "http://127.0.0.1:$SPORT" 1 "$N4K" 4096 "$BASE/paths_4k.txt"
# Commit them as photos, so that the cache's liveness check on a miss finds them live.
python3 - "http://127.0.0.1:$DPORT" "$N4K" <<'PY'
import http.client, json, sys, threading, urllib.parse
base, n = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2])
def commit(lo, hi):
    c = http.client.HTTPConnection(base.hostname, base.port)
    for k in range(lo, hi):
        body = json.dumps({"id": str(k), "cookie": "%016x" % 0x5EED, "volume_id": 1, "kind": "photo",
                           "variants": [{"name": "original", "alt": 0, "size_bytes": 4096,
                                         "content_type": "application/octet-stream"}]})
        c.request("POST", "/v1/photos", body, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status in (200, 201), (k, r.status)
ts = [threading.Thread(target=commit, args=(1 + i * n // 4, 1 + (i + 1) * n // 4)) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(f"committed {n} photos", file=sys.stderr)
PY

"$CACHE" --listen "127.0.0.1:$HPORT" --directory "http://127.0.0.1:$DPORT" --capacity 1GiB \
    --workers "$WORKERS" >/dev/null 2>"$BASE/cache_hit.log" &
HPID=$!
PIDS+=($HPID)
"$CACHE" --listen "127.0.0.1:$MPORT" --directory "http://127.0.0.1:$DPORT" --capacity 1GiB \
    --admission none --workers "$WORKERS" >/dev/null 2>"$BASE/cache_miss.log" &
MPID=$!
PIDS+=($MPID)
up "http://127.0.0.1:$HPORT"
up "http://127.0.0.1:$MPORT"

stat() { curl -s "http://127.0.0.1:$1/v1/stats" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['$2'])"; }

run() { # name port pid-list threads conns [paths]
    local name=$1 port=$2 pids=$3 t=$4 c=$5 paths=${6:-$BASE/paths_4k.txt} out t0 t1 e0=() e1=() cpu="" i
    for i in $pids; do e0+=("$(ticks "$i")"); done
    t0=$(date +%s.%N)
    out=$(wrk -t"$t" -c"$c" -d"${DUR}s" --timeout 5s -s "$SHARED/get_random.lua" "http://127.0.0.1:$port" -- "$paths" "$RANDOM" 2>&1 | grep '^RESULT' || echo "RESULT rps=0")
    t1=$(date +%s.%N)
    for i in $pids; do e1+=("$(ticks "$i")"); done
    for i in "${!e0[@]}"; do
        cpu+="$(awk -v a="${e0[$i]}" -v b="${e1[$i]}" -v hz="$HZ" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.0f", (b-a)/hz/(t1-t0)*100}')/"
    done
    RES="$out cpu_pct=${cpu%/}"
}

# Warm the hit cache: every needle read once (random order, 15 s of wrk covers all but a few).
wrk -t2 -c64 -d15s -s "$SHARED/get_random.lua" "http://127.0.0.1:$HPORT" -- "$BASE/paths_4k.txt" 7 >/dev/null 2>&1 || true
say "# hit cache warmed: entries=$(stat $HPORT entries) bytes=$(stat $HPORT bytes)"
# Warm the store's page cache, the miss node's connections and its liveness answers.
wrk -t2 -c64 -d15s -s "$SHARED/get_random.lua" "http://127.0.0.1:$MPORT" -- "$BASE/paths_4k.txt" 8 >/dev/null 2>&1 || true

if [[ -z ${ONLY:-} || " $ONLY " == *"_c1 "* ]] && [[ -x $TARGET/release/haystack-loadtest ]]; then
    "$TARGET/release/haystack-loadtest" rtt --rounds 20000 --reps 3 | sed 's/^/rtt /' | tee -a "$LOG" >&2
fi
for spec in "store $SPORT $SPID $THREADS $CONNS" "hit $HPORT $HPID $THREADS $CONNS" \
    "miss $MPORT $MPID+$SPID $THREADS $CONNS" "store_c1 $SPORT $SPID 1 1" \
    "hit_c1 $HPORT $HPID 1 1" "miss_c1 $MPORT $MPID+$SPID 1 1"; do
    read -r name port pids t c <<<"$spec"
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || continue
    pids=${pids//+/ }
    rps=() p50=() p99=()
    for r in $(seq "$REPS"); do
        h0=$(stat $HPORT hits); m0=$(stat $HPORT misses); s0=$(stat $MPORT store_reads); d0=$(stat $MPORT directory_requests)
        prof=""
        if [[ -n ${PERF:-} && $r == 1 && ($name == miss || $name == hit || $name == store) ]]; then
            # PERF=1: a call-graph profile of the serving process during the first rep.
            if [[ $PERF == stat ]]; then
                # PERF=stat: instructions and cycles instead (a count that load does not change).
                perf stat -x, -e instructions,cycles,task-clock -p "${pids%% *}" -o "$BASE/perf-$name.stat" -- sleep "$DUR" >/dev/null 2>&1 &
            else
                perf record -q -F 999 -g -p "${pids%% *}" -o "$BASE/perf-$name.data" -- sleep "$DUR" >/dev/null 2>&1 &
            fi
            prof=$!
        fi
        run "$name" "$port" "$pids" "$t" "$c"
        [[ -z $prof ]] || wait "$prof" || true
        h1=$(stat $HPORT hits); m1=$(stat $HPORT misses); s1=$(stat $MPORT store_reads); d1=$(stat $MPORT directory_requests)
        q=$(kv rps "$RES"); rps+=("$q"); p50+=("$(kv p50_us "$RES")"); p99+=("$(kv p99_us "$RES")")
        say "run test=$name rep=$r rps=$q p50_us=$(kv p50_us "$RES") p99_us=$(kv p99_us "$RES") requests=$(kv requests "$RES") errors_status=$(kv err_status "$RES") server_cpu_pct=$(kv cpu_pct "$RES") hit_node_hits=$((h1 - h0)) hit_node_misses=$((m1 - m0)) miss_node_store_reads=$((s1 - s0)) miss_node_directory_requests=$((d1 - d0)) load=$(cut -d' ' -f1-3 /proc/loadavg)"
    done
    echo "ours median test=$name rps=$(median "${rps[@]}") p50_us=$(median "${p50[@]}") p99_us=$(median "${p99[@]}") runs_rps=$(IFS=/; echo "${rps[*]}")" | tee -a "$LOG"
done

# The ceiling of each HTTP stack: the same wrk and paths shape, objects answered from memory.
seq 0 $((N4K - 1)) | sed 's|^|/o/|' >"$BASE/paths_floor.txt"
for stack in actix hyper raw; do
    name=floor_$stack
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || continue
    secs=$((REPS * (DUR + 5) + 30))
    "$TARGET/release/haystack-loadtest" floor --stack "$stack" --addr "127.0.0.1:$FPORT" --objects "$N4K" \
        --workers "$WORKERS" --serve-secs $((secs > 3600 ? 3600 : secs)) 2>"$BASE/$name.log" &
    FPID=$!
    PIDS+=($FPID)
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$FPORT/o/0" && break; sleep 0.1; done
    curl -sf -o /dev/null "http://127.0.0.1:$FPORT/o/0" || { echo "floor server ($stack) did not start: $BASE/$name.log" >&2; exit 1; }
    rps=() p50=() p99=()
    for r in $(seq "$REPS"); do
        prof=""
        if [[ -n ${PERF:-} && $PERF != stat && $r == 1 ]]; then
            perf record -q -F 999 -g -p "$FPID" -o "$BASE/perf-$name.data" -- sleep "$DUR" >/dev/null 2>&1 &
            prof=$!
        fi
        run "$name" "$FPORT" "$FPID" "$THREADS" "$CONNS" "$BASE/paths_floor.txt"
        [[ -z $prof ]] || wait "$prof" || true
        q=$(kv rps "$RES"); rps+=("$q"); p50+=("$(kv p50_us "$RES")"); p99+=("$(kv p99_us "$RES")")
        say "run test=$name rep=$r rps=$q p50_us=$(kv p50_us "$RES") p99_us=$(kv p99_us "$RES") requests=$(kv requests "$RES") errors_status=$(kv err_status "$RES") server_cpu_pct=$(kv cpu_pct "$RES") load=$(cut -d' ' -f1-3 /proc/loadavg)"
    done
    kill "$FPID" 2>/dev/null || true
    wait "$FPID" 2>/dev/null || true
    unset 'PIDS[-1]' # gone: cleanup must not signal a pid the system may give another process
    echo "ours median test=$name rps=$(median "${rps[@]}") p50_us=$(median "${p50[@]}") p99_us=$(median "${p99[@]}") runs_rps=$(IFS=/; echo "${rps[*]}")" | tee -a "$LOG"
done
say "# $(date -Is) done; load=$(cut -d' ' -f1-3 /proc/loadavg)"
