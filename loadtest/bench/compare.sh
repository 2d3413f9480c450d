#!/usr/bin/env bash
# compare.sh: the same PUT and GET workloads against nginx file-per-photo and the haystack
# cluster, in one run, with the ratios (haystack-loadtest compare). nginx is configured from
# ../shared/bench/nginx.conf.tmpl (2 workers, sendfile, WebDAV PUT without fsync) on
# 127.0.0.1:$NGINX_PORT (default 18088, not the baseline script's 18080: its nginx listens
# with reuseport, so a second nginx on the same port would silently take half of the
# connections); the cluster is started unless UPLOADER= or DIRECTORY= is given.
#
#   bash loadtest/bench/compare.sh
#   PUTS=5000 DUR=5 SIZES=fixed:4KiB bash loadtest/bench/compare.sh
#
# Saves one JSON per size under bench/results/loadtest/ (SAVE=0: do not). Disk: nginx keeps
# one file per PUT (PUTS per size, default 20,000) under $BASE/nginx/davroot; $BASE/nginx is
# removed at the end; the store keeps its photos in $BASE/cluster, removed too. Do not start it right after
# deleting many files (../shared/NOTES.md, "The disk"): file creation is slow for minutes.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SHARED=${SHARED:-$(cd "$ROOT/../shared/bench" 2>/dev/null && pwd || true)}
NGINX_PORT=${NGINX_PORT:-18088}
SIZES=${SIZES:-"fixed:4KiB lognormal:100KiB,0.7,4KiB,1MiB"}
PUTS=${PUTS:-20000}
GETS=${GETS:-2000000}
DUR=${DUR:-20}
CONNS=${CONNS:-64}
SAVE=${SAVE:-1}
NG=$BASE/nginx
MASTER=

[[ -f $SHARED/nginx.conf.tmpl ]] || { echo "need ../shared/bench/nginx.conf.tmpl (SHARED=)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 1; }

cleanup() {
    if [[ -n $MASTER ]]; then
        kill -QUIT "$MASTER" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$MASTER" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$NG"
    cluster_down
}
trap cleanup EXIT

if curl -s -m 1 -o /dev/null "http://127.0.0.1:$NGINX_PORT/"; then
    echo "something already answers on 127.0.0.1:$NGINX_PORT (another benchmark?): not sharing it" >&2
    exit 1
fi
build
mkdir -p "$NG/www" "$NG/run" "$NG/davroot/.tmp" "$NG/davroot/dav"
sed -e "s|@USER@|$(id -un) $(id -gn)|" -e "s|@WORKERS@|2|" -e "s|@RUNDIR@|$NG/run|g" \
    -e "s|@PORT@|$NGINX_PORT|" -e "s|@WWW@|$NG/www|" -e "s|@DAVROOT@|$NG/davroot|g" \
    "$SHARED/nginx.conf.tmpl" >"$NG/run/nginx.conf"
rm -f "$NG/run/nginx.pid"
nginx -q -t -e "$NG/run/error.log" -p "$NG/run" -c "$NG/run/nginx.conf"
nginx -e "$NG/run/error.log" -p "$NG/run" -c "$NG/run/nginx.conf"
for _ in $(seq 50); do [[ -s $NG/run/nginx.pid ]] && break; sleep 0.1; done
MASTER=$(cat "$NG/run/nginx.pid")
cluster_up

for size in $SIZES; do
    name=compare-${size%%:*}
    [[ $size == fixed:4KiB ]] && name=compare-4k
    [[ $size == lognormal:* ]] && name=compare-lognormal
    save=()
    [[ $SAVE == 1 ]] && save=(--save "$RESULTS/$name.json")
    settle
    say "$(date -Is) load $(cut -d' ' -f1-3 /proc/loadavg): compare $size"
    "$LT" compare "${TARGET_FLAGS[@]}" --nginx "http://127.0.0.1:$NGINX_PORT" --size "$size" \
        --put-count "$PUTS" --get-count "$GETS" -d "$DUR" -c "$CONNS" --quiet \
        --title "Side by side with nginx file-per-photo: PUT then GET, $size" "${save[@]}"
    rm -rf "$NG/davroot/dav"/*
done
