#!/usr/bin/env bash
# report.sh: regenerates BENCHMARKS.md from bench/results/ (fragments and saved runs).
#
#   bash loadtest/bench/report.sh          # render only
#   bash loadtest/bench/report.sh run      # run compare.sh and mixed.sh first (minutes;
#                                          # take final figures on a quiet machine)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [[ ${1:-} == run ]]; then
    echo "# load before: $(cat /proc/loadavg)" >&2
    bash "$HERE/compare.sh"
    bash "$HERE/mixed.sh"
fi
cd "$ROOT"
cargo run --release -q -p haystack-loadtest -- report --results bench/results --out BENCHMARKS.md
