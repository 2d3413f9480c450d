# common.sh: sourced by the load generator's benchmark scripts. Builds the release binaries,
# starts (or finds) a local cluster on loopback, and cleans up after itself.
#
# Knobs: UPLOADER=URL or DIRECTORY=URL (drive a cluster that is already running; loopback
# only), else a cluster is started with `haystack server --data-dir $BASE/cluster` and
# removed at the end. CARGO_TARGET_DIR is honoured; BUILD=0 uses the binaries as they are.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BASE=${BASE:-/tmp/haystack-loadtest}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LT=$TARGET_DIR/release/haystack-loadtest
HS=$TARGET_DIR/release/haystack
# relative, so that the commands recorded in the results read the same on every machine
RESULTS=${RESULTS:-bench/results/loadtest}
CLUSTER_PID=
cd "$ROOT"
mkdir -p "$BASE" "$RESULTS"

say() { echo "# $*" >&2; }

# Waits (up to SETTLE seconds, default 60) for the 1-minute load average to fall below 1.5,
# so that a run does not start in the wake of the previous one; the load is recorded anyway.
settle() {
    local i
    for ((i = 0; i < ${SETTLE:-60}; i += 5)); do
        awk '{exit !($1 < 1.5)}' /proc/loadavg && return 0
        sleep 5
    done
    say "load still $(cut -d' ' -f1-3 /proc/loadavg) after ${SETTLE:-60} s: figures will be noisy"
}

build() {
    [[ ${BUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release -p haystack-loadtest -p haystack-ops >&2)
}

# Sets TARGET_FLAGS (--uploader URL or --directory URL).
cluster_up() {
    if [[ -n ${UPLOADER:-} ]]; then TARGET_FLAGS=(--uploader "$UPLOADER"); return; fi
    if [[ -n ${DIRECTORY:-} ]]; then TARGET_FLAGS=(--directory "$DIRECTORY"); return; fi
    if curl -sf http://127.0.0.1:8082/health >/dev/null 2>&1; then
        echo "something already listens on 127.0.0.1:8082: stop it or pass UPLOADER=/DIRECTORY=" >&2
        exit 1
    fi
    rm -rf "$BASE/cluster"
    "$HS" server --data-dir "$BASE/cluster" >"$BASE/server.log" 2>&1 &
    CLUSTER_PID=$!
    for _ in $(seq 300); do
        curl -sf http://127.0.0.1:8082/health 2>/dev/null | grep -q '"writable_volumes":[1-9]' && break
        sleep 0.2
    done
    curl -sf http://127.0.0.1:8082/health >/dev/null || { echo "the cluster did not start (see $BASE/server.log)" >&2; exit 1; }
    # the uploader, when `haystack server` runs one (port 8080)
    sleep 1
    if curl -sf http://127.0.0.1:8080/health >/dev/null 2>&1; then
        TARGET_FLAGS=(--uploader http://127.0.0.1:8080)
    else
        TARGET_FLAGS=(--directory http://127.0.0.1:8082)
    fi
    say "cluster pid $CLUSTER_PID, driving ${TARGET_FLAGS[*]}"
}

cluster_down() {
    if [[ -n $CLUSTER_PID ]]; then
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$CLUSTER_PID" 2>/dev/null || break; sleep 0.1; done
        CLUSTER_PID=
        # the roles' logs outlive the data (failures in a run are explained there)
        rm -rf "$BASE/logs"
        mv "$BASE/cluster/logs" "$BASE/logs" 2>/dev/null || true
        rm -rf "$BASE/cluster"
        say "cluster logs kept in $BASE/logs"
    fi
}
