#!/usr/bin/env bash
# mambacpp serve against llama.cpp's llama-server, same checkpoint, same load, one invocation.
#
#   bench/serve_peer.sh [--concurrency 1,8,32] [--sweep-seconds 20] [--max-tokens 64] [--references 8]
#                       [--threads 2] [--quick]
#
# Builds (once) llama-server from the peer's llama.cpp source against the peer's shipped
# libraries (tools/server plus a generated, empty web-UI asset table; multimodal support is
# stubbed out: the shipped libraries have no mtmd, and a text model never calls it beyond three
# defaults, defined here; any other mtmd call aborts with a message). Then runs the load program
# (serve_load) at each concurrency against both servers, one after the other:
#   mambacpp serve (the HF checkpoint, F32)  then  llama-server (its F32 GGUF, --parallel = max
#   concurrency, continuous batching on by default)
# and prints one table: aggregate tokens/s, p50/p99 time to first token and time per output token,
# the ratio to each engine's own 1-stream rate, and ours / llama.cpp. Every stream is checked
# against a solo reference of the same engine (for llama-server, mismatches mean its results
# depend on the batch; they are reported, not fatal).
#
# Environment: MAMBACPP (the CLI; default build/cpu/mambacpp), SERVE_LOAD (default serve_load
# beside MAMBACPP), PEER (peer.sh; default ../shared/tools/llamacpp-peer/peer.sh next to the repo),
# SERVE_PEER_DIR (work folder; default build/serve-peer), LLAMACPP_PEER_HOME (the peer's cache).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
concurrency=1,8,32 sweep_seconds=20 max_tokens=64 references=8 threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --concurrency) concurrency=$2; shift 2 ;;
    --sweep-seconds) sweep_seconds=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --references) references=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --quick) concurrency=1,8 sweep_seconds=5 max_tokens=16 references=2; shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "serve_peer: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

mambacpp=${MAMBACPP:-$root/build/cpu/mambacpp}
serve_load=${SERVE_LOAD:-$(dirname "$mambacpp")/serve_load}
peer=${PEER:-$root/../shared/tools/llamacpp-peer/peer.sh}
work=${SERVE_PEER_DIR:-$root/build/serve-peer}
peer_home=${LLAMACPP_PEER_HOME:-$HOME/.cache/llamacpp-peer}
libs=$peer_home/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
src=$peer_home/llama.cpp-src
for f in "$mambacpp" "$serve_load" "$peer"; do [ -x "$f" ] || { echo "serve_peer: missing $f" >&2; exit 1; }; done
mkdir -p "$work"
log_tag=serve_peer
source "$root/bench/serve_common.sh"

# --- llama-server, built against the peer's shipped libraries ------------------------------------
build_llama_server() {
  local obj=$work/obj ui=$work/ui
  mkdir -p "$obj" "$ui" "$work/bin"
  # The web UI's asset table, empty (the UI is a separately built Svelte app; the API is what we load).
  sed -e '/#cmakedefine LLAMA_UI_HAS_ASSETS/d' -e 's/@N_ASSETS@/0/' "$src/tools/ui/ui.h.in" >"$ui/ui.h"
  sed -e 's/@N_ASSETS@/0/g' -e 's/@ASSET_ARRAYS@//' -e 's/@ASSET_TABLE@//' -e 's/@USE_GZIP@/false/' \
    "$src/tools/ui/ui.cpp.in" >"$ui/ui.cpp"
  cat >"$ui/mtmd_defaults.cpp" <<'EOF'
// The mtmd calls llama-server makes for a text-only model (no --mmproj): harmless defaults.
#include "mtmd.h"
#include "mtmd-helper.h"
mtmd_helper_init_opt mtmd_helper_init_opt_default(void) { return mtmd_helper_init_opt{}; }
mtmd_context_params mtmd_context_params_default(void) { return mtmd_context_params{}; }
void mtmd_helper_log_set(ggml_log_callback, void*) {}
bool mtmd_helper_support_video(const mtmd_context*) { return false; }
EOF
  local flags=(-std=c++17 -O2 -DNDEBUG -I"$src/include" -I"$src/ggml/include" -I"$src/common" -I"$src/vendor"
               -I"$src/tools/mtmd" -I"$src/tools/server" -I"$src" -I"$ui")
  local f o
  for f in "$src"/tools/server/*.cpp "$ui/ui.cpp" "$ui/mtmd_defaults.cpp"; do
    o=$obj/$(basename "$f" .cpp).o
    [ -f "$o" ] && [ "$o" -nt "$f" ] && continue
    log "compiling $(basename "$f")"
    g++ "${flags[@]}" -c "$f" -o "$o"
  done
  # Every other mtmd symbol the server references: a stub that aborts with a message.
  nm "$obj/mtmd_defaults.o" | awk '$2 == "T" {print $3}' >"$work/mtmd_defined.txt"
  nm -u "$obj"/*.o | awk '{print $2}' | grep -E '^(_Z[0-9]+)?mtmd_' | sort -u |
    grep -vxFf "$work/mtmd_defined.txt" | awk '
      BEGIN { print "#include <stdio.h>\n#include <stdlib.h>";
              print "static void missing(const char* s) { fprintf(stderr, \"llama-server peer: %s: no multimodal support in this build\\n\", s); abort(); }" }
      { printf "void stub_%d(void) __asm__(\"%s\");\nvoid stub_%d(void) { missing(\"%s\"); }\n", NR, $1, NR, $1 }' \
    >"$work/mtmd_stubs.c"
  gcc -O1 -c "$work/mtmd_stubs.c" -o "$obj/mtmd_stubs.o"
  g++ "$obj"/*.o -L"$libs" -Wl,-rpath,"$libs" -l:libllama-common.so -l:libllama.v0.5.0.so -l:libggml.v0.5.0.so \
    -l:libggml-base.so -lpthread -o "$work/bin/llama-server"
  # ggml loads the best libggml-cpu-<isa>.so from the executable's folder.
  (cd "$work/bin" && for f in "$libs"/libggml-cpu-*.so; do ln -sfn "$f" .; done)
}
"$peer" setup >/dev/null 2>&1 || "$peer" setup
[ -x "$work/bin/llama-server" ] && "$work/bin/llama-server" --version >/dev/null 2>&1 || { log "building llama-server"; build_llama_server; }

# --- the checkpoint: random mamba-130m shape and its F32 GGUF ------------------------------------
serve_checkpoint "$peer"
gguf=$work/m130-f32.gguf
if [ ! -f "$gguf" ]; then
  if [ -L "$model/model.safetensors" ] && [ -f "$root/build/peer-bench/m130-f32.gguf" ]; then
    ln -sf "$root/build/peer-bench/m130-f32.gguf" "$gguf"  # peer_bench.sh's GGUF of the same checkpoint
  else
    log "GGUF F32"
    "$peer" convert "$model" "$gguf" >&2
  fi
fi

# --- the runs ------------------------------------------------------------------------------------
max_clients=$(tr ',' '\n' <<<"$concurrency" | sort -n | tail -1)
trap stop_server EXIT
load() {  # load NAME API PORT -> $work/NAME.csv, one row per concurrency
  "$serve_load" --api "$2" --port "$3" --server-pid "$server" --clients 0 --concurrency "$concurrency" \
    --sweep-seconds "$sweep_seconds" --max-tokens "$max_tokens" --references "$references" --id-prompts "$vocab" \
    --csv "$work/$1.csv" | grep -E '^(command|machine|references|\[|  problem)' >&2 || true
}

export SERVE_PEER_LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg) at $(date '+%F %H:%M')"
rm -f "$work/ours.csv" "$work/llama.csv"
port=$(free_port)
log "mambacpp serve"
start_server ours "$port" "$mambacpp" serve --model "$model" --port "$port" --threads "$threads" \
  --state-dir "$work/states" --max-batch "$max_clients" --max-queue $((2 * max_clients))
load ours openai "$port"
stop_server
port=$(free_port)
log "llama-server"
start_server llama "$port" "$work/bin/llama-server" -m "$gguf" --host 127.0.0.1 --port "$port" -t "$threads" \
  -tb "$threads" -np "$max_clients" -c $((256 * max_clients)) --no-webui
load llama llamacpp "$port"
stop_server

python3 - "$work" "$concurrency" "$threads" "$max_tokens" <<'EOF'
import csv, os, sys
work, conc, threads, max_tokens = sys.argv[1], [int(c) for c in sys.argv[2].split(",")], sys.argv[3], sys.argv[4]
rows = {}
for engine in ("ours", "llama"):
    with open(os.path.join(work, f"{engine}.csv")) as f:
        rows[engine] = {int(r["clients"]): r for r in csv.DictReader(f)}
def row(engine, c):
    return rows[engine][c]
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
print(f"\nrandom mamba-130m shape, F32, {threads} threads, max_tokens {max_tokens}, {cpu}; "
      f"load average at start {os.environ.get('SERVE_PEER_LOAD_START', '?')}, now {' '.join(open('/proc/loadavg').read().split()[:3])}\n")
print("| streams | engine | tokens/s | x own 1-stream | TTFT p50 / p99 ms | TPOT p50 / p99 ms | requests | errors | mismatches |")
print("|---|---|---|---|---|---|---|---|---|")
base = {e: float(row(e, conc[0])["tokens_per_s"]) for e in ("ours", "llama")}
for c in conc:
    r = {e: row(e, c) for e in ("ours", "llama")}
    for e, name in (("ours", "mambacpp serve"), ("llama", "llama-server")):
        x = r[e]
        print(f"| {c} | {name} | {float(x['tokens_per_s']):.1f} | {float(x['tokens_per_s']) / base[e]:.2f} | "
              f"{float(x['ttft_p50_ms']):.0f} / {float(x['ttft_p99_ms']):.0f} | {float(x['tpot_p50_ms']):.1f} / {float(x['tpot_p99_ms']):.1f} | "
              f"{x['requests']} | {x['errors']} | {x['mismatches']} |")
    print(f"| {c} | ours / llama.cpp | {float(r['ours']['tokens_per_s']) / max(1e-9, float(r['llama']['tokens_per_s'])):.2f} | | | | | | |")
EOF
