#!/usr/bin/env bash
# Pool latency: the broker path (client → broker → worker → broker → client over loopback TCP) vs the same
# echo handler called in-process, for a [1, 3, 256, 256] float32 tensor (786 KB). Issue 7 target: added p50 < 5 ms.
#
#   tools/bench/pool_latency.sh [--runs N] [--bin PATH]
#
# Prints one JSON line: p50_ms/p90_ms/p99_ms of the round trip, inprocess_p50_ms, added_p50_ms.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=500; bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;; --bin) bin=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
. "$(dirname "$0")/pool_common.sh"
ensure_bin
pick_endpoints
"$bin" serve --clients "$clients" --workers "$workers" --local-workers 1 --threads 1 2>/dev/null & pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
until "$bin" client --connect "$clients" --op status 2>/dev/null | grep -q '"worker_count" : 1'; do sleep 0.2; done
"$bin" client --connect "$clients" --op echo --shape 1,3,256,256 --runs 20 >/dev/null   # warm-up
"$bin" client --connect "$clients" --op echo --shape 1,3,256,256 --runs "$runs"
