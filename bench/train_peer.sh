#!/usr/bin/env bash
# mambacpp training against PyTorch on the CPU, same model and batch, in one invocation.
#
#   bench/train_peer.sh [--d-model 512] [--n-layer 8] [--vocab 8192] [--d-state 16] [-b 8]
#                       [--seq-len 128] [--steps 5] [--peer-steps 2] [-t 2] [--quick]
#
# The peer is bench/torch_mamba_train.py (Debian's python3-torch, installed here with apt-get
# when missing): the same Mamba-1 with the plain sequential scan transformers falls back to
# without CUDA, checked first against the hf-tiny-mamba fixture's loss and gradients. Each engine
# runs one warm-up step, then its timed steps (PyTorch's take ~20 s each at the default shape, so
# it gets fewer), and the script prints a markdown table: tokens/s, ms/step and peak RSS of each,
# and the ratios ours / PyTorch (goals: tokens/s >= 10x at <= 0.5x the memory). --quick: a small
# shape (d_model 128, 2 layers, vocab 1024, batch 2, length 64) to try the script.
#
# Environment: MAMBACPP (the CLI; default build/cpu/mambacpp, built if missing), PYTHON (the
# interpreter with Debian's torch; default /usr/bin/python3, not whatever comes first on PATH).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
d_model=512 n_layer=8 vocab=8192 d_state=16 batch=8 seq_len=128 steps=5 peer_steps=2 threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --d-model) d_model=$2; shift 2 ;;
    --n-layer) n_layer=$2; shift 2 ;;
    --vocab) vocab=$2; shift 2 ;;
    --d-state) d_state=$2; shift 2 ;;
    -b|--batch) batch=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --peer-steps) peer_steps=$2; shift 2 ;;
    -t|--threads) threads=$2; shift 2 ;;
    --quick) d_model=128 n_layer=2 vocab=1024 batch=2 seq_len=64 steps=3 peer_steps=2; shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "train_peer: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[train_peer %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
mambacpp=${MAMBACPP:-$root/build/cpu/mambacpp}
[ -x "$mambacpp" ] || "$root/scripts/build.sh" cpu
python=${PYTHON:-/usr/bin/python3}
if ! "$python" -c 'import torch' 2>/dev/null; then
  log "installing python3-torch (Debian)"
  sudo_cmd=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_cmd apt-get install -y python3-torch >&2
fi

peer=$root/bench/torch_mamba_train.py
log "peer check against the hf-tiny-mamba fixture"
"$python" "$peer" --check "$root/tests/data/hf-tiny-mamba" >&2

shape=(--d-model "$d_model" --n-layer "$n_layer" --vocab "$vocab" --d-state "$d_state" --seq-len "$seq_len")
log "mambacpp: ${shape[*]} -b $batch, $steps steps"
ours=$("$mambacpp" bench --train "${shape[@]}" -b "$batch" --steps "$steps" -t "$threads" --json)
log "pytorch: same shape, $peer_steps steps"
theirs=$("$python" "$peer" "${shape[@]}" --batch "$batch" --steps "$peer_steps" --threads "$threads" --json)

"$python" - "$ours" "$theirs" <<'EOF'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
run = ours["runs"][0]
print(f"Training, d_model {ours['d_model']}, {ours['n_layer']} layers, d_state {ours['d_state']}, "
      f"vocab {ours['vocab']}, batch {run['batch']} x {run['seq_len']}, {ours['threads']} threads, "
      f"{ours['cpu']} (mambacpp {ours['commit']}, PyTorch {theirs['torch']})\n")
print("| engine | tokens/s | ms/step | peak RSS | loss first -> last |")
print("|---|---:|---:|---:|---|")
print(f"| mambacpp ({ours['steps']} steps, MFU {100 * run['mfu']:.1f}%) | {run['tok_s']:.1f} | "
      f"{run['ms_per_step']:.0f} | {run['peak_rss_mib']:.0f} MiB | {run['loss_first']:.3f} -> {run['loss_last']:.3f} |")
print(f"| PyTorch, sequential scan ({theirs['steps']} steps) | {theirs['tok_s']:.1f} | {theirs['ms_per_step']:.0f} | "
      f"{theirs['peak_rss_mib']:.0f} MiB | {theirs['loss_first']:.3f} -> {theirs['loss_last']:.3f} |")
speed = run["tok_s"] / theirs["tok_s"]
memory = run["peak_rss_mib"] / theirs["peak_rss_mib"]
print(f"| ours / PyTorch | {speed:.1f}x | | {memory:.2f}x | |")
print(f"\ngoals: tokens/s >= 10x ({'met' if speed >= 10 else 'missed'}), "
      f"peak RSS <= 0.5x ({'met' if memory <= 0.5 else 'missed'})")
EOF
