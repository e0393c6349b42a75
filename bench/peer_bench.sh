#!/usr/bin/env bash
# mambacpp against llama.cpp on one checkpoint, in one invocation, interleaved and repeated.
#
#   bench/peer_bench.sh [-R ROUNDS] [-t THREADS] [-r REPS] [--quick]
#
# Makes (once) a random HF checkpoint of the mamba-130m shape with the peer tool, its F32 and F16
# GGUF copies for llama.cpp and a BF16 copy for us (`mambacpp convert --dtype bf16`). Then, each
# round, runs llama-bench's pp512/tg128 on both engines, alternating:
#   ours F32 | llama.cpp F32 | ours BF16 checkpoint | llama.cpp F16 | ours batched decode (b 8, 32)
#   | ours decode after 100 and 10,000 tokens of context
# and finally prints a markdown table for docs/PERFORMANCE.md: each engine's median over the
# rounds and the median of the per-round ratios ours / llama.cpp (with their range), roofline
# shares, and peak RSS. Raw outputs stay in the work folder.
#
# Environment: MAMBACPP (the CLI; default build/cpu/mambacpp, built if missing), PEER (peer.sh;
# default ../shared/tools/llamacpp-peer/peer.sh next to the repo), PEER_BENCH_DIR (work folder;
# default build/peer-bench), LLAMACPP_PEER_CPU (force a ggml CPU variant, see peer.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3 threads=2 reps=3 pp=512 tg=128 batch_tg=64 contexts=(100 10000)
while [ $# -gt 0 ]; do
  case $1 in
    -R) rounds=$2; shift 2 ;;
    -t) threads=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    --quick) rounds=1 reps=1 pp=128 tg=32 batch_tg=16 contexts=(100 1000); shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "peer_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

mambacpp=${MAMBACPP:-$root/build/cpu/mambacpp}
peer=${PEER:-$root/../shared/tools/llamacpp-peer/peer.sh}
work=${PEER_BENCH_DIR:-$root/build/peer-bench}
[ -x "$peer" ] || { echo "peer_bench: no peer tool at $peer (set PEER)" >&2; exit 1; }
[ -x "$mambacpp" ] || "$root/scripts/build.sh" cpu
mkdir -p "$work"
log() { printf '[peer_bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- the checkpoint, in every form each engine reads ------------------------------------------
ckpt=$work/m130
[ -f "$ckpt/model.safetensors" ] || { log "random mamba-130m checkpoint"; "$peer" random-130m "$ckpt" >&2; }
[ -f "$work/m130-f32.gguf" ] || { log "GGUF F32"; "$peer" convert "$ckpt" "$work/m130-f32.gguf" >&2; }
[ -f "$work/m130-f16.gguf" ] || { log "GGUF F16"; "$peer" convert "$ckpt" "$work/m130-f16.gguf" --outtype f16 >&2; }
[ -f "$work/m130-bf16/config.json" ] || {
  log "BF16 checkpoint"
  "$mambacpp" convert --model "$ckpt" --out "$work/m130-bf16" --dtype bf16 >&2
}

# --- interleaved rounds --------------------------------------------------------------------------
ours() {  # ours NAME MODEL_DIR [bench args...] -> $out/NAME.json
  local name=$1 model=$2; shift 2
  log "round $round: mambacpp $name"
  "$mambacpp" bench --model "$model" -t "$threads" -r "$reps" --json "$@" >"$out/ours-$name.json"
}
peer_run() {  # peer_run NAME GGUF -> $out/llama-NAME.json (+ .err with peak RSS and CPU variant)
  log "round $round: llama.cpp $1"
  "$peer" bench "$2" -p "$pp" -n "$tg" -r "$reps" -t "$threads" -o json >"$out/llama-$1.json" 2>"$out/llama-$1.err"
}

rm -rf "$work/rounds"
export PEER_BENCH_LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg) at $(date '+%F %H:%M')"
for ((round = 1; round <= rounds; round++)); do
  out=$work/rounds/$round
  mkdir -p "$out"
  ours f32 "$ckpt" -p "$pp" -n "$tg"
  peer_run f32 "$work/m130-f32.gguf"
  ours bf16 "$work/m130-bf16" -p "$pp" -n "$tg"
  peer_run f16 "$work/m130-f16.gguf"
  for b in 8 32; do ours "f32-b$b" "$ckpt" -p 0 -n "$batch_tg" -b "$b"; done
  for c in "${contexts[@]}"; do ours "f32-ctx$c" "$ckpt" -p 0 -n "$tg" --context "$c"; done
done

# --- the table -----------------------------------------------------------------------------------
python3 - "$work/rounds" "$pp" "$tg" "$batch_tg" "$threads" "${contexts[@]}" <<'EOF'
import glob, json, os, re, statistics, subprocess, sys

rounds_dir, pp, tg, batch_tg, threads = sys.argv[1], *map(int, sys.argv[2:6])
contexts = [int(c) for c in sys.argv[6:]]
rounds = sorted(glob.glob(os.path.join(rounds_dir, "*")), key=lambda p: int(os.path.basename(p)))

def ours(r, name):
    with open(os.path.join(r, f"ours-{name}.json")) as f:
        return json.loads(f.read().strip().splitlines()[-1])

def llama(r, name):
    with open(os.path.join(r, f"llama-{name}.json")) as f:
        tests = json.load(f)
    err = open(os.path.join(r, f"llama-{name}.err")).read()
    rss = re.search(r"peak RSS: ([0-9.]+) MiB", err)
    variant = re.search(r"libggml-cpu-([A-Za-z0-9_]+)\.so", err)
    pick = lambda p, n: next(t for t in tests if t["n_prompt"] == p and t["n_gen"] == n)
    return {"pp": pick(pp, 0)["avg_ts"], "tg": pick(0, tg)["avg_ts"],
            "rss": float(rss.group(1)) if rss else float("nan"),
            "variant": variant.group(1) if variant else "?"}

med = statistics.median
def spread(xs):
    return f"{min(xs):.2f}–{max(xs):.2f}" if len(xs) > 1 else "one round"

rows = []
def compare(label, our_vals, their_vals, unit_fmt="{:.1f}", extra=""):
    ratios = [o / t for o, t in zip(our_vals, their_vals)]
    rows.append(f"| {label} | {unit_fmt.format(med(our_vals))} | {unit_fmt.format(med(their_vals))} | "
                f"**{med(ratios):.2f}x** ({spread(ratios)}) | {extra} |")

o32 = [ours(r, "f32") for r in rounds]; l32 = [llama(r, "f32") for r in rounds]
o16 = [ours(r, "bf16") for r in rounds]; l16 = [llama(r, "f16") for r in rounds]
bw = med([o["read_bandwidth_gb_s"] for o in o32 + o16])
peak = med([o["sgemm_gflop_s"] for o in o32 + o16])
gflop = o32[0]["prefill_gemm_gflop"]

def llama_shares(ol, ll):
    # llama.cpp's figures against the same rooflines and the same work (our count of the model's).
    pp_share = med([gflop / peak * l["pp"] / pp for l in ll])
    tg_share = med([o["decode_bytes_per_step"] / (bw * 1e9) * l["tg"] for o, l in zip(ol, ll)])
    return pp_share, tg_share

for tag, ol, ll, lname in (("F32", o32, l32, "F32"), ("BF16", o16, l16, "F16")):
    lp, lt = llama_shares(ol, ll)
    compare(f"pp{pp}, ours {tag} vs llama.cpp {lname} (tok/s)", [o["prefill_tok_s"] for o in ol], [l["pp"] for l in ll],
            extra=f"ours {100 * med([o['prefill_peak_share'] for o in ol]):.0f}% / llama.cpp {100 * lp:.0f}% of sgemm peak")
    compare(f"tg{tg}, ours {tag} vs llama.cpp {lname} (tok/s)", [o["decode_tok_s"] for o in ol], [l["tg"] for l in ll],
            extra=f"ours {100 * med([o['decode_roofline_share'] for o in ol]):.0f}% / llama.cpp {100 * lt:.0f}% of read bandwidth")
    compare(f"peak RSS, ours {tag} vs llama.cpp {lname} (MiB)", [o["peak_rss_mib"] for o in ol], [l["rss"] for l in ll],
            extra="lower is better")

b1 = [o["decode_tok_s"] for o in o32]
for b in (8, 32):
    ob = [ours(r, f"f32-b{b}") for r in rounds]
    agg = [o["decode_tok_s"] for o in ob]
    rows.append(f"| tg{batch_tg} at batch {b}, ours F32 (aggregate tok/s) | {med(agg):.1f} | — | "
                f"**{med([a / s for a, s in zip(agg, b1)]):.2f}x** ours batch 1 | "
                f"{100 * med([o['decode_roofline_share'] for o in ob]):.0f}% of read bandwidth |")
ctx = {c: [ours(r, f"f32-ctx{c}")["decode_ms_per_step"] for r in rounds] for c in contexts}
lo, hi = contexts
rows.append(f"| tg{tg} after {lo} vs {hi} tokens, ours F32 (ms/token) | {med(ctx[lo]):.2f} / {med(ctx[hi]):.2f} | — | "
            f"**{med([h / l for l, h in zip(ctx[lo], ctx[hi])]):.2f}x** ({spread([h / l for l, h in zip(ctx[lo], ctx[hi])])}) | "
            f"goal: within 10% |")

cpu = o32[0]["cpu"]
try:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[1].splitlines()[0].strip()
except Exception:
    pass
print(f"Machine: {cpu}, {os.cpu_count()} CPUs; mambacpp kernels {o32[0]['kernel_level']}, commit {o32[0]['commit']}, "
      f"OMP_WAIT_POLICY {o32[0].get('omp_wait_policy', 'unset')}; "
      f"llama.cpp v0.5.0 (node-llama-cpp 3.22.1), ggml CPU variant {l32[0]['variant']}.")
print(f"Rooflines (measured by mambacpp bench in the same runs, medians): memory read {bw:.1f} GB/s, "
      f"sgemm {peak:.1f} GFLOP/s, {threads} threads.")
load_end = " ".join(open("/proc/loadavg").read().split()[:3])
print(f"Load average (1, 5, 15 min) at start {os.environ.get('PEER_BENCH_LOAD_START', '?')}, at end {load_end}.")
print(f"Random mamba-130m shape, {threads} threads, {len(rounds)} interleaved rounds, each "
      f"engine's median over rounds; ratio = median of per-round ours / llama.cpp (range).\n")
print("| test | mambacpp | llama.cpp | ratio | roofline / note |")
print("|---|---|---|---|---|")
print("\n".join(rows))
EOF
log "raw outputs in $work/rounds/"
