#!/usr/bin/env bash
# Pool throughput: requests/s with 2 single-threaded workers vs 1, same broker, same load (issue 7: target ≥ 1.7×).
#
#   tools/bench/pool_throughput.sh [--op scm|sleep] [--runs N] [--res R] [--width W] [--bin PATH]
#
# op scm (default): each worker runs a random-weight NAFNet (--random-scm-width W, default 32) with
# --threads 1 on [1, 6, R, R] inputs; 4 concurrent clients keep both workers busy. op sleep needs no CPU
# (the ratio then only shows the pool's dispatch). Prints one JSON line per configuration and the ratio.
# Timings are only meaningful on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
op=scm; runs=16; res=128; width=32; bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --op) op=$2; shift 2 ;; --runs) runs=$2; shift 2 ;; --res) res=$2; shift 2 ;;
    --width) width=$2; shift 2 ;; --bin) bin=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
. "$(dirname "$0")/pool_common.sh"
ensure_bin
pick_endpoints
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$bin" broker --clients "$clients" --workers "$workers" --queue 1024 2>/dev/null & pids+=($!)
if [ "$op" = scm ]; then
  input=(--shape "1,6,$res,$res"); opts=()
else
  input=(--shape 1); opts=(--option ms=200)
fi
measure() {  # $1 = number of workers now running
  until "$bin" client --connect "$clients" --op status 2>/dev/null | grep -q "\"worker_count\" : $1"; do sleep 0.2; done
  "$bin" client --connect "$clients" --op "$op" "${input[@]}" "${opts[@]}" --runs 2 --concurrency 2 --timeout-ms 600000 >/dev/null  # warm-up
  "$bin" client --connect "$clients" --op "$op" "${input[@]}" "${opts[@]}" --runs "$runs" --concurrency 4 --timeout-ms 600000
}
"$bin" worker --connect "$workers" --threads 1 --random-scm-width "$width" --name w1 2>/dev/null & pids+=($!)
one=$(measure 1); echo "1 worker:  $one"
"$bin" worker --connect "$workers" --threads 1 --random-scm-width "$width" --name w2 2>/dev/null & pids+=($!)
two=$(measure 2); echo "2 workers: $two"
python3 - "$one" "$two" <<'PY'
import json, sys
a, b = (json.loads(s) for s in sys.argv[1:3])
print(f"throughput ratio 2 workers / 1 worker: {b['requests_per_s'] / a['requests_per_s']:.2f}x")
PY
