#!/usr/bin/env bash
# http_bench.sh: the store's HTTP benchmarks side by side with the nginx file-per-photo
# baseline (../../../shared/bench), in one run on this machine.
#
#   bash store/bench/http_bench.sh            # everything, 3 reps of 20 s
#   REPS=1 DUR=10 bash store/bench/http_bench.sh
#   SKIP_NGINX=1 ...                          # only the store
#   TESTS="put4k" COLD=0 ...                  # some of the tests (default: get4k ceiling put4k)
#   BIN=/path/to/haystack ...                 # a binary built before (no cargo build): A/B runs
#
# Tests: get4k (warm page cache, random needles), ceiling (same server and URLs, bytes from
# memory), put4k (durable: 201 only after fdatasync), cold get4k (page cache dropped; root).
# stdout: one "median ..." line per test; each run also in $BASE/results.log.
# Disk: the nginx PUT phase keeps its files (~1 M of 4 KiB per rep, under
# /tmp/nginx-baseline/davroot) and the store's PUT phase writes ~6 GB; the store's data is
# removed at the end, nginx's is not. Check `df` first: a full disk ends the run in errors.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared/bench" 2>/dev/null && pwd || true)}
BASE=${BASE:-/tmp/haystack-bench}
PORT=${PORT:-18090}
DUR=${DUR:-20}
REPS=${REPS:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
N4K=${N4K:-100000}
ENGINE=${ENGINE:-auto}
WORKERS=${WORKERS:-2}
COLD=${COLD:-1}
LOG=$BASE/results.log
mkdir -p "$BASE"
: >"$LOG"
say() { echo "$*" >&2; echo "$*" >>"$LOG"; }
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

command -v wrk >/dev/null || apt-get install -y -q wrk >&2

if [[ -z ${SKIP_NGINX:-} && -n $SHARED ]]; then
    say "# nginx baseline (same run)"
    TESTS="get4k put4k" WORKERS_LIST=2 REPS=$REPS DUR=$DUR COLD=$COLD N4K=$N4K bash "$SHARED/nginx_baseline.sh" | sed 's/^/nginx /' | tee -a "$LOG"
fi

if [[ -z ${BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release -p haystack-ops >&2)
    BIN=$ROOT/target/release/haystack
fi
TESTS=${TESTS:-get4k ceiling put4k}
DATA=$BASE/data
rm -rf "$DATA"
"$BIN" store --data-dir "$DATA" --listen "127.0.0.1:$PORT" --engine "$ENGINE" --workers "$WORKERS" \
    --create-volumes 1,2 --bench-memory-ceiling 4096 2>"$BASE/store.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; sleep 1; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
say "# $(date -Is) host=$(hostname) cpus=$(nproc) kernel=$(uname -r) engine=$(curl -s http://127.0.0.1:$PORT/health)"
python3 "$HERE/load.py" "http://127.0.0.1:$PORT" 1 "$N4K" 4096 "$BASE/paths_4k.txt"
sed 's#^/v1/needles#/bench/memory#' "$BASE/paths_4k.txt" >"$BASE/paths_mem.txt"
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1==m {print $2}'; }
# disk reads issued by GETs only (HEAD and DELETE read headers too)
DR=haystack_store_get_disk_reads_total

run() { # name script args...
    local name=$1 script=$2; shift 2
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --timeout 5s -s "$script" "http://127.0.0.1:$PORT" -- "$@" 2>&1 | grep '^RESULT' || echo "RESULT rps=0")
    RES=$out
}

wrk -t"$THREADS" -c"$CONNS" -d3s -s "$SHARED/get_random.lua" "http://127.0.0.1:$PORT" -- "$BASE/paths_4k.txt" >/dev/null 2>&1 || true
for t in $TESTS; do
    rps=() p50=() p99=()
    for r in $(seq "$REPS"); do
        g0=$(metric haystack_store_gets_total); d0=$(metric $DR)
        f0=$(metric haystack_store_fsyncs_total)
        case $t in
        get4k) run $t "$SHARED/get_random.lua" "$BASE/paths_4k.txt" "$r" ;;
        ceiling) run $t "$SHARED/get_random.lua" "$BASE/paths_mem.txt" "$r" ;;
        put4k) run $t "$HERE/put_needles.lua" 2 4096 "$r$$" ;;
        esac
        g1=$(metric haystack_store_gets_total); d1=$(metric $DR)
        f1=$(metric haystack_store_fsyncs_total)
        q=$(kv rps "$RES"); rps+=("$q"); p50+=("$(kv p50_us "$RES")"); p99+=("$(kv p99_us "$RES")")
        say "run test=$t rep=$r rps=$q p50_us=$(kv p50_us "$RES") p99_us=$(kv p99_us "$RES") errors_status=$(kv err_status "$RES") gets=$((${g1%.*} - ${g0%.*})) disk_reads=$((${d1%.*} - ${d0%.*})) fsyncs=$((${f1%.*} - ${f0%.*})) requests=$(kv requests "$RES")"
    done
    echo "store median test=$t rps=$(median "${rps[@]}") p50_us=$(median "${p50[@]}") p99_us=$(median "${p99[@]}") runs_rps=$(IFS=/; echo "${rps[*]}")" | tee -a "$LOG"
done

if [[ $COLD == 1 && $(id -u) == 0 ]]; then
    sync; echo 3 >/proc/sys/vm/drop_caches
    g0=$(metric haystack_store_gets_total); d0=$(metric $DR)
    run cold "$SHARED/get_random.lua" "$BASE/paths_4k.txt" 99
    g1=$(metric haystack_store_gets_total); d1=$(metric $DR)
    echo "store cold test=get4k (page cache dropped first; single run) rps=$(kv rps "$RES") p50_us=$(kv p50_us "$RES") p99_us=$(kv p99_us "$RES") gets=$((${g1%.*} - ${g0%.*})) disk_reads=$((${d1%.*} - ${d0%.*}))" | tee -a "$LOG"
fi
