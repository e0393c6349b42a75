#!/usr/bin/env bash
# Loopback load test of `mambacpp serve` on a random checkpoint of the mamba-130m shape.
#
#   bench/serve_load.sh [--clients 64] [--seconds 60] [--concurrency 1,8,32,64]
#                       [--sweep-seconds 20] [--max-tokens 64] [--threads 2] [--quick]
#
# Makes (once) the random HF checkpoint with the peer tool (or reuses bench/peer_bench.sh's; it has
# no tokenizer, so prompts are random token ids of 8 to 64 tokens), starts `mambacpp serve` on a
# free port, runs build/.../serve_load against it (a soak of --clients
# streams for --seconds, then each --concurrency for --sweep-seconds; every stream checked against
# a solo reference, the server's RSS sampled every second), and stops the server. Writes
# serve_load.csv and serve.log in the work folder and the plot to docs/serve_load.svg.
# Exits non-zero when a stream failed or differed from its reference.
#
# Environment: MAMBACPP (the CLI; default build/cpu/mambacpp), SERVE_LOAD (the load program;
# default serve_load beside MAMBACPP), PEER (peer.sh; default ../shared/tools/llamacpp-peer/peer.sh
# next to the repo), SERVE_LOAD_DIR (work folder; default build/serve-load), SERVE_LOAD_SVG (plot;
# default docs/serve_load.svg).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
clients=64 seconds=60 concurrency=1,8,32,64 sweep_seconds=20 max_tokens=64 threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --sweep-seconds) sweep_seconds=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --quick) clients=8 seconds=5 concurrency=1,8 sweep_seconds=5 max_tokens=16; shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "serve_load: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

mambacpp=${MAMBACPP:-$root/build/cpu/mambacpp}
serve_load=${SERVE_LOAD:-$(dirname "$mambacpp")/serve_load}
peer=${PEER:-$root/../shared/tools/llamacpp-peer/peer.sh}
work=${SERVE_LOAD_DIR:-$root/build/serve-load}
svg=${SERVE_LOAD_SVG:-$root/docs/serve_load.svg}
[ -x "$mambacpp" ] || { echo "serve_load: no mambacpp at $mambacpp (set MAMBACPP)" >&2; exit 1; }
[ -x "$serve_load" ] || { echo "serve_load: no load program at $serve_load (build the serve_load target, or set SERVE_LOAD)" >&2; exit 1; }
mkdir -p "$work"
log_tag=serve_load
source "$root/bench/serve_common.sh"
serve_checkpoint "$peer"

# --- the server ----------------------------------------------------------------------------------
port=$(free_port)
max_batch=$(tr ',' '\n' <<<"$concurrency,$clients" | sort -n | tail -1)
log "mambacpp serve on port $port (--threads $threads --max-batch $max_batch)"
trap stop_server EXIT
start_server serve "$port" "$mambacpp" serve --model "$model" --port "$port" --threads "$threads" \
  --max-batch "$max_batch" --max-queue $((2 * max_batch)) --state-dir "$work/states"

# --- the load ------------------------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
title="random mamba-130m shape (F32), $threads threads, $cpu, $(date +%F), commit $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
status=0
"$serve_load" --port "$port" --server-pid "$server" --clients "$clients" --seconds "$seconds" \
  --concurrency "$concurrency" --sweep-seconds "$sweep_seconds" --max-tokens "$max_tokens" --id-prompts "$vocab" \
  --csv "$work/serve_load.csv" --svg "$svg" --title "$title" || status=$?
log "server metrics after the run:"
curl -sf "http://127.0.0.1:$port/metrics" | grep -E '^mambacpp_(requests|generated|prompt|state_cache)[a-z_]* ' >&2 || true
log "csv: $work/serve_load.csv; plot: $svg; server log: $work/serve.log"
exit $status
