#!/usr/bin/env bash
# readpath_cgroup.sh: the read path when the photos do not fit in memory (issue 18, part 1).
#
# nginx serving one file per photo (the design Haystack replaced) and the store serving the
# same number of needles from one volume, each run inside its own memory cgroup whose limit is
# a small fraction of the data. The cgroup is charged for the page cache and the kernel's
# dentry and inode caches its processes fill, so with a 64 MiB limit the kernel cannot keep
# nginx's directories and inodes in memory as it does when the whole machine's memory is
# available. The same uniformly random GETs (wrk, loopback only) go to each, and the disk reads
# they cause are counted by the kernel: the cgroup's own block-I/O counter (v1 blkio, v2 io.stat),
# which counts only the reads of the server under test, and /proc/diskstats for the device
# (which also counts anything else the machine reads meanwhile).
#
#   sudo bash bench/readpath_cgroup.sh                              # 100,000 photos of 4 KiB
#   sudo COUNTS="100000 1000000" bash bench/readpath_cgroup.sh       # both scales, one run
#
# Knobs (environment): COUNTS (photos per scale, at most 5,000,000 each), SIZE (bytes per photo,
# 4096), LIMIT (memory cgroup limit, 64M), WARM (seconds of unmeasured GETs that fill the cgroup
# first, 10), DUR (measured seconds, 15), THREADS/CONNS (wrk, 2/64), WORKERS (nginx worker
# processes and store HTTP workers, 2), SEALED=1 (also measure the store after sealing the
# volume: its index then lives in a memory-mapped file), STORE_OUTSIDE=1 (open the store
# outside its cgroup and move it in, with the limit lowered by the resident memory it brings:
# needed before f9b25c8, when opening a 1,000,000-needle volume peaked near 120 MB; since then
# the store starts inside, as in run D of bench/results/17-readpath.md), BASE (/tmp/haystack-readpath),
# KEEP=1 (keep the data), SKIP_BUILD=1.
#
# Needs root (cgroups, drop_caches), nginx, wrk, python3 and curl; without root or a memory
# cgroup controller it prints SKIPPED and exits 0. Every server it starts and every cgroup it
# makes is removed at exit, and so is $BASE (unless KEEP=1). Disk: about 2.3 x COUNTS x SIZE
# (1,000,000 x 4 KiB: ~9.5 GB), checked before each scale.
# stdout: one "result ..." line per server and scale, then a markdown table of them.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BASE=${BASE:-/tmp/haystack-readpath}
COUNTS=${COUNTS:-100000}
SIZE=${SIZE:-4096}
LIMIT=${LIMIT:-64M}
WARM=${WARM:-10}
DUR=${DUR:-15}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
SEALED=${SEALED:-0}
STORE_OUTSIDE=${STORE_OUTSIDE:-0}
NPORT=${NPORT:-18280}
SPORT=${SPORT:-18290}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CG_NAME=haystack-readpath-$$

skip() {
    echo "SKIPPED: bench/readpath_cgroup.sh: $*" >&2
    echo "SKIPPED: $*"
    exit 0
}
say() { echo "$*" >&2; [[ -d $BASE ]] && echo "$*" >>"$BASE/results.log"; return 0; }
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
load() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' /; }

# ---------- what the machine offers ----------
[[ $(id -u) == 0 ]] || skip "needs root (memory cgroups and drop_caches); nothing was measured"
if [[ -d /sys/fs/cgroup/memory && -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
    CGV=1
    MEM_ROOT=/sys/fs/cgroup/memory
    BLK_ROOT=/sys/fs/cgroup/blkio
    [[ -f $BLK_ROOT/blkio.throttle.io_serviced ]] || BLK_ROOT=
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    CGV=2
    MEM_ROOT=/sys/fs/cgroup
    BLK_ROOT=
    echo "+memory" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    echo "+io" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
else
    skip "no memory cgroup controller (v1 /sys/fs/cgroup/memory or v2 memory.max); nothing was measured"
fi
for c in nginx wrk python3 curl; do
    command -v $c >/dev/null || apt-get install -y -q "$c" >&2 || skip "$c is missing and could not be installed"
done
for p in $NPORT $SPORT; do
    ss -ltn | awk '{print $4}' | grep -q ":$p\$" && { echo "port $p is in use (another benchmark?); not starting" >&2; exit 1; }
done
case $LIMIT in
*G) LIMIT_BYTES=$((${LIMIT%G} << 30)) ;;
*M) LIMIT_BYTES=$((${LIMIT%M} << 20)) ;;
*) LIMIT_BYTES=$LIMIT ;;
esac

[[ -n ${SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release -p haystack-ops --bin haystack >&2)
HAY=$TARGET/release/haystack
mkdir -p "$BASE"
: >"$BASE/results.log"
# The block device under $BASE (its whole disk: cgroup I/O counters are kept per disk).
SRC=$(df --output=source "$BASE" | tail -1)
DEV=$(basename "$(readlink -f "$SRC")")
if [[ -e /sys/class/block/$DEV/partition ]]; then DEV=$(basename "$(readlink -f "/sys/class/block/$DEV/..")"); fi
MAJMIN=$(cat "/sys/class/block/$DEV/dev")

# ---------- cleanup ----------
PIDS=()
CGS=()
cleanup() {
    set +e
    [[ -f $BASE/nginx/nginx.pid ]] && kill "$(cat "$BASE/nginx/nginx.pid")" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for c in "${CGS[@]}"; do
        for _ in $(seq 50); do [[ -s $c/cgroup.procs ]] || break; sleep 0.1; done
        rmdir "$c" 2>/dev/null
    done
    [[ -n ${KEEP:-} ]] || rm -rf "$BASE"
}
trap cleanup EXIT

# ---------- helpers ----------
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
dev_reads() { awk -v d="$DEV" '$3==d {print $4}' /proc/diskstats; }
# make_cg NAME: a memory cgroup (and a v1 blkio one) limited to LIMIT; sets CG_MEM, CG_BLK.
make_cg() {
    CG_MEM=$MEM_ROOT/$CG_NAME-$1
    mkdir "$CG_MEM"
    CGS+=("$CG_MEM")
    if [[ $CGV == 1 ]]; then
        echo "$LIMIT_BYTES" >"$CG_MEM/memory.limit_in_bytes"
        CG_BLK=
        if [[ -n $BLK_ROOT ]]; then
            CG_BLK=$BLK_ROOT/$CG_NAME-$1
            mkdir "$CG_BLK"
            CGS+=("$CG_BLK")
            # v1 counts a cgroup's I/O only where a throttle rule applies: one far above any
            # disk (100 M reads/s) makes it count without slowing anything.
            echo "$MAJMIN 100000000" >"$CG_BLK/blkio.throttle.read_iops_device"
        fi
    else
        echo "$LIMIT_BYTES" >"$CG_MEM/memory.max"
        echo 0 >"$CG_MEM/memory.swap.max" 2>/dev/null || true
        CG_BLK=
    fi
}
# Reads the cgroup's processes issued to the disk.
cg_reads() {
    if [[ $CGV == 1 ]]; then
        [[ -n $CG_BLK ]] || { echo 0; return; }
        awk -v m="$MAJMIN" '$1==m && $2=="Read" {print $3; f=1} END{if(!f) print 0}' "$CG_BLK/blkio.throttle.io_serviced"
    else
        awk -v m="$MAJMIN" '$1==m {for(i=2;i<=NF;i++) if ($i ~ /^rios=/) {sub("rios=","",$i); print $i; f=1}} END{if(!f) print 0}' "$CG_MEM/io.stat"
    fi
}
cg_mem() { # usage_mib peak_mib page_cache_mib anon_mib
    if [[ $CGV == 1 ]]; then
        awk -v u="$(cat "$CG_MEM/memory.usage_in_bytes")" -v p="$(cat "$CG_MEM/memory.max_usage_in_bytes")" \
            '$1=="cache"{c=$2} $1=="rss"{r=$2} END{printf "%.1f %.1f %.1f %.1f", u/1048576, p/1048576, c/1048576, r/1048576}' "$CG_MEM/memory.stat"
    else
        awk -v u="$(cat "$CG_MEM/memory.current")" -v p="$(cat "$CG_MEM/memory.peak" 2>/dev/null || echo 0)" \
            '$1=="file"{c=$2} $1=="anon"{r=$2} END{printf "%.1f %.1f %.1f %.1f", u/1048576, p/1048576, c/1048576, r/1048576}' "$CG_MEM/memory.stat"
    fi
}
# in_cg CMD...: runs CMD inside the current cgroups (its children inherit them).
in_cg() {
    local blk=${CG_BLK:-}
    bash -c 'echo $$ >"$1/cgroup.procs"; [[ -n $2 ]] && echo $$ >"$2/cgroup.procs"; shift 2; exec "$@"' \
        in_cg "$CG_MEM" "$blk" "$@"
}
rm_cg() {
    local c
    for c in "$CG_MEM" ${CG_BLK:-}; do
        for _ in $(seq 100); do [[ -s $c/cgroup.procs ]] || break; sleep 0.1; done
        rmdir "$c" 2>/dev/null || say "# could not remove cgroup $c"
    done
}
store_metric() { curl -s "http://127.0.0.1:$SPORT/metrics" | awk -v m="$1" '$1==m {printf "%d", $2}'; }
up() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 did not answer" >&2; exit 1; }

cat >"$BASE/get_random.lua" <<'LUA'
-- GET a uniformly random path from a list (one per line): wrk -s get_random.lua URL -- LIST SEED
local reqs, n = {}, 0
local counter = 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args)
   for line in io.lines(args[1]) do
      if #line > 0 then n = n + 1; reqs[n] = wrk.format("GET", line) end
   end
   math.randomseed(tonumber(args[2]) * 1000 + tid)
   for _ = 1, 10 do math.random() end
end
function request() return reqs[math.random(n)] end
function done(s, lat, _)
   io.write(string.format("RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p99_us=%d err_status=%d err_other=%d\n",
      s.requests, s.duration / 1e6, s.requests / (s.duration / 1e6), lat:percentile(50), lat:percentile(99),
      s.errors.status, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout))
end
LUA

wrk_run() { # URL LIST SECONDS SEED
    wrk -t"$THREADS" -c"$CONNS" -d"$3s" --timeout 5s -s "$BASE/get_random.lua" "$1" -- "$2" "$4" 2>&1 | grep '^RESULT' || echo "RESULT requests=0 rps=0"
}

# measure NAME URL LIST [pid for store metrics]: warm, then one measured run; prints a result line.
ROWS=()
measure() {
    local name=$1 url=$2 list=$3 count=$4 r0 d0 r1 d1 g0 g1 s0 s1 out req mem
    wrk_run "$url" "$list" "$WARM" 1 >/dev/null
    r0=$(cg_reads)
    d0=$(dev_reads)
    [[ $name == store* ]] && { g0=$(store_metric haystack_store_gets_total); s0=$(store_metric haystack_store_get_disk_reads_total); }
    local l0; l0=$(load)
    out=$(wrk_run "$url" "$list" "$DUR" 2)
    r1=$(cg_reads)
    d1=$(dev_reads)
    [[ $name == store* ]] && { g1=$(store_metric haystack_store_gets_total); s1=$(store_metric haystack_store_get_disk_reads_total); }
    req=$(kv requests "$out")
    mem=$(cg_mem)
    local extra=""
    [[ $name == store* ]] && extra=" store_gets=$((g1 - g0)) store_read_ops=$((s1 - s0))"
    local line
    line="result photos=$count server=$name limit=$LIMIT rps=$(kv rps "$out") p50_us=$(kv p50_us "$out") p99_us=$(kv p99_us "$out") requests=$req errors=$(kv err_status "$out")/$(kv err_other "$out") cg_disk_reads=$((r1 - r0)) cg_reads_per_get=$(awk -v a=$((r1 - r0)) -v b="$req" 'BEGIN{printf "%.3f", b ? a/b : 0}') dev_disk_reads=$((d1 - d0)) dev_reads_per_get=$(awk -v a=$((d1 - d0)) -v b="$req" 'BEGIN{printf "%.3f", b ? a/b : 0}')$extra cg_mem_mib=$(cut -d' ' -f1 <<<"$mem") cg_peak_mib=$(cut -d' ' -f2 <<<"$mem") cg_page_cache_mib=$(cut -d' ' -f3 <<<"$mem") cg_anon_mib=$(cut -d' ' -f4 <<<"$mem") load=$l0->$(load)"
    say "$line"
    echo "$line"
    ROWS+=("$line")
}

say "# $(date -u -Is) host=$(hostname) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\" cpus=$(nproc) mem=$(free -g | awk '/Mem:/{print $2}')GiB kernel=$(uname -r) cgroup=v$CGV device=$DEV($MAJMIN) limit=$LIMIT size=$SIZE warm=${WARM}s dur=${DUR}s wrk=-t$THREADS/-c$CONNS load=$(load)"

for N in $COUNTS; do
    ((N > 0 && N <= 5000000)) || { say "# skipping COUNTS entry $N (1..5,000,000)"; continue; }
    need=$((N * SIZE * 23 / 10 + (1 << 30)))
    free=$(($(df --output=avail -B1 "$BASE" | tail -1)))
    ((free > need)) || { say "# skipping $N photos: needs ~$((need >> 30)) GiB free, $((free >> 30)) GiB available"; continue; }
    D=$BASE/n$N
    mkdir -p "$D"

    # ---- nginx: one file per photo, two-level hashed tree (ab/cd/<id>) ----
    t0=$(date +%s)
    python3 - "$D/www" "$N" "$SIZE" "$D/nginx_paths.txt" <<'PY'
import hashlib, os, sys
root, n, size, listfile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
made = set()
with open(listfile, "w") as out:
    for i in range(1, n + 1):
        h = hashlib.md5(str(i).encode()).hexdigest()
        sub = f"{h[0:2]}/{h[2:4]}"
        if sub not in made:
            os.makedirs(os.path.join(root, sub), exist_ok=True)
            made.add(sub)
        with open(os.path.join(root, sub, str(i)), "wb") as f:
            f.write(os.urandom(size))
        out.write(f"/{sub}/{i}\n")
PY
    say "# $N photos: nginx tree written in $(($(date +%s) - t0)) s"

    # ---- the store: one volume, loaded through batch PUTs, then restarted cold ----
    printf '[store]\nscrub_mib_per_sec = 0\n' >"$D/store.toml"
    t0=$(date +%s)
    "$HAY" store --config "$D/store.toml" --data-dir "$D/store" --listen "127.0.0.1:$SPORT" \
        --workers "$WORKERS" --create-volumes 1 2>"$D/store-load.log" &
    LPID=$!
    PIDS+=("$LPID")
    up "http://127.0.0.1:$SPORT/health"
    python3 "$ROOT/store/bench/load.py" "http://127.0.0.1:$SPORT" 1 "$N" "$SIZE" "$D/store_paths.txt"
    kill "$LPID" 2>/dev/null || true
    wait "$LPID" 2>/dev/null || true
    say "# $N photos: store volume written in $(($(date +%s) - t0)) s ($(du -sh "$D/store" | cut -f1))"

    # ---- nginx in its cgroup ----
    mkdir -p "$BASE/nginx"
    cat >"$BASE/nginx/nginx.conf" <<CONF
user root root;
worker_processes $WORKERS;
pid $BASE/nginx/nginx.pid;
error_log $BASE/nginx/error.log warn;
daemon on;
events { worker_connections 1024; use epoll; }
http {
    access_log off;
    sendfile on;
    open_file_cache off;
    server_tokens off;
    keepalive_requests 10000000;
    keepalive_timeout 65s;
    default_type application/octet-stream;
    types { }
    client_body_temp_path $BASE/nginx/body;
    proxy_temp_path $BASE/nginx/proxy;
    fastcgi_temp_path $BASE/nginx/fastcgi;
    uwsgi_temp_path $BASE/nginx/uwsgi;
    scgi_temp_path $BASE/nginx/scgi;
    server {
        listen 127.0.0.1:$NPORT reuseport backlog=4096;
        root $D/www;
        location / { limit_except GET HEAD { deny all; } }
    }
}
CONF
    make_cg nginx
    drop_caches
    in_cg nginx -q -e "$BASE/nginx/error.log" -p "$BASE/nginx" -c "$BASE/nginx/nginx.conf"
    up "http://127.0.0.1:$NPORT$(head -1 "$D/nginx_paths.txt")"
    measure nginx "http://127.0.0.1:$NPORT" "$D/nginx_paths.txt" "$N"
    kill "$(cat "$BASE/nginx/nginx.pid")"
    for _ in $(seq 100); do [[ -f $BASE/nginx/nginx.pid ]] || break; sleep 0.1; done
    rm_cg

    # ---- the store in its cgroup (writable volume: index in memory) ----
    store_in_cg() { # name
        make_cg "$1"
        drop_caches
        if [[ $STORE_OUTSIDE == 1 ]]; then
            # Opened outside the cgroup (the start-up peak of a large volume does not fit the
            # limit), then moved in. Its resident memory stays charged outside, so the limit
            # is lowered by it: the store's total stays within LIMIT.
            "$HAY" store --config "$D/store.toml" --data-dir "$D/store" --listen "127.0.0.1:$SPORT" \
                --workers "$WORKERS" 2>"$D/$1.log" &
            SPID=$!
            PIDS+=("$SPID")
            up "http://127.0.0.1:$SPORT/health"
            local rss hwm
            rss=$(awk '/^VmRSS/{print $2}' "/proc/$SPID/status")
            hwm=$(awk '/^VmHWM/{print $2}' "/proc/$SPID/status")
            if [[ $CGV == 1 ]]; then
                echo $((LIMIT_BYTES - rss * 1024)) >"$CG_MEM/memory.limit_in_bytes"
            else
                echo $((LIMIT_BYTES - rss * 1024)) >"$CG_MEM/memory.max"
            fi
            echo "$SPID" >"$CG_MEM/cgroup.procs"
            [[ -z ${CG_BLK:-} ]] || echo "$SPID" >"$CG_BLK/cgroup.procs"
            say "# $1: opened outside the cgroup (start-up peak VmHWM ${hwm} kB), moved in with VmRSS ${rss} kB; cgroup limit $((LIMIT_BYTES - rss * 1024)) bytes"
            drop_caches
        else
            # Not through in_cg in the background: $! must be the store itself.
            bash -c 'echo $$ >"$1/cgroup.procs"; [[ -n $2 ]] && echo $$ >"$2/cgroup.procs"; shift 2; exec "$@"' \
                in_cg "$CG_MEM" "${CG_BLK:-}" "$HAY" store --config "$D/store.toml" --data-dir "$D/store" \
                --listen "127.0.0.1:$SPORT" --workers "$WORKERS" 2>"$D/$1.log" &
            SPID=$!
            PIDS+=("$SPID")
            up "http://127.0.0.1:$SPORT/health"
        fi
        measure "$1" "http://127.0.0.1:$SPORT" "$D/store_paths.txt" "$N"
        kill "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
        rm_cg
    }
    store_in_cg store
    if [[ $SEALED == 1 ]]; then
        "$HAY" store --config "$D/store.toml" --data-dir "$D/store" --listen "127.0.0.1:$SPORT" \
            --workers "$WORKERS" 2>"$D/store-seal.log" &
        LPID=$!
        PIDS+=("$LPID")
        up "http://127.0.0.1:$SPORT/health"
        curl -sf -X POST "http://127.0.0.1:$SPORT/v1/volumes/1/seal" >/dev/null
        kill "$LPID" 2>/dev/null || true
        wait "$LPID" 2>/dev/null || true
        store_in_cg store_sealed
    fi
    # nginx's tree stays until the end: creating files right after deleting many is slow on
    # ext4 (the inode allocator skips freed inodes for minutes), which would slow the next scale.
    rm -rf "$D/store"
done
say "# $(date -u -Is) done; load=$(load)"

echo
echo "| photos | server | GET/s | p50 | p99 | disk reads per GET (cgroup) | (device) | cgroup memory: page cache / anon, MiB | load before → after |"
echo "|---|---|---|---|---|---|---|---|---|"
for l in "${ROWS[@]}"; do
    printf '| %s | %s | %s | %s µs | %s µs | %s | %s | %s / %s | %s |\n' "$(kv photos "$l")" "$(kv server "$l")" \
        "$(kv rps "$l")" "$(kv p50_us "$l")" "$(kv p99_us "$l")" "$(kv cg_reads_per_get "$l")" \
        "$(kv dev_reads_per_get "$l")" "$(kv cg_page_cache_mib "$l")" "$(kv cg_anon_mib "$l")" "$(kv load "$l" | sed 's/->/ → /')"
done
